"""The store from the command line, through real `python -m engine` processes: runs recorded,
`runs list`, `runs show`, `resume`, `db upgrade|current`, bad URLs and files, two processes on
one SQLite file, and the run's final state written when SIGINT stops it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from clitools import start_engine, wait_for
from engine.store.sql import head_revision

TESTS = Path(__file__).parent
HEAD = head_revision()
RUN_ID = re.compile(r"^run ([0-9A-HJKMNP-TV-Z]{26}): plan", re.MULTILINE)


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No inherited ENGINE_* settings; `tests/` importable for `call: storesteps:...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["ENGINE_RETRY_BACKOFF"] = "0"
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=dict(env) if env is not None else env_for(cwd),
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def run_id_of(output: str) -> str:
    found = RUN_ID.search(output)
    assert found, output
    return found.group(1)


PLAN = """\
name: checks
failure_mode: continue_on_error
subplans:
  - {name: a, run: "echo ran >> a.count"}
  - {name: b, run: "echo bad things happened; test -f fixed.marker"}
  - name: g
    subplans:
      - {name: x, run: "true"}
      - {name: y, run: "true", needs: [x]}
  - {name: c, run: "true", needs: [b]}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    return tmp_path


def test_run_is_recorded_in_the_default_sqlite_file(project: Path) -> None:
    done = cli("run", "plan.yaml", "--quiet", cwd=project)
    assert done.returncode == 1, done.stderr
    run_id = run_id_of(done.stdout)

    assert (project / ".engine" / "engine.db").is_file()
    listed = cli("runs", "list", cwd=project)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["RUN", "PLAN", "STATE", "STARTED", "(UTC)", "DURATION"]
    assert row.split()[:3] == [run_id, "checks", "failed"]


def test_runs_show_prints_the_subplan_tree(project: Path) -> None:
    run_id = run_id_of(cli("run", "plan.yaml", "--quiet", cwd=project).stdout)

    shown = cli("runs", "show", run_id, cwd=project)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"run {run_id}: plan checks, failed" in text
    assert f"plan file:    {project / 'plan.yaml'}" in text
    lines = text.splitlines()
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("SUBPLAN"))) + 1 :]
    rows = {ln.split()[0]: ln.split() for ln in table[:6]}
    assert rows["a"][1:2] == ["completed"]
    assert rows["b"][1] == "failed"
    assert rows["b"][3:] == ["1", "exit", "code", "1"]
    assert rows["c"][1:] == ["skipped", "-", "0", "needs", "'b',", "which", "was", "failed"]
    assert re.search(r"^  x\s+completed", text, re.MULTILINE)
    assert re.search(r"^    y\s+completed", text, re.MULTILINE) is None
    assert re.search(r"^  y\s+completed", text, re.MULTILINE)
    assert "last output:\n    bad things happened" in text

    as_json = json.loads(cli("runs", "show", run_id, "--json", "--events", cwd=project).stdout)
    assert as_json["run"]["state"] == "failed"
    assert [s["path"] for s in as_json["subplans"]] == ["a", "b", "g", "g/x", "g/y", "c"]
    assert as_json["events"][0]["type"] == "run.state"
    assert as_json["events"][-1]["to"] == "failed"


def test_resume_runs_only_what_did_not_complete(project: Path) -> None:
    first = run_id_of(cli("run", "plan.yaml", "--quiet", cwd=project).stdout)
    (project / "fixed.marker").touch()

    resumed = cli("resume", first, cwd=project)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    second = run_id_of(resumed.stdout)
    assert f"resuming run {first}: 4 of 6 subplans completed there, kept" in resumed.stdout
    assert (project / "a.count").read_text().splitlines() == ["ran"]  # a did not run again
    listed = json.loads(cli("runs", "list", "--json", cwd=project).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(second, "completed"), (first, "failed")]
    assert listed[0]["resumed_from"] == first
    shown = cli("runs", "show", second, cwd=project).stdout
    assert f"resumed from: {first}" in shown
    assert re.search(r"^c\s+completed", shown, re.MULTILINE)


def test_resume_of_a_vanished_plan_file_says_it_uses_the_stored_plan(project: Path) -> None:
    first = run_id_of(cli("run", "plan.yaml", "--quiet", cwd=project).stdout)
    (project / "plan.yaml").unlink()
    (project / "fixed.marker").touch()

    resumed = cli("resume", first, "--quiet", cwd=project)

    assert resumed.returncode == 0, resumed.stderr
    assert f"note: plan file {project / 'plan.yaml'} is gone since run {first}" in resumed.stdout


