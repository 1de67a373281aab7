"""`python -m engine run` and `validate` end to end, as a user runs them."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from clitools import engine_env, pid_alive, run_engine, start_engine, wait_for


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


OK_PLAN = """\
name: demo
max_parallel: 2
subplans:
  - {name: a, run: "echo alpha"}
  - {name: b, call: "stepkit:value", with: {x: 1}}
  - name: g
    needs: [a]
    subplans:
      - {name: x, run: "echo x"}
      - {name: y, run: [python3, -c, "print('y')"]}
"""

FAIL_PLAN = """\
name: failing
failure_mode: continue_on_error
subplans:
  - {name: good, run: "echo fine"}
  - {name: bad, run: "echo some context; echo more context; exit 3"}
  - {name: after, needs: [bad], run: "echo never"}
"""


def test_run_success_exit_0_and_summary(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    proc = run_engine("run", str(plan), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    run_id = out.splitlines()[0].split()[1].rstrip(":")
    assert len(run_id) == 26
    assert f"run {run_id} completed" in out
    for path in ("a", "b", "g", "g/x", "g/y"):
        assert path in out
    assert "Traceback" not in proc.stderr


def test_run_failure_exit_1_shows_error_and_output_tail(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", FAIL_PLAN)
    proc = run_engine("run", str(plan), cwd=tmp_path)
    assert proc.returncode == 1
    assert "bad failed: exit code 3" in proc.stdout
    assert "more context" in proc.stdout
    assert "skipped" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_events_jsonl_to_file(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    events_file = tmp_path / "events.jsonl"
    proc = run_engine("run", str(plan), "--events", str(events_file), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    every = [json.loads(line) for line in events_file.read_text().splitlines()]
    # The plan's lock is taken before the run starts and freed after it ended.
    assert [(e["type"], e.get("resource")) for e in (every[0], every[-1])] == [
        ("lock.acquired", "plan:demo"),
        ("lock.released", "plan:demo"),
    ]
    events = [e for e in every if not e["type"].startswith("lock.")]
    assert events[0]["type"] == "run.state"
    assert events[0]["to"] == "running"
    assert events[-1]["to"] == "completed"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    subplan_events = [e for e in events if e["type"] == "subplan.state"]
    assert {e["path"] for e in subplan_events} == {"a", "b", "g", "g/x", "g/y"}
    assert all({"from", "to", "at", "run_id", "v"} <= e.keys() for e in subplan_events)


def test_events_to_stdout_keeps_stdout_pure_json(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    proc = run_engine("run", str(plan), "--events", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines
    assert all(json.loads(line)["type"] for line in lines)
    assert "completed" in proc.stderr


def test_failure_mode_flag_is_global_level(tmp_path: Path) -> None:
    plan = write(
        tmp_path / "plan.yaml",
        "name: p\nsubplans:\n  - {name: bad, run: 'exit 1'}\n  - {name: ok, run: 'echo ok'}\n",
    )
    proc = run_engine("run", str(plan), "--failure-mode", "continue_on_error", cwd=tmp_path)
    assert proc.returncode == 1
    assert " ok: completed" in proc.stdout  # fail_fast (the default) could have cancelled it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.yaml"], "missing.yaml"),
        (["run"], "the following arguments are required: PLAN"),
        (["run", "plan.yaml", "--max-parallel", "40"], "max_parallel"),
        (["run", "plan.yaml", "--max-parallel", "many"], "invalid int value"),
        (["run", "plan.yaml", "--failure-mode", "sometimes"], "invalid choice"),
        (["validate", "bad.yaml"], "max_parallel must be between 1 and 32, got 40"),
        (["run", "bad.yaml"], "max_parallel must be between 1 and 32, got 40"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exit_2_no_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    write(tmp_path / "plan.yaml", OK_PLAN)
    write(
        tmp_path / "bad.yaml",
        "name: b\nmax_parallel: 40\nsubplans: [{name: a, run: 'touch ran'}]\n",
    )
    proc = run_engine(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ran").exists()


def test_bad_config_env_exit_2(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    env = engine_env(tmp_path, {"ENGINE_ASYNC_STUCK_AFTER": "-3"})
    proc = run_engine("run", str(plan), cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "ENGINE_ASYNC_STUCK_AFTER" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_file_sets_global_cap(tmp_path: Path) -> None:
    write(tmp_path / "engine.toml", "max_parallel = 0\n")
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    proc = run_engine("run", str(plan), cwd=tmp_path)
    assert proc.returncode == 2
    assert "engine.toml: max_parallel" in proc.stderr


def test_validate_ok(tmp_path: Path) -> None:
    plan = write(tmp_path / "plan.yaml", OK_PLAN)
    proc = run_engine("validate", str(plan), cwd=tmp_path)
    assert proc.returncode == 0
    assert "ok" in proc.stdout


SLEEPY_PLAN = """\
name: sleepy
subplans:
  - name: one
    run: "sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
  - name: two
    run: "sleep 60 & echo $! >> {pids}; wait"
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_run_kills_children_and_exits(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    pids = tmp_path / "pids"
    plan = write(tmp_path / "plan.yaml", SLEEPY_PLAN.format(pids=pids))
    proc = start_engine("run", str(plan), cwd=tmp_path, env=engine_env(tmp_path))
    try:
        wait_for(
            lambda: pids.exists() and len(pids.read_text().split()) == 3,
            what="steps to start",
        )
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "cancelled" in out
    assert "Traceback" not in err
    children = [int(p) for p in pids.read_text().split()]
    wait_for(lambda: not any(pid_alive(p) for p in children), timeout=5, what="children to die")
