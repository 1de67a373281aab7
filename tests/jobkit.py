"""Python steps for background-job tests run by worker processes (`call: jobkit:...`);
`tests/` is on the workers' PYTHONPATH (clitools.engine_env)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio


async def mark(path: str, name: str, pause: float = 0.0) -> None:
    """Append `name` and this process's pid to `path` (one line; O_APPEND keeps lines whole)."""
    if pause:
        await anyio.sleep(pause)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def block_once(marker: str) -> None:
    """The first call (anywhere) creates `marker` and blocks forever; later calls return."""
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    await anyio.sleep_forever()


def started(marker: str) -> bool:
    return Path(marker).exists()
