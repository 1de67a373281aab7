"""The Python steps of release.yaml (`call: release_steps:...`)."""

from __future__ import annotations

built: list[str] = []


async def build(target: str) -> str:
    built.append(target)
    return f"{target}.whl"


async def publish() -> None:
    raise RuntimeError("registry unavailable")
