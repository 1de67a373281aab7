"""What the reliability suites share: a PostgreSQL database of their own, child processes with
their output in files, and the report (figures printed, violations counted).

The suites (`chaos.py`, `contention.py`, `lock_model.py` beside this file) are scripts run at full
size by `make reliability`, and modules whose functions the short tests in `tests/` call with small
sizes. Both ways, `tests/` is on `sys.path` (`clitools` and friends live there).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

#: The server tried when ENGINE_TEST_POSTGRES_URL is not set.
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


# -- the report --------------------------------------------------------------------------------


@dataclass
class Report:
    """Figures to print (in the order given) and violations (any makes the script exit 1)."""

    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def violate(self, message: str) -> None:
        self.violations.append(message)

    @property
    def ok(self) -> bool:
        return not self.violations

    def lines(self) -> list[str]:
        figures = ", ".join(f"{k} {v}" for k, v in self.figures.items())
        out = [f"{self.title}: {figures}"]
        out.extend(f"  note: {n}" for n in self.notes)
        shown = self.violations[:20]
        out.extend(f"  VIOLATION: {v}" for v in shown)
        if len(self.violations) > len(shown):
            out.append(f"  ... and {len(self.violations) - len(shown)} more violations")
        return out

    def print(self) -> None:
        print("\n".join(self.lines()), flush=True)

    def __str__(self) -> str:
        return "\n".join(self.lines())


def skipped(title: str, reason: str) -> Report:
    report = Report(title)
    report.figures["skipped"] = reason
    return report


def finish(reports: Sequence[Report]) -> int:
    """The script's exit code: 1 if any report has a violation."""
    bad = [r.title for r in reports if not r.ok]
    if bad:
        print(f"FAILED: {', '.join(bad)}", flush=True)
        return 1
    print("OK", flush=True)
    return 0


# -- PostgreSQL ----------------------------------------------------------------------------------


def postgres_server() -> str:
    return os.environ.get("ENGINE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES


@contextmanager
def postgres_database(label: str) -> Iterator[str | None]:
    """A new database at the engine's schema head on the test server, dropped afterwards;
    None (and why, printed) when no server answers."""
    try:
        import asyncpg
    except ImportError:
        print(f"{label} on PostgreSQL: skipped (asyncpg is not installed)", flush=True)
        yield None
        return
    from sqlalchemy.engine import make_url

    from engine.store import upgrade

    server = make_url(postgres_server())
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"engine_rel_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        where = server.render_as_string(hide_password=True)
        print(f"{label} on PostgreSQL: skipped (no server at {where}: {exc})", flush=True)
        yield None
        return
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        asyncio.run(upgrade(url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A child process whose stdout and stderr go to files (a pipe nobody reads would block it
    once full)."""

    def __init__(
        self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], name: str
    ) -> None:
        self.name = name
        self.folder = cwd
        self.stdout_path = cwd / f"{name}.out"
        self.stderr_path = cwd / f"{name}.err"
        self._out: IO[bytes] = self.stdout_path.open("wb")
        self._err: IO[bytes] = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=self._out, stderr=self._err
        )
        self.pid = self.proc.pid
        self.killed_at: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.killed_at = time.time()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (SIGKILL after `timeout`): the exit code (-9 if it had to be killed)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        """Wait for it to exit on its own; SIGKILL after `timeout` (then -9)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        self._close()
        return code

    def folder_file(self, suffix: str) -> Path:
        """`<name>.<suffix>` in its working folder (e.g. an `--events` file it was given)."""
        return self.folder / f"{self.name}.{suffix}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _close(self) -> None:
        self._out.close()
        self._err.close()


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without ENGINE_* settings, with tests/ on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    if extra:
        env.update(extra)
    return env


def problems_in(text: str) -> list[str]:
    """Lines of a child's stderr that show an error reaching its user."""
    markers = ("Traceback", "database is locked", "ERROR", "error:", "Error:")
    return [line for line in text.splitlines() if any(m in line for m in markers)]
