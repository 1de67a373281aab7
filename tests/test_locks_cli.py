"""Locks between real `python -m engine` processes, on SQLite and PostgreSQL: two runs of one
plan at once (exit 3 naming the holder; `--lock-wait` runs the second after the first), a holder
killed with SIGKILL (its lock expires after the TTL and is taken over), renewal keeping a long
run locked, `locks list`, `locks release --force` failing the holder clearly.

States outside this process are polled with a deadline; nothing sleeps to wait for a state."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from clitools import TESTS_DIR, pid_alive, run_engine, wait_for
from engine.domain.lock import LockRecord, Resource
from engine.store import open_store

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    postgres: str = request.getfixturevalue("postgres_url")
    return postgres


def env_for(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["ENGINE_DATABASE_URL"] = url
    env["ENGINE_DATA_DIR"] = str(tmp_path / ".engine")
    env["ENGINE_KILL_GRACE"] = "2"
    env.update(extra)
    return env


def write_plan(tmp_path: Path, body: str, project: str | None = None) -> tuple[Path, str]:
    name = f"locked-{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared
    head = f"name: {name}\n" + (f"project: {project}\n" if project else "")
    path = tmp_path / f"{name}.yaml"
    path.write_text(head + body)
    return path, name


#: A step that marks its start and end in `order`, and runs until the file `release` exists.
UNTIL_RELEASED = """\
subplans:
  - name: work
    run: >-
      echo "+$ENGINE_RUN_ID" >> order;
      while [ ! -e release ]; do sleep 0.02; done;
      echo "-$ENGINE_RUN_ID" >> order
"""
#: A Python step that never returns (dies with its process, leaving no child behind).
FOREVER = """\
subplans:
  - name: work
    call: lockkit:wait_for
    with: {name: never}
