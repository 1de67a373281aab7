"""The fuzz reliability suite (issue 7): bad input through the whole command line.

Hypothesis generates malformed plan documents (_fuzzplans: wrong types, missing and unknown keys,
huge numbers, deep nesting, cycles, unicode, binary, broken YAML) and bad configuration
(_fuzzconfig: engine.toml, `ENGINE_*` variables, flags). Each case is the files of a folder, an
argv and an environment (_fuzzcase). It runs through `engine.cli.main(argv)` in this process
(fast enough for thousands), and a sample also as a real `python -m engine` child, which must
print the same. Every case must:

- exit with code 2, within a deadline (no hang);
- say why on stderr, in `error: ` lines naming where the problem is (the plan file, the TOML
  file, the variable or the flag), with no traceback and no raw pydantic text;
- leave its folder as it was: no step ran (every generated plan's steps would `touch` a marker),
  no database, log folder or events file was written.

`fuzz.py` runs it at full size; tests/test_reliability_fuzz.py a small fixed-seed sample.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from clitools import TESTS_DIR, run_engine
from engine.cli import main
from reliability._fuzzcase import MARKER, Case
from reliability._fuzzconfig import CONFIG_KINDS, config_cases, extreme_cases
from reliability._fuzzplans import PLAN_KINDS, plan_cases


@dataclass
class Outcome:
    code: int | str | None  # "hang" or "exception" when there was no exit code
    stdout: str
    stderr: str
    seconds: float
    created: list[str]  # files and folders that were not there before
    runs_recorded: int = 0
    crash: str | None = None  # the traceback of an exception that escaped main()


@dataclass
class Failure:
    case: Case
    mode: str  # "in-process" or "child"
    problems: list[str]
    outcome: Outcome


@dataclass
class Report:
    seed: int
    counts: Counter[str] = field(default_factory=Counter)
    children: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, str] = (0.0, "")

    @property
    def cases(self) -> int:
        return sum(self.counts.values())

    def count(self, prefix: str) -> int:
        return sum(n for category, n in self.counts.items() if category.startswith(prefix))

    def _breakdown(self, prefix: str) -> str:
        found = sorted(
            (c.removeprefix(prefix), n) for c, n in self.counts.items() if c.startswith(prefix)
        )
        return ", ".join(f"{name} {n}" for name, n in found)

    def lines(self) -> list[str]:
        out = [f"seed: {self.seed}"]
        for prefix, title in [
            ("plan/", "malformed plan documents"),
            ("config/", "bad configuration"),
        ]:
            out.append(f"{title}: {self.count(prefix)} ({self._breakdown(prefix)})")
        if self.count("extreme/"):
            out.append(f"extreme inputs: {self.count('extreme/')} ({self._breakdown('extreme/')})")
        out += [
            f"cases: {self.cases} in-process; {self.children} of them also as child processes",
            f"failures: {len(self.failures)}",
            f"time: {self.seconds:.1f} s (slowest case {self.slowest[0]:.2f} s: {self.slowest[1]})",
        ]
        for failure in self.failures[:10]:
            out.append(f"FAILED ({failure.mode}) {failure.case.describe()}")
            out += [f"    - {problem}" for problem in failure.problems]
            out.append(f"    exit code {failure.outcome.code!r}, stderr:")
            out.append(f"    {failure.outcome.stderr[-1500:]!r}")
            if failure.outcome.crash:
                out.append(f"    {failure.outcome.crash[-3000:]}")
        return out


# --------------------------------------------------------------------------- running one case


def environment(case: Case) -> dict[str, str]:
    """No inherited ENGINE_* (the store and data folder are the case folder's defaults), a fixed
    terminal width, tests/ importable (`stepkit`), then the case's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env.update(COLUMNS="100", LINES="40")
    env.update(case.env)
    return env


def materialize(case: Case, folder: Path) -> set[str]:
    """Create `folder` with the case's files; what is in it before the engine runs."""
    folder.mkdir(parents=True)
    for name in case.folders:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for name, data in case.files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return _snapshot(folder)


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


class _Hang(BaseException):
    """Raised by the watchdog's alarm in the middle of whatever the engine was doing."""


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds`; then puts back the alarm set before, if any (pytest-timeout's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, fire)
    earlier, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if earlier:
            signal.setitimer(signal.ITIMER_REAL, max(earlier - (time.monotonic() - start), 1e-3))


def run_in_process(case: Case, folder: Path, deadline: float) -> Outcome:
    """`engine.cli.main(argv)` in this process, in `folder`, with the case's environment."""
    before = materialize(case, folder)
    env = environment(case)
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    code: int | str | None = None
    crash = None
    start = time.monotonic()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(folder)
        with _watchdog(deadline), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(case.argv))
    except SystemExit as exc:
        code = exc.code
    except _Hang:
        code = "hang"
    except BaseException as exc:  # anything else escaping main() is what this suite looks for
        crash, code = "".join(traceback.format_exception(exc)), "exception"
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    seconds = time.monotonic() - start
    return _outcome(folder, before, code, out.getvalue(), err.getvalue(), seconds, crash)


def run_in_child(case: Case, folder: Path, deadline: float) -> Outcome:
    """The same case as a real `python -m engine` process."""
    before = materialize(case, folder)
    start = time.monotonic()
    code: int | str | None
    try:
        proc = run_engine(*case.argv, cwd=folder, env=environment(case), timeout=deadline)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stdout, stderr = "hang", _text(exc.stdout), _text(exc.stderr)
    seconds = time.monotonic() - start
    return _outcome(folder, before, code, stdout, stderr, seconds, None)


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _outcome(
    folder: Path,
    before: set[str],
    code: int | str | None,
    stdout: str,
    stderr: str,
    seconds: float,
    crash: str | None,
) -> Outcome:
    outcome = Outcome(code, stdout, stderr, seconds, sorted(_snapshot(folder) - before), 0, crash)
    database = folder / ".engine" / "engine.db"
    if database.exists():
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if "engine_runs" in tables:  # (no schema yet: nothing recorded)
                outcome.runs_recorded = db.execute("SELECT COUNT(*) FROM engine_runs").fetchone()[0]
    return outcome


LEAKS = ["Traceback", "Input should", "validation error for", "errors.pydantic.dev"]


def problems_of(case: Case, outcome: Outcome, deadline: float) -> list[str]:
    """Everything wrong with how the engine took a bad input (nothing, if all is well)."""
    found: list[str] = []
    if outcome.crash is not None:
        found.append(f"an exception escaped main(): {outcome.crash.strip().splitlines()[-1]}")
    if outcome.code == "hang" or outcome.seconds > deadline:
        found.append(f"no exit within {deadline:g} s (took {outcome.seconds:.1f} s)")
    elif outcome.code != 2:
        found.append(f"exit code {outcome.code!r}, expected 2")
    found += [
        f"output contains {leak!r}" for leak in LEAKS if leak in outcome.stdout + outcome.stderr
    ]
    lines = outcome.stderr.splitlines()
    if not any(line.startswith("error: ") and len(line) > 10 for line in lines):
        found.append("no 'error: ...' message on stderr")
    found += [f"the message does not name {s!r}" for s in case.expect if s not in outcome.stderr]
    if any(len(line) > 1000 for line in lines):
        found.append(f"a message line of {max(len(line) for line in lines)} characters")
    if outcome.stdout.strip():
        found.append(f"printed to stdout: {outcome.stdout[:200]!r}")
    if MARKER in outcome.created:
        found.append("a step ran: the marker file was created")
    allowed = {MARKER} | ({".engine", ".engine/engine.db"} if case.store_opens else set())
    if created := [name for name in outcome.created if name not in allowed]:
        found.append(f"files were written: {created[:5]}")
    if outcome.runs_recorded:
        found.append(f"{outcome.runs_recorded} run(s) recorded in the store")
    return found


# --------------------------------------------------------------------------- the suite


def generate(strategy: st.SearchStrategy[Case], count: int, seed: int) -> list[Case]:
    """Up to `count` distinct cases drawn by hypothesis (fewer if the strategy has no more)."""
    found: dict[Case, None] = {}
    idle = 0
    for attempt in range(10):
        before = len(found)

        @settings(
            max_examples=max(count - len(found), 10),  # (a round starts with a simple case)
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis_seed(seed + attempt)
        @given(strategy)
        def collect(case: Case) -> None:
            found.setdefault(case, None)

        collect()
        idle = idle + 1 if len(found) == before else 0
        if len(found) >= count or idle == 2:  # nothing new twice: the strategy has no more
            break
    return list(found)[:count]


def all_cases(plans: int, configs: int, seed: int) -> list[Case]:
    """`plans` plan documents and about `configs` bad configurations, every kind equally."""
    cases: list[Case] = []
    for kinds, total, strategy in [
        (PLAN_KINDS, plans, plan_cases),
        (CONFIG_KINDS, configs, config_cases),
    ]:
        made: list[Case] = []
        for kind in kinds:  # a kind with fewer distinct cases leaves its share to the rest
            share = math.ceil((total - len(made)) / (len(kinds) - kinds.index(kind)))
            made += generate(strategy(kind), share, seed)
        cases += made
    return cases


def run_suite(
    *,
    plans: int,
    configs: int,
    children: int,
    seed: int,
    extremes: bool = False,
    deadline: float = 30.0,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Generate the cases, run each in-process and a sample as child processes: the report."""
    started = time.monotonic()
    report = Report(seed=seed)
    cases = all_cases(plans, configs, seed) + (extreme_cases() if extremes else [])
    if progress:
        progress(f"generated {len(cases)} cases in {time.monotonic() - started:.1f} s")
    step = max(len(cases) // children, 1) if children else 0
    with tempfile.TemporaryDirectory(prefix="engine-fuzz-") as root:
        for index, case in enumerate(cases):
            folder = Path(root) / f"{index:05d}"
            outcome = run_in_process(case, folder, deadline)
            report.counts[case.category] += 1
            if outcome.seconds > report.slowest[0]:
                report.slowest = (outcome.seconds, f"{case.category} ({case.note[:50]})")
            if problems := problems_of(case, outcome, deadline):
                report.failures.append(Failure(case, "in-process", problems, outcome))
            if step and index % step == 0 and report.children < children:
                report.children += 1
                _in_child(case, outcome, folder, deadline, report)
            shutil.rmtree(folder, ignore_errors=True)
            if progress and (index + 1) % 250 == 0:
                progress(f"{index + 1} cases run, {len(report.failures)} failures")
    report.seconds = time.monotonic() - started
    return report


def _in_child(
    case: Case, in_process: Outcome, folder: Path, deadline: float, report: Report
) -> None:
    """The case again as a child process: the same checks, and the same code and message (but
    for the folder's name, in a message that names a file by its absolute path)."""
    child_folder = folder.with_name(f"{folder.name}-child")
    outcome = run_in_child(case, child_folder, deadline * 2)
    problems = problems_of(case, outcome, deadline * 2)
    message = outcome.stderr.replace(str(child_folder), str(folder))
    if (outcome.code, message) != (in_process.code, in_process.stderr):
        shown = in_process.stderr[-300:]
        problems.append(f"in-process gave exit {in_process.code!r} and stderr {shown!r}")
    if problems:
        report.failures.append(Failure(case, "child", problems, outcome))
    shutil.rmtree(child_folder, ignore_errors=True)


def new_seed() -> int:
    return random.SystemRandom().randrange(1 << 32)
