"""Orphans (issue 7), short version: one random plan of nested groups of long-running `run`
steps per ending (fail-fast, subplan timeout, plan timeout, SIGINT, SIGTERM, `jobs cancel`);
after each, no process of the run may be alive. `tests/reliability/orphans.py` runs 100.

Also the regressions it found: a cancellation landing while a step's process was being started
left the step's own children running (asyncio killed only the leader); a second signal during
the cleanup that the first one started killed the engine before the cleanup was over."""

from __future__ import annotations

import asyncio
import asyncio.unix_events
import contextlib
import itertools
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from clitools import engine_env, pid_alive, start_engine, wait_for
from engine.app import Engine
from engine.dispatch.steps import run_command
from engine.domain.lock import Owner
from engine.testing import ManualClock, settings_for_test
from reliability._orphankit import (
    ENDINGS,
    Node,
    control,
    generate,
    group_alive,
    run_case,
    run_scenario,
)

#: Where asyncio starts a subprocess (private): the regressions below stand in the middle of it.
Transport = asyncio.unix_events._UnixSubprocessTransport
#: The subplan and plan timeouts of the short cases (the full suite gives 2 s).
TIMEOUT = 1.5


def nested_seed(ending: str) -> str:
    """The first seed whose plan nests groups at least two deep below the top and has a
    step that ignores SIGTERM among those that run: each short case exercises both."""

    def depth(node: Node) -> int:
        return 1 + max((depth(c) for c in node.children if c.kind == "group"), default=0)

    for n in itertools.count():
        seed = f"make-test-{ending}-{n}"
        scenario = generate(random.Random(seed), ending, Path("unused"), TIMEOUT)
        if depth(scenario.root) >= 3 and any(s.stubborn for s in scenario.started_steps()):
            return seed
    raise AssertionError("unreachable")


@pytest.mark.parametrize("ending", ENDINGS)
def test_no_process_of_a_run_outlives_its_ending(tmp_path: Path, ending: str) -> None:
    outcome = run_case(tmp_path, ending, nested_seed(ending), timeout=TIMEOUT)
    assert outcome.ok, outcome.report()
    assert outcome.processes > 0  # steps did run, and were looked for


def test_the_search_finds_processes_that_left_their_group(tmp_path: Path) -> None:
    """A count of 0 means something: what no group kill can reach is found and reported."""
    outcome = run_scenario(control(tmp_path), "control", death_deadline=0.5)
    assert len(outcome.orphans) == 2, outcome.report()
    assert all("sleep 600" in orphan for orphan in outcome.orphans)


