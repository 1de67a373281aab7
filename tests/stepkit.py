"""Python steps for plans built in tests (`call: stepkit:...`); `tests/` is on sys.path.

State is module-level so a test can observe what its steps did; `reset()` clears it (the
`stepkit_state` fixture calls it around every test).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import anyio

active: defaultdict[str, int] = defaultdict(int)
peak: defaultdict[str, int] = defaultdict(int)
calls: defaultdict[str, int] = defaultdict(int)
cancelled: list[str] = []
gates: dict[str, anyio.Event] = {}


def reset() -> None:
    active.clear()
    peak.clear()
    calls.clear()
    cancelled.clear()
    gates.clear()


def gate(name: str) -> anyio.Event:
    if name not in gates:
        gates[name] = anyio.Event()
    return gates[name]


async def probe(group: str, hold: str | None = None, until: int | None = None) -> str:
    """Count how many `group` probes run at once; wait on gate `hold` if given.

    With `until`, the probe that makes `until` run at once opens the gate, so a test proves a
    cap is *reached* without sleeping.
    """
    active[group] += 1
    peak[group] = max(peak[group], active[group])
    try:
        if until is not None and active[group] >= until and hold is not None:
            gate(hold).set()
        if hold is not None:
            await gate(hold).wait()
        return group
    finally:
        active[group] -= 1


async def noop() -> None:
    return None


async def value(x: Any) -> Any:
    return x


async def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


async def fail_times(key: str, times: int) -> int:
    """Fail the first `times` calls for `key`, then succeed and return the call count."""
    calls[key] += 1
    if calls[key] <= times:
        raise RuntimeError(f"attempt {calls[key]} of {key} failed")
    return calls[key]


async def wait_forever(name: str) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        cancelled.append(name)


async def fail_when_open(name: str) -> None:
    """Fail once gate `name` opens (another step opens it when it is running)."""
    await gate(name).wait()
    raise RuntimeError(f"{name} failed on purpose")


async def open_gate_and_wait(name: str, me: str) -> None:
    gate(name).set()
    await wait_forever(me)


def sync_add(a: int, b: int) -> int:
    return a + b