"""


def start(tmp_path: Path, env: dict[str, str], *args: str, log: str) -> subprocess.Popen[bytes]:
    out = (tmp_path / log).open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def stored_lock(url: str, resource: str) -> LockRecord | None:
    async def read() -> LockRecord | None:
        store = await open_store(url)
        try:
            return await store.get_lock(Resource.parse(resource))
        finally:
            await store.close()

    return asyncio.run(read())


def held_by(url: str, resource: str, pid: int) -> Callable[[], bool]:
    def check() -> bool:
        lock = stored_lock(url, resource)
        return lock is not None and lock.pid == pid and lock.expires_at > datetime.now(UTC)

    return check


def finished(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_two_runs_at_once_one_exits_3_and_lock_wait_runs_after(tmp_path: Path, url: str) -> None:
    plan, name = write_plan(tmp_path, UNTIL_RELEASED)
    env = env_for(tmp_path, url)
    first = start(tmp_path, env, "run", str(plan), "--quiet", log="first.log")
    try:
        wait_for(lambda: (tmp_path / "order").exists(), what="the first run's step")
        refused = run_engine("run", str(plan), "--quiet", cwd=tmp_path, env=env)
        assert refused.returncode == 3, refused.stderr
        assert f"error: plan:{name} is locked by " in refused.stderr
        assert f":{first.pid}:" in refused.stderr  # host:pid:run id of the holder
        assert "--lock-wait" in refused.stderr

        third = start(tmp_path, env, "run", str(plan), "--lock-wait", "30", log="third.log")
        wait_for(lambda: "waiting up to 30s" in (tmp_path / "third.log").read_text(), what="wait")
        assert f":{first.pid}:" in (tmp_path / "third.log").read_text()
        (tmp_path / "release").touch()
        assert finished(first) == 0
        assert finished(third) == 0, (tmp_path / "third.log").read_text()
    finally:
        (tmp_path / "release").touch()
        finished(first)
    marks = (tmp_path / "order").read_text().split()
    assert [m[0] for m in marks] == ["+", "-", "+", "-"]  # never inside at once
    assert marks[0][1:] == marks[1][1:] != marks[2][1:] == marks[3][1:]
    assert stored_lock(url, f"plan:{name}") is None


def test_a_killed_holders_lock_expires_after_the_ttl_and_is_taken_over(
    tmp_path: Path, url: str
) -> None:
    plan, name = write_plan(tmp_path, FOREVER)
    env = env_for(tmp_path, url, ENGINE_LOCKS_PLAN_TTL="1")
    holder = start(tmp_path, env, "run", str(plan), "--quiet", log="holder.log")
    try:
        wait_for(held_by(url, f"plan:{name}", holder.pid), what="the holder's lock")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert not pid_alive(holder.pid)
    dead = stored_lock(url, f"plan:{name}")
    assert dead is not None
    assert dead.pid == holder.pid

    # Nobody releases it: it is there until its TTL runs out ...
    wait_for(lambda: datetime.now(UTC) >= dead.expires_at, timeout=5, what="the expiry")
    listed = run_engine("locks", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if f"plan:{name}" in ln)
    assert f":{holder.pid}:" in line
    assert "(expired)" in line

    # ... and then the next run of the plan takes it over.
    second_plan = tmp_path / "second.yaml"
    second_plan.write_text(f"name: {name}\nsubplans:\n  - {{name: quick, run: 'true'}}\n")
    second = run_engine("run", str(second_plan), "--quiet", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert stored_lock(url, f"plan:{name}") is None


def test_renewal_keeps_a_long_run_locked_past_several_ttls(tmp_path: Path, url: str) -> None:
    plan, name = write_plan(tmp_path, UNTIL_RELEASED)
    env = env_for(tmp_path, url, ENGINE_LOCKS_PLAN_TTL="1.0")
    holder = start(tmp_path, env, "run", str(plan), "--quiet", log="holder.log")
    try:
        wait_for(held_by(url, f"plan:{name}", holder.pid), what="the holder's lock")
        first = stored_lock(url, f"plan:{name}")
        assert first is not None
        # Three TTLs pass, the lock renewed every third of one (only a holder starved for 2/3 s
        # would lapse); at every look the lock is still the holder's and unexpired.
        looks = 0

        def three_ttls_held() -> bool:
            nonlocal looks
            assert held_by(url, f"plan:{name}", holder.pid)(), "the lock lapsed"
            looks += 1
            return (datetime.now(UTC) - first.acquired_at).total_seconds() > 3.0

        wait_for(three_ttls_held, timeout=15, what="three TTLs")
        assert looks > 1
        refused = run_engine("run", str(plan), "--quiet", cwd=tmp_path, env=env)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        (tmp_path / "release").touch()
        assert finished(holder) == 0, (tmp_path / "holder.log").read_text()
    finally:
        (tmp_path / "release").touch()
        finished(holder)
    last = (tmp_path / "holder.log").read_text()
    assert "completed" in last


def test_force_release_makes_the_holders_run_fail_clearly(tmp_path: Path, url: str) -> None:
    project = f"shop-{uuid.uuid4().hex[:6]}"
    plan, name = write_plan(tmp_path, FOREVER, project=project)
    env = env_for(tmp_path, url, ENGINE_LOCKS_PLAN_TTL="0.9")
    holder = start(tmp_path, env, "run", str(plan), "--quiet", log="holder.log")
    try:
        wait_for(held_by(url, f"plan:{name}", holder.pid), what="the holder's lock")
        listed = run_engine("locks", "list", cwd=tmp_path, env=env)
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == [
            *("RESOURCE", "OWNER", "ACQUIRED", "(UTC)", "EXPIRES", "(UTC)", "DEPTH")
        ]
        mine = [row for row in rows if f":{holder.pid}:" in row]
        assert [row.split()[0] for row in mine] == [f"plan:{name}", f"project:{project}"]
        assert all(row.split()[-1] == "1" for row in mine)

        released = run_engine("locks", "release", f"plan:{name}", "--force", cwd=tmp_path, env=env)
        assert released.returncode == 0, released.stderr
        assert f"released plan:{name} (held by " in released.stdout
        assert f":{holder.pid}:" in released.stdout
        assert finished(holder, timeout=20) == 1  # its next renewal finds the lock gone
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    log = (tmp_path / "holder.log").read_text()
    assert f"lock plan:{name} of " in log
    assert "was lost" in log
    # The holder released what it still held (its project lock) on the way out.
    assert stored_lock(url, f"project:{project}") is None


def test_a_subplan_resource_conflict_with_another_run_exits_3(tmp_path: Path, url: str) -> None:
    resource = f"db-{uuid.uuid4().hex[:6]}"
    body = (
        "subplans:\n"
        f"  - {{name: migrate, locks: [{resource}], call: lockkit:wait_for,"
        " with: {name: never}}\n"
    )
    holder_plan, _ = write_plan(tmp_path, body)
    other_plan, _ = write_plan(
        tmp_path, f"subplans:\n  - {{name: seed, locks: [{resource}], run: 'true'}}\n"
    )
    env = env_for(tmp_path, url)
    holder = start(tmp_path, env, "run", str(holder_plan), "--quiet", log="holder.log")
    try:
        wait_for(held_by(url, f"resource:{resource}", holder.pid), what="the resource lock")
        refused = run_engine("run", str(other_plan), "--quiet", cwd=tmp_path, env=env)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert f"resource:{resource} is locked by " in refused.stdout
        assert f":{holder.pid}:" in refused.stdout
        assert "/migrate" in refused.stdout  # owned by the subplan's execution (run id + path)
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=20)
    assert stored_lock(url, f"resource:{resource}") is None


def test_locks_release_refuses_unknown_resources_and_wants_force(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    for args, message in [
        (("locks", "release", "table:x", "--force"), "unknown lock resource 'table:x'"),
        (("locks", "release", "plan:nobody", "--force"), "nobody holds plan:nobody"),
        (("locks", "release", "plan:x"), "repeat with --force"),
    ]:
        result = run_engine(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    listed = run_engine("locks", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0
    assert "no locks held in" in listed.stdout