async def test_a_cancellation_landing_while_a_step_starts_still_kills_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: cancelled while it waited for a new process's transport,
    `asyncio.create_subprocess_shell` killed the leader alone (SIGKILL) and left the group
    alone, so a child the step had started already was orphaned."""
    child = tmp_path / "child"
    scope = anyio.CancelScope()
    start = Transport._start

    def start_then_cancel(self: Any, *args: Any, **kwargs: Any) -> None:
        start(self, *args, **kwargs)
        # The engine is descheduled for a moment: the step starts a child of its own ...
        wait_for(lambda: child.exists() and child.read_text().endswith("\n"), what="a child")
        scope.cancel()  # ... and only then the cancellation (signal, fail-fast, timeout) lands

    monkeypatch.setattr(Transport, "_start", start_then_cancel)
    with scope:
        await run_command(
            f"sleep 600 & echo $! > {child}; wait",
            env=dict(os.environ),
            cwd=tmp_path,
            log_path=tmp_path / "step.log",
            kill_grace=1,
        )
    assert scope.cancelled_caught
    pid = int(child.read_text())
    try:
        wait_for(lambda: not pid_alive(pid), timeout=5, what="the step's child to be killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_step_cancelled_before_it_starts_starts_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    start = Transport._start

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        started.append(args)
        start(self, *args, **kwargs)

    monkeypatch.setattr(Transport, "_start", counted)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await run_command(
            "sleep 600",
            env=dict(os.environ),
            cwd=tmp_path,
            log_path=tmp_path / "step.log",
            kill_grace=1,
        )
    assert started == []


def test_a_second_signal_does_not_cut_the_cleanup_short(tmp_path: Path) -> None:
    """Regression: the signal handlers went away as soon as the first signal cancelled the
    run, so a second one (Ctrl-C again, a supervisor's SIGINT after its SIGTERM) killed the
    engine in the middle of its cleanup, leaving a step in its kill grace running forever."""
    pids, termed = tmp_path / "pids", tmp_path / "termed"
    stubborn = f"trap 'echo > {termed}' TERM; echo $$ >> {pids}; while :; do sleep 0.05; done"
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"name": "stubborn", "subplans": [{"name": "s", "run": stubborn}]}))
    env = engine_env(tmp_path, {"ENGINE_KILL_GRACE": "1"})
    proc = start_engine("run", str(plan), cwd=tmp_path, env=env)
    try:
        wait_for(lambda: pids.exists() and pids.read_text().endswith("\n"), what="the step")
        proc.send_signal(signal.SIGTERM)
        wait_for(termed.exists, what="the engine to stop the step (its kill grace begins)")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        leader = int(pids.read_text())
        wait_for(lambda: not group_alive(leader), timeout=5, what="the step's group to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if pids.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pids.read_text()), signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "Traceback" not in err


async def test_stopping_a_worker_never_cancels_a_heartbeat_in_the_middle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a worker stopped while a heartbeat statement was in flight cancelled it;
    SQLAlchemy then terminated its aiosqlite connection through a shielded close that never
    finishes (aiosqlite 0.22), and the worker hung at exit after `jobs cancel` + SIGTERM."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    settings = settings_for_test(
        tmp_path, **{"database.url": url, "async.heartbeat_interval": 0.01}
    )
    async with Engine(settings, database_url=url) as eng:
        pool = eng.worker()
        beat = eng.store.heartbeat
        entered, release = anyio.Event(), anyio.Event()
        finished: list[int] = []

        async def held_heartbeat(record: Any) -> Any:
            entered.set()
            await release.wait()
            beats = await beat(record)
            finished.append(len(beats))
            return beats

        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)  # registered: the next heartbeat is the loop's
            monkeypatch.setattr(eng.store, "heartbeat", held_heartbeat)
            with anyio.fail_after(10):
                await entered.wait()
            pool.stop()
            await anyio.wait_all_tasks_blocked()  # the pool waits for its heartbeat loop
            release.set()
    assert finished == [0]  # the beat in flight ran to its end


async def test_leaving_a_lock_never_cancels_its_renewal_in_the_middle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression, the same hazard as above for `engine run`: a run that ended (or was
    interrupted) while its plan lock was being renewed cancelled the statement in flight.

    The lock's time is a ManualClock: only the test moves it, so the renewal held back here
    can never find the lock expired however slow the machine is."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    clock = ManualClock()
    async with Engine(
        settings_for_test(tmp_path, **{"database.url": url}), database_url=url, clock=clock
    ) as eng:
        renew = eng.store.renew_lock
        entered, release = anyio.Event(), anyio.Event()
        finished: list[object] = []

        async def held_renew(*args: Any) -> Any:
            entered.set()
            await release.wait()
            record = await renew(*args)
            finished.append(record)
            return record

        async def let_go() -> None:
            await entered.wait()
            await anyio.wait_all_tasks_blocked()  # the hold is on its way out
            release.set()

        monkeypatch.setattr(eng.store, "renew_lock", held_renew)
        async with anyio.create_task_group() as tg:
            tg.start_soon(let_go)
            async with eng.locks.hold("resource:x", Owner.named("test"), ttl=30):
                with anyio.fail_after(10):
                    await clock.wait_for_sleepers()  # the renewer waits for its time
                    clock.advance(10)
                    await entered.wait()  # the first renewal is in flight
        assert len(finished) == 1  # it ran to its end
        assert await eng.locks.list() == []  # and the lock was released after it
