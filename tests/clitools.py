"""Running `python -m engine` as a real child process, for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

TESTS_DIR = Path(__file__).parent


def engine_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: no inherited ENGINE_* settings, a private SQLite file, tests/ on
    PYTHONPATH (for `call: stepkit:...`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["ENGINE_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    env["ENGINE_DATA_DIR"] = str(tmp_path / ".engine")
    env["ENGINE_RETRY_BACKOFF"] = "0"
    env["ENGINE_KILL_GRACE"] = "2"
    env.pop("ENGINE_TEST_POSTGRES_URL", None)
    if extra:
        env.update(extra)
    return env


def run_engine(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 45,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=dict(env) if env is not None else engine_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_engine(*args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    """Poll with a deadline (for states outside this process, where no event can reach us)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
