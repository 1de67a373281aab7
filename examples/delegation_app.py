"""Delegation in a small async app: start two jobs in the background, keep working, then act on
their completions.

    .venv/bin/python examples/delegation_app.py

One job is an async function, the other a plan; both run in the delegator's task group, so
leaving the `async with` block cancels whatever is still running (nothing is leaked).
Once `Engine` exposes delegation (see `engine.delegation`), `eng.delegate(...)` becomes
`eng.delegate(...)` and `eng.completions()` becomes `eng.completions()`.
"""

from __future__ import annotations

import sys

import anyio

import engine

NIGHTLY_CHECKS = engine.Plan.model_validate(
    {
        "name": "nightly-checks",
        "subplans": [
            {"name": "python", "run": [sys.executable, "--version"]},
            {"name": "disk", "run": "df -h . | tail -n 1"},
        ],
    }
)


async def fetch_prices(symbols: list[str]) -> dict[str, float]:
    """Stands in for a slow call to another service."""
    await anyio.sleep(0.2)
    return {symbol: 100.0 + index for index, symbol in enumerate(symbols)}


async def main() -> int:
    async with engine.Engine() as eng:
        prices = eng.delegate(
            lambda: fetch_prices(["ACME", "INITECH"]),
            goal="fetch today's prices",
            context={"asked_by": "ada", "reply_to": "thread-42"},
            metadata={"priority": "high"},
        )
        checks = eng.delegate(
            NIGHTLY_CHECKS, goal="run the nightly checks", context={"channel": "#ops"}
        )
        print(f"delegated {prices.id} and {checks.id}; carrying on meanwhile")

        for step in range(1, 4):  # the application's own work
            await anyio.sleep(0.05)
            running = eng.delegation_statistics().running
            print(f"  own work, step {step}: {running} delegation(s) running")

        remaining = 2
        async for done in eng.completions():
            outcome = done.result_summary if done.ok else done.error
            print(
                f"completed: {done.goal!r} -> {done.status.value} in {done.duration:.2f}s\n"
                f"  context {done.context}, metadata {done.metadata}\n"
                f"  {outcome}"
            )
            remaining -= 1
            if remaining == 0:
                break
        print(f"statistics: {eng.delegation_statistics()}")
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
