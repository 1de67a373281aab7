"""Python steps for the lock tests' plans (`call: lockkit:...`); `tests/` is on sys.path.

`section` is an instrumented critical section: it records every entry and exit in `order` and
any moment two steps were inside the same key at once in `overlaps`. Gates (anyio Events) hold
steps open without sleeping; `reset()` clears everything (the tests' fixture calls it).
"""

from __future__ import annotations

from collections import defaultdict

import anyio
import anyio.lowlevel

inside: defaultdict[str, set[str]] = defaultdict(set)
overlaps: list[tuple[str, str, frozenset[str]]] = []
order: list[str] = []
seen: dict[str, frozenset[str]] = {}
gates: dict[str, anyio.Event] = {}


def reset() -> None:
    inside.clear()
    overlaps.clear()
    order.clear()
    seen.clear()
    gates.clear()


def gate(name: str) -> anyio.Event:
    return gates.setdefault(name, anyio.Event())


async def section(key: str, me: str, hold: str | None = None) -> None:
    """Be inside `key` (until gate `hold` opens, if given); opens gate `<me>:in` on entry."""
    if inside[key]:
        overlaps.append((key, me, frozenset(inside[key])))
    inside[key].add(me)
    order.append(f"{me}+")
    gate(f"{me}:in").set()
    try:
        if hold is not None:
            await gate(hold).wait()
        await anyio.lowlevel.checkpoint()
    finally:
        inside[key].discard(me)
        order.append(f"{me}-")


async def look_then_open(key: str, after: str, opens: str, hold: str | None = None) -> None:
    """Wait until `after` is inside, note who is inside `key` and who has entered, then (once
    gate `hold` opens, if given) open gate `opens`."""
    await gate(f"{after}:in").wait()
    seen[key] = frozenset(inside[key])
    seen["entered"] = frozenset(e[:-1] for e in order if e.endswith("+"))
    gate("looked").set()
    if hold is not None:
        await gate(hold).wait()
    gate(opens).set()


async def wait_for(name: str) -> None:
    await gate(name).wait()


async def fail_after(after: str) -> None:
    """Fail once `after` is inside its section."""
    await gate(f"{after}:in").wait()
    raise RuntimeError(f"failed while {after} was inside")