@pytest.mark.parametrize("command", [["runs", "show"], ["resume"]])
def test_unknown_run_ids_exit_2(project: Path, command: list[str]) -> None:
    done = cli(*command, "01HZZZZZZZZZZZZZZZZZZZZZZZ", cwd=project)
    assert done.returncode == 2
    assert "error: no run '01HZZZZZZZZZZZZZZZZZZZZZZZ'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_completed_run_cannot_be_resumed(project: Path) -> None:
    (project / "fixed.marker").touch()
    run_id = run_id_of(cli("run", "plan.yaml", "--quiet", cwd=project).stdout)
    done = cli("resume", run_id, cwd=project)
    assert done.returncode == 2
    assert "nothing to resume" in done.stderr


def test_bad_database_urls_exit_2(project: Path) -> None:
    done = cli("run", "plan.yaml", "--db", "mysql://root:pw@db/x", cwd=project)
    assert done.returncode == 2
    assert "unsupported database URL 'mysql://***@db/x'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "a.count").exists()  # nothing ran


def test_a_url_option_the_driver_does_not_take_exits_2_without_a_traceback(project: Path) -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/engine?foo=bar"
    done = cli("run", "plan.yaml", "--db", url, cwd=project)
    assert done.returncode == 2
    assert "has an option the driver does not accept ('foo')" in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr
    assert not (project / "a.count").exists()  # nothing ran


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(project: Path) -> None:
    notes = project / "notes.txt"
    notes.write_text("shopping list\n" * 50)
    before = notes.read_bytes()

    done = cli("runs", "list", "--db", f"sqlite:///{notes}", cwd=project)

    assert done.returncode == 2
    assert f"error: {notes}: not an SQLite database; the file was left untouched" in done.stderr
    assert notes.read_bytes() == before


def test_a_database_of_a_newer_engine_exits_2(project: Path) -> None:
    cli("run", "plan.yaml", "--quiet", cwd=project)
    with sqlite3.connect(project / ".engine" / "engine.db") as conn:
        conn.execute("UPDATE engine_schema_version SET version_num = 'ffff'")
    done = cli("runs", "list", cwd=project)
    assert done.returncode == 2
    assert "revision ffff, which this engine does not know" in done.stderr
    current = cli("db", "current", cwd=project)
    assert "revision ffff, newer than this engine" in current.stdout


def test_an_unreachable_server_is_a_clear_error(project: Path) -> None:
    done = cli("runs", "list", "--db", "postgresql://postgres@127.0.0.1:1/engine", cwd=project)
    assert done.returncode == 1
    assert "cannot reach the database server" in done.stderr
    assert "Traceback" not in done.stderr


def test_database_url_from_flag_environment_and_config_file(project: Path) -> None:
    (project / "engine.toml").write_text('[database]\nurl = "sqlite:///from-config.db"\n')
    env = env_for(project)
    cli("run", "plan.yaml", "--quiet", cwd=project, env=env)
    env["ENGINE_DATABASE_URL"] = "sqlite:///from-env.db"
    cli("run", "plan.yaml", "--quiet", cwd=project, env=env)
    cli("run", "plan.yaml", "--quiet", "--db", "sqlite:///from-flag.db", cwd=project, env=env)

    for name in ("from-config.db", "from-env.db", "from-flag.db"):
        listed = cli("runs", "list", "--json", "--db", f"sqlite:///{name}", cwd=project)
        assert len(json.loads(listed.stdout)) == 1, name
    assert not (project / ".engine" / "engine.db").exists()


def test_the_default_file_follows_the_data_folder(project: Path) -> None:
    env = env_for(project, ENGINE_DATA_DIR=str(project / "state"))
    done = cli("run", "plan.yaml", "--quiet", cwd=project, env=env)
    assert done.returncode == 1, done.stderr
    assert (project / "state" / "engine.db").is_file()
    assert not (project / ".engine").exists()


def test_db_current_and_upgrade_on_sqlite(project: Path) -> None:
    url = "sqlite:///db/engine.db"
    current = cli("db", "current", "--db", url, cwd=project)
    assert "no database file yet" in current.stdout
    assert not (project / "db").exists()

    upgraded = cli("db", "upgrade", "--db", url, cwd=project)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from an empty database to {HEAD}" in upgraded.stdout
    assert f"revision {HEAD} (head)" in cli("db", "current", "--db", url, cwd=project).stdout
    again = cli("db", "upgrade", "--db", url, cwd=project)
    assert f"already at revision {HEAD} (head)" in again.stdout


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    steps = "\n".join(f"  - {{name: s{i}, call: 'storesteps:noop'}}" for i in range(300))
    for name in ("left", "right"):  # two plans: one plan's runs exclude each other (plan lock)
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nmax_parallel: 8\nsubplans:\n{steps}\n"
        )
    env = env_for(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "run", f"{name}.yaml", "--quiet"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("left", "right")
    ]
    results = [p.communicate(timeout=50) for p in procs]

    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, out + err
        assert "locked" not in err
    listed = json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout)
    assert sorted(r["state"] for r in listed) == ["completed", "completed"]
    for run in listed:
        shown = json.loads(cli("runs", "show", run["id"], "--json", cwd=tmp_path).stdout)
        assert [s["state"] for s in shown["subplans"]] == ["completed"] * 300


