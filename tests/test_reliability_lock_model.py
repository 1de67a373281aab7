"""The lock model check (tests/reliability/lock_model.py) at a small size: agent processes take,
renew and release locks concurrently, some are killed holding them, and every answer and the
table agree with the reference model; never two holders. Plus: the check has teeth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from engine.store import open_store, upgrade
from reliability.lock_model import LockModelConfig, Step, explain, run_lock_model

SMALL = LockModelConfig(rounds=100, agents=3, crash=0.015, seed=11)


def check(url: str, label: str) -> None:
    report = run_lock_model(url, label, SMALL)
    assert report.ok, str(report)
    assert report.figures["two holders"] == 0
    assert report.figures["steps"] > SMALL.rounds  # several agents per round


def test_the_lock_table_agrees_with_the_model_across_processes_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'locks.db'}"

    async def create() -> None:
        await (await open_store(url)).close()

    anyio.run(create)
    check(url, "SQLite")


@pytest.mark.postgres
def test_the_lock_table_agrees_with_the_model_across_processes_on_postgresql(
    postgres_database: Callable[[], str],
) -> None:
    url = postgres_database()
    anyio.run(upgrade, url)
    check(url, "PostgreSQL")


def step(kind: str, owner: str, t: float = 0.0, ttl: float = 5.0) -> Step:
    return Step(owner.split("-")[0], kind, owner, "resource:m0", ttl, t)


def test_the_model_explains_a_race_one_way_only() -> None:
    """Two owners race for one free lock: one wins; both winning is never explained."""
    won, lost = ["ok", 1, 0.0, 5.0], ["conflict"]
    a, b = step("acquire", "a1-0"), step("acquire", "a2-0")
    a_holds = {"resource:m0": ("a1-0", 0.0, 5.0, 1)}
    assert explain({}, [(a, won), (b, lost)], [], a_holds)
    assert explain({}, [(b, lost), (a, won)], [], a_holds)
    assert not explain({}, [(a, won), (b, won)], [], a_holds)
    b_holds = {"resource:m0": ("a2-0", 0.0, 5.0, 1)}
    assert not explain({}, [(a, won), (b, lost)], [], b_holds)


def test_the_model_lets_a_killed_agents_step_count_or_not() -> None:
    a = step("acquire", "a1-0")
    assert explain({}, [], [a], {})
    assert explain({}, [], [a], {"resource:m0": ("a1-0", 0.0, 5.0, 1)})
    # Expired at t=5: another owner takes it over, re-entry does not apply.
    held = {"resource:m0": ("a1-0", 0.0, 5.0, 2)}
    later = step("acquire", "a2-0", t=5.0, ttl=1.0)
    taken = {"resource:m0": ("a2-0", 5.0, 6.0, 1)}
    assert explain(held, [(later, ["ok", 1, 5.0, 6.0])], [], taken)
    assert not explain(held, [(later, ["conflict"])], [], held)
