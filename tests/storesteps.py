"""Python steps for the store tests' plans (`call: storesteps:...`); `tests/` is on sys.path.

Module-level state lets a test see what ran and hold a step open without sleeping; the tests
that use it call `reset()` first.
"""

from __future__ import annotations

from collections import Counter

import anyio

calls: Counter[str] = Counter()
gates: dict[str, anyio.Event] = {}
started: dict[str, anyio.Event] = {}


def reset() -> None:
    calls.clear()
    gates.clear()
    started.clear()


def event(table: dict[str, anyio.Event], name: str) -> anyio.Event:
    return table.setdefault(name, anyio.Event())


async def noop() -> None:
    return None


async def count(name: str) -> None:
    calls[name] += 1


async def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


async def hold(name: str) -> None:
    """Signal `started[name]`, then wait until the test opens `gates[name]`."""
    event(started, name).set()
    await event(gates, name).wait()