def test_sigint_records_the_run_as_cancelled(tmp_path: Path) -> None:
    (tmp_path / "slow.yaml").write_text(
        "name: slow\nsubplans:\n  - {name: long, run: 'touch started; sleep 30'}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "slow.yaml", "--quiet"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Another process's state: nothing can notify us, so poll with a deadline.
        wait_for(lambda: (tmp_path / "started").exists(), what="the step to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    shown = json.loads(cli("runs", "show", run_id_of(out), "--json", cwd=tmp_path).stdout)
    assert shown["run"]["state"] == "cancelled"
    assert shown["subplans"][0]["state"] == "cancelled"


def test_a_killed_run_keeps_what_was_flushed_and_can_be_resumed(tmp_path: Path) -> None:
    (tmp_path / "crash.yaml").write_text(
        "name: crash\n"
        "subplans:\n"
        "  - {name: a, run: 'echo ran >> a.count'}\n"
        "  - {name: b, run: 'test -f resume.ok || (touch started; sleep 30)', needs: [a]}\n"
    )
    # The killed run keeps its plan lock until the lock's TTL runs out: keep that short.
    env = env_for(tmp_path, ENGINE_LOCKS_PLAN_TTL="1")
    proc = start_engine("run", "crash.yaml", "--quiet", cwd=tmp_path, env=env)
    try:
        wait_for(lambda: (tmp_path / "started").exists(), what="b to start")

        def a_is_recorded() -> bool:
            listed = json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout)
            shown = cli("runs", "show", listed[0]["id"], "--json", cwd=tmp_path).stdout
            return json.loads(shown)["subplans"][0]["state"] == "completed"

        wait_for(a_is_recorded, what="a's terminal state to be flushed")
    finally:
        proc.kill()  # SIGKILL: no cleanup, no final flush
        proc.communicate(timeout=30)

    (run,) = json.loads(cli("runs", "list", "--json", cwd=tmp_path).stdout)
    assert run["state"] == "running"  # what a crash leaves behind
    (tmp_path / "resume.ok").touch()
    resumed = cli("resume", run["id"], "--quiet", "--lock-wait", "20", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Its lock (TTL 1 s) may have expired by now, and the run been failed as lost on opening;
    # if not, resume waits for the lock and says the run looks abandoned.
    assert (
        "is recorded as running (its process may have died)" in resumed.stdout
        or "its process was lost; recorded as failed" in resumed.stderr
    ), resumed.stdout + resumed.stderr
    assert (tmp_path / "a.count").read_text().splitlines() == ["ran"]


@pytest.mark.postgres
def test_postgres_end_to_end(project: Path, postgres_database: Callable[[], str]) -> None:
    url = postgres_database()

    refused = cli("run", "plan.yaml", "--db", url, cwd=project)
    assert refused.returncode == 2
    assert "run `python -m engine db upgrade --db URL` first" in refused.stderr
    assert not (project / "a.count").exists()

    upgraded = cli("db", "upgrade", "--db", url, cwd=project)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from an empty database to {HEAD}" in upgraded.stdout

    first = run_id_of(cli("run", "plan.yaml", "--quiet", "--db", url, cwd=project).stdout)
    (project / "fixed.marker").touch()
    resumed = cli("resume", first, "--quiet", "--db", url, cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    second = run_id_of(resumed.stdout)
    listed = json.loads(cli("runs", "list", "--json", "--db", url, cwd=project).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(second, "completed"), (first, "failed")]
    assert f"revision {HEAD} (head)" in cli("db", "current", "--db", url, cwd=project).stdout


def test_a_run_whose_process_was_killed_is_failed_once_its_plan_lock_expires(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow.yaml").write_text(
        'name: slow\nsubplans:\n  - {name: wait, run: "echo $$ > step.pid; exec sleep 60"}\n'
    )
    env = env_for(tmp_path, ENGINE_LOCKS_PLAN_TTL="1")
    holder = start_engine("run", "slow.yaml", "--quiet", cwd=tmp_path, env=env)
    step = tmp_path / "step.pid"
    try:
        wait_for(lambda: step.exists() and step.read_text().strip() != "", what="the step")
        holder.kill()  # SIGKILL: the run cannot record its end
        out, _ = holder.communicate(timeout=10)

        def failed_as_lost() -> bool:
            shown = cli("runs", "list", cwd=tmp_path, env=env).stdout
            assert "completed" not in shown, shown
            return "failed" in shown

        # The lock (TTL 1 s) expires and the run is older than one TTL: the next open fails it.
        wait_for(failed_as_lost, timeout=20, what="the lost run to be failed")
        run_id = run_id_of(out)
        shown = cli("runs", "show", run_id, cwd=tmp_path, env=env)
        assert "process running it stopped without recording its end" in shown.stdout
    finally:
        if step.exists() and step.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(step.read_text()), signal.SIGKILL)
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=10)
