"""The orphan scenarios (issue 7): a random plan of nested groups of long-running `run` steps,
ended one of six ways, then a search for any process of the run still alive.

Used by `tests/reliability/orphans.py` (100 random runs) and `tests/test_reliability_orphans.py`
(one run of each ending, in `make test`). Everything here is driven from outside, through
`python -m engine` in real processes, as a user would.

Each step records its pids in `pids/<step>` when it starts (the shell, which leads the step's
process group, then its background child); long steps also leave a grandchild whose parent has
already exited (`(sleep 600 &)`), so it is reparented at once and only a kill of the whole
process group reaches it. Some steps ignore SIGTERM (`trap '' TERM`, which their children
inherit), so only the SIGKILL after the kill grace ends them. Every step carries a token in its
environment (the plan's `env`): a process found with it after the end is an orphan too, even one
whose step never got as far as recording its pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clitools import engine_env, pid_alive, run_engine, start_engine

#: The ways a run is ended, each with the exit code SPEC.md documents for it.
EXIT_CODES = {
    "fail_fast": 1,
    "subplan_timeout": 1,
    "plan_timeout": 1,
    "sigint": 130,
    "sigterm": 143,
    "job_cancel": 0,  # `jobs cancel` itself; the job must then be recorded `cancelled`
}
ENDINGS = tuple(EXIT_CODES)

KILL_GRACE = 0.3
#: Seconds a `timeout` (subplan or plan) gives the run: its steps start well within it.
TIMEOUT = 2.0
#: Steps of one plan, at most (each is three or four processes).
MAX_STEPS = 9
#: Bounds on what the engine may take; past them the case is reported as hung.
START_DEADLINE = 30.0
END_DEADLINE = 30.0
#: The engine has already sent SIGKILL before it returns; this is for the kernel to finish it.
DEATH_DEADLINE = 3.0

WORKER_ENV = {
    "ENGINE_ASYNC_HEARTBEAT_INTERVAL": "0.1",
    "ENGINE_ASYNC_POLL_INTERVAL": "0.1",
    "ENGINE_ASYNC_STUCK_AFTER": "30",
}


@dataclass(eq=False)
class Node:
    """A subplan of the generated plan: a group, or a step of one of four kinds.

    `long` runs until killed; `leaver` exits at once leaving a grandchild behind (the engine
    must kill it when the step completes); `trigger` fails once told to (fail-fast); `blocked`
    needs a long sibling, so it must never run.
    """

    name: str
    kind: str  # group | long | leaver | trigger | blocked (| escaper: see `control`)
    children: list[Node] = field(default_factory=list)
    max_parallel: int | None = None
    failure_mode: str | None = None
    timeout: float | None = None
    retries: int = 0
    needs: list[str] = field(default_factory=list)
    stubborn: bool = False

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Scenario:
    ending: str
    root: Node  # the plan itself: its children are the top-level subplans
    folder: Path
    #: When the ending is triggered: once every step that should run has recorded its pids
    #: ("all"); as soon as one has ("first": others may still be starting); or as soon as the
    #: engine reports a subplan running ("spawning": processes are being started; for
    #: fail_fast, the trigger fails at once).
    moment: str = "all"
    #: sigint/sigterm: a second signal sent right after the first (a user pressing Ctrl-C
    #: twice, a supervisor insisting); the exit code stays the first one's.
    second_signal: signal.Signals | None = None
    #: Seconds between the two signals: 0, or long enough to land during the kill grace.
    second_delay: float = 0.0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def exit_codes(self) -> list[int]:
        """The exit codes the ending allows. A second signal during the cleanup is ignored,
        but two different signals sent together may be handled in either order (the kernel
        runs the handler of the higher-numbered one first), and a second signal that lands
        once the cleanup is over meets the default handlers, which end the process by that
        signal (a shell reports -15 as 143, too): its processes are gone by then either way,
        which is what the search checks."""
        codes = [EXIT_CODES[self.ending]]
        if self.second_signal is not None:
            codes += [128 + self.second_signal, -self.second_signal]
        return list(dict.fromkeys(codes))

    @property
    def pids_dir(self) -> Path:
        return self.folder / "pids"

    @property
    def go(self) -> Path:
        return self.folder / "go"

    def plan_data(self) -> dict[str, object]:
        data: dict[str, object] = {"name": "orphans", "env": {"ORPHAN_TOKEN": self.token}}
        for key, value in self._options(self.root).items():
            data[key] = value
        data["subplans"] = [self._subplan(child) for child in self.root.children]
        return data

    def write(self) -> Path:
        self.pids_dir.mkdir(parents=True, exist_ok=True)
        path = self.folder / "plan.yaml"
        path.write_text(json.dumps(self.plan_data(), indent=1))  # JSON is YAML
        return path

    def started_steps(self) -> list[Node]:
        """The steps that run until the ending: in each started group, the first
        `max_parallel` children that need nothing (steps never complete, except a leaver,
        which is always last)."""
        found: list[Node] = []

        def visit(group: Node, inherited: int) -> None:
            limit = group.max_parallel or inherited
            eligible = [c for c in group.children if not c.needs]
            for child in eligible[:limit]:
                if child.kind == "group":
                    visit(child, limit)
                else:
                    found.append(child)

        visit(self.root, 4)
        return found

    def _options(self, node: Node) -> dict[str, object]:
        options: dict[str, object] = {}
        if node.max_parallel is not None:
            options["max_parallel"] = node.max_parallel
        if node.failure_mode is not None:
            options["failure_mode"] = node.failure_mode
        if node.timeout is not None:
            options["timeout"] = node.timeout
        return options

    def _subplan(self, node: Node) -> dict[str, object]:
        data: dict[str, object] = {"name": node.name, **self._options(node)}
        if node.needs:
            data["needs"] = node.needs
        if node.kind == "group":
            data["subplans"] = [self._subplan(child) for child in node.children]
            return data
        if node.retries:
            data["retries"] = node.retries
        data["run"] = self._command(node)
        return data

    def _command(self, node: Node) -> str:
        pids = shlex.quote(str(self.pids_dir / node.name))
        grandchild = shlex.quote(str(self.pids_dir / f"{node.name}.grandchild"))
        if node.kind == "long":
            trap = "trap '' TERM; " if node.stubborn else ""
            return (
                f"{trap}(sleep 600 & echo $! > {grandchild}); "
                f"sleep 600 & echo $$ $! >> {pids}; wait"
            )
        if node.kind == "leaver":
            return f"(sleep 600 & echo $! > {grandchild}); echo $$ >> {pids}"
        if node.kind == "trigger":
            go = shlex.quote(str(self.go))
            return f"echo $$ >> {pids}; while [ ! -e {go} ]; do sleep 0.05; done; exit 1"
        if node.kind == "escaper":
            # Harness self-check only: two children leave the step's process group (setsid),
            # where no group kill reaches; once both are out, the step records itself and the
            # first; the second can only be found by its token.
            first, second = (shlex.quote(str(self.folder / f"escapee{i}")) for i in (1, 2))
            return (
                f"setsid sh -c 'echo $$ > {first}; exec sleep 600' & "
                f"setsid sh -c 'echo $$ > {second}; exec sleep 600' & "
                f"while [ ! -s {first} ] || [ ! -s {second} ]; do sleep 0.01; done; "
                f"echo $$ $(cat {first}) >> {pids}; wait"
            )
        return f"echo $$ >> {pids}; sleep 600"  # blocked: must never run


def generate(rng: random.Random, ending: str, folder: Path, timeout: float = TIMEOUT) -> Scenario:
    """A random plan for `ending`: nested groups (up to three levels) of long steps, with
    random caps and failure modes, some stubborn steps, blocked and leaver steps."""
    counter = iter(range(1, 1000))
    steps = 0

    def step(
        kind: str, *, stubborn: bool = False, retries: int = 0, needs: list[str] | None = None
    ) -> Node:
        return Node(
            f"s{next(counter)}", kind, retries=retries, needs=needs or [], stubborn=stubborn
        )

    def fill(group: Node, depth: int, inherited: int) -> None:
        nonlocal steps
        limit = group.max_parallel or inherited
        for _ in range(rng.randint(2, 3) if depth == 0 else rng.randint(1, 3)):
            if depth < 3 and steps < MAX_STEPS - 2 and rng.random() < 0.4:
                sub = Node(
                    f"g{next(counter)}",
                    "group",
                    max_parallel=rng.choice([None, None, 1, 2, 3]),
                    failure_mode=rng.choice([None, "fail_fast", "continue_on_error"]),
                )
                group.children.append(sub)
                fill(sub, depth + 1, limit)
            elif steps < MAX_STEPS or not group.children:
                steps += 1
                group.children.append(
                    step("long", stubborn=rng.random() < 0.3, retries=rng.choice([0, 0, 1]))
                )
        longs = [c.name for c in group.children if c.kind == "long"]
        if longs and rng.random() < 0.25:
            group.children.append(step("blocked", needs=[rng.choice(longs)]))
        eligible = sum(1 for c in group.children if not c.needs)
        if rng.random() < 0.25 and eligible < limit:
            group.children.append(step("leaver"))

    root = Node(
        "",
        "group",
        max_parallel=rng.choice([None, None, 2, 3, 4, 6]),
        failure_mode=rng.choice([None, "fail_fast", "continue_on_error"]),
    )
    fill(root, 0, 4)
    scenario = Scenario(ending, root, folder)
    parents = {id(c): n for n in root.walk() for c in n.children}

    def fail_fast_above(node: Node) -> None:
        """A failure of `node` must reach the top: every group above it is fail_fast."""
        while id(node) in parents:
            node = parents[id(node)]
            node.failure_mode = "fail_fast" if node is not root else rng.choice([None, "fail_fast"])

    started = scenario.started_steps()
    if ending == "fail_fast":
        started_groups = [root] + [
            n for n in root.walk() if n.kind == "group" and _contains_started(n, started)
        ]
        home = rng.choice(started_groups)
        trigger = step("trigger", retries=rng.choice([0, 1]))
        home.children.insert(0, trigger)
        parents[id(trigger)] = home
        fail_fast_above(trigger)
    elif ending == "subplan_timeout":
        candidates = [
            n
            for n in root.walk()
            if (n.kind == "long" and n in started)
            or (n.kind == "group" and n is not root and _contains_started(n, started))
        ]
        target = rng.choice(candidates)
        target.timeout = timeout
        target.retries = 0
        fail_fast_above(target)
    elif ending == "plan_timeout":
        root.timeout = timeout
    if ending in ("sigint", "sigterm", "fail_fast"):
        scenario.moment = rng.choices(["all", "first", "spawning"], [2, 1, 1])[0]
    elif ending == "job_cancel":
        scenario.moment = rng.choices(["all", "first"], [2, 1])[0]
    if ending in ("sigint", "sigterm") and rng.random() < 0.3:
        scenario.second_signal = rng.choice([signal.SIGINT, signal.SIGTERM])
        scenario.second_delay = rng.choice([0.0, KILL_GRACE / 3])
    return scenario


def control(folder: Path) -> Scenario:
    """A plan whose step leaves its process group: the search must find its two escapees
    (proof that a count of 0 elsewhere means something)."""
    root = Node("", "group", children=[Node("s1", "long"), Node("s2", "escaper")])
    return Scenario("sigint", root, folder)


def _contains_started(group: Node, started: list[Node]) -> bool:
    return any(n in started for n in group.walk() if n is not group)


# --- processes ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        cmdline = b"?"
    stat = _stat(pid)
    where = f"group {stat[2]}, parent {stat[1]}" if stat else "gone"
    return f"pid {pid} ({cmdline.decode(errors='replace')}; {where})"


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is alive (zombies count as dead)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return bool(_members({pgid}))


def _members(pgids: set[int]) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z" and stat[2] in pgids:
                found.add(int(entry))
    return found


def _carrying(token: str) -> set[int]:
    """Live processes whose environment holds the run's token."""
    needle = f"ORPHAN_TOKEN={token}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z":
                found.add(int(entry))
    return found


@dataclass
class Recorded:
    """What the steps wrote: every pid, and every leader (= its process group)."""

    pids: set[int] = field(default_factory=set)
    leaders: set[int] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)


def read_recorded(scenario: Scenario) -> Recorded:
    recorded = Recorded()
    for path in scenario.pids_dir.iterdir():
        text = path.read_text()
        if not text.endswith("\n"):
            continue  # being written; its processes carry the token anyway
        numbers = [int(word) for word in text.split()]
        recorded.pids.update(numbers)
        if path.suffix != ".grandchild":
            recorded.ran.add(path.name)
            recorded.leaders.update(int(line.split()[0]) for line in text.splitlines() if line)
    return recorded


def survivors(scenario: Scenario, recorded: Recorded) -> set[int]:
    alive = {pid for pid in recorded.pids if pid_alive(pid)}
    groups = {pgid for pgid in recorded.leaders if group_alive(pgid)}
    return alive | _members(groups) | _carrying(scenario.token)


def check_groups(scenario: Scenario, outcome: Outcome) -> None:
    """Every step leader still alive leads a process group of its own."""
    for pgid in read_recorded(scenario).leaders:
        stat = _stat(pgid)
        if stat is not None and stat[0] != "Z" and stat[2] != pgid:
            outcome.problems.append(f"step leader {pgid} is in group {stat[2]}, not its own")


def _ready(scenario: Scenario, started: list[Node]) -> bool:
    recorded = [_has_started(scenario, node) for node in started]
    return any(recorded) if scenario.moment == "first" else all(recorded)


def _has_started(scenario: Scenario, node: Node) -> bool:
    pids = scenario.pids_dir / node.name
    try:
        return pids.read_text().endswith("\n")
    except FileNotFoundError:
        return False


# --- one case ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    ending: str
    seed: str
    exit_code: int | None = None
    orphans: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    moment: str = "all"
    second_signal: bool = False
    #: A timeout fired before every step that should run had recorded its pids.
    early: bool = False
    steps: int = 0
    processes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.orphans and not self.problems

    def report(self) -> str:
        lines = [f"{self.ending} (seed {self.seed}): exit {self.exit_code}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  orphan: {o}" for o in self.orphans]
        return "\n".join(lines)


def run_case(folder: Path, ending: str, seed: str, timeout: float = TIMEOUT) -> Outcome:
    """Generate a plan for `ending` from `seed`, run it, end it, look for survivors."""
    return run_scenario(generate(random.Random(seed), ending, folder, timeout), seed)


def run_scenario(scenario: Scenario, seed: str, death_deadline: float = DEATH_DEADLINE) -> Outcome:
    """Run the scenario's plan, end it its way, look for survivors (allowing them
    `death_deadline` seconds to die); kill whatever is left."""
    began = time.monotonic()
    ending = scenario.ending
    plan = scenario.write()
    outcome = Outcome(
        ending, seed, moment=scenario.moment, second_signal=scenario.second_signal is not None
    )
    started = scenario.started_steps()
    outcome.steps = len(started)
    env = engine_env(scenario.folder, {"ENGINE_KILL_GRACE": str(KILL_GRACE), **WORKER_ENV})
    procs: list[subprocess.Popen[str]] = []
    try:
        if ending == "job_cancel":
            _end_by_job_cancel(scenario, plan, env, started, outcome, procs)
        else:
            _end_a_run(scenario, plan, env, started, outcome, procs)
        recorded = read_recorded(scenario)
        outcome.processes = len(recorded.pids)
        blocked = {n.name for n in scenario.root.walk() if n.kind == "blocked"}
        if ran := blocked & recorded.ran:
            outcome.problems.append(f"steps whose needs never completed ran: {sorted(ran)}")
        deadline = time.monotonic() + death_deadline
        while (alive := survivors(scenario, recorded)) and time.monotonic() < deadline:
            time.sleep(0.05)
        outcome.orphans = [_describe(pid) for pid in sorted(alive)]
    finally:
        _clean_up(scenario, procs)
    outcome.seconds = time.monotonic() - began
    return outcome


def _end_a_run(
    scenario: Scenario,
    plan: Path,
    env: dict[str, str],
    started: list[Node],
    outcome: Outcome,
    procs: list[subprocess.Popen[str]],
) -> None:
    spawning = scenario.moment == "spawning"
    if spawning and scenario.ending == "fail_fast":
        scenario.go.touch()  # the trigger fails as soon as it runs, its siblings starting
    events = scenario.folder / "events.jsonl"
    proc = start_engine("run", str(plan), "--events", str(events), cwd=scenario.folder, env=env)
    procs.append(proc)
    if spawning:
        came = _wait(lambda: _running(events) or proc.poll() is not None, START_DEADLINE, 0.001)
    else:
        came = _wait(lambda: _ready(scenario, started) or proc.poll() is not None, START_DEADLINE)
    if not came:
        outcome.problems.append(f"steps did not start within {START_DEADLINE:g}s")
        return
    if proc.poll() is not None and not spawning and not _ready(scenario, started):
        if scenario.ending.endswith("timeout"):
            outcome.early = True
        else:
            outcome.problems.append("the engine ended before its steps had started")
    if not spawning:
        check_groups(scenario, outcome)
    if scenario.ending == "fail_fast":
        scenario.go.touch()
    elif scenario.ending in ("sigint", "sigterm"):
        proc.send_signal(signal.SIGINT if scenario.ending == "sigint" else signal.SIGTERM)
        if scenario.second_signal is not None:
            if scenario.second_delay:
                time.sleep(scenario.second_delay)  # a moment, not a state: any is right
            proc.send_signal(scenario.second_signal)
    try:
        out, err = proc.communicate(timeout=END_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        outcome.problems.append(
            f"hang: the engine did not exit within {END_DEADLINE:g}s\n{out[-2000:]}\n{err[-2000:]}"
        )
        return
    outcome.exit_code = proc.returncode
    if proc.returncode not in (expected := scenario.exit_codes()):
        outcome.problems.append(
            f"exit code {proc.returncode}, expected {' or '.join(map(str, expected))}\n"
            f"{out[-2000:]}\n{err[-2000:]}"
        )
    if "Traceback" in err:
        outcome.problems.append(f"a traceback:\n{err[-2000:]}")


def _end_by_job_cancel(
    scenario: Scenario,
    plan: Path,
    env: dict[str, str],
    started: list[Node],
    outcome: Outcome,
    procs: list[subprocess.Popen[str]],
) -> None:
    worker = start_engine("worker", "--quiet", cwd=scenario.folder, env=env)
    procs.append(worker)
    submitted = run_engine("submit", str(plan), cwd=scenario.folder, env=env)
    if submitted.returncode != 0:
        outcome.problems.append(f"submit failed: {submitted.stderr}")
        return
    job_id = submitted.stdout.strip()
    if not _wait(lambda: _ready(scenario, started) or worker.poll() is not None, START_DEADLINE):
        outcome.problems.append(f"the job's steps did not start within {START_DEADLINE:g}s")
        return
    if worker.poll() is not None:
        outcome.problems.append(f"the worker exited ({worker.returncode}) before the steps ran")
        return
    check_groups(scenario, outcome)
    cancelled = run_engine("jobs", "cancel", job_id, cwd=scenario.folder, env=env)
    outcome.exit_code = cancelled.returncode
    if cancelled.returncode != 0:
        outcome.problems.append(f"jobs cancel exited {cancelled.returncode}: {cancelled.stderr}")
    db = scenario.folder / "engine.db"
    if not _wait(lambda: _job_status(db, job_id) == "cancelled", END_DEADLINE):
        outcome.problems.append(
            f"hang: job still {_job_status(db, job_id)} {END_DEADLINE:g}s after `jobs cancel`"
        )
        return
    worker.send_signal(signal.SIGTERM)
    try:
        _, err = worker.communicate(timeout=END_DEADLINE)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, err = worker.communicate()
        outcome.problems.append(f"hang: the worker did not stop after SIGTERM:\n{err[-2000:]}")
        return
    if worker.returncode != 0:
        outcome.problems.append(f"the worker exited {worker.returncode}:\n{err[-2000:]}")


def _job_status(db: Path, job_id: str) -> str | None:
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
            row = conn.execute("SELECT status FROM engine_jobs WHERE id = ?", (job_id,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll a state outside this process with a deadline; whether it came."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _running(events: Path) -> bool:
    """Whether the engine has reported a subplan running (`--events`): its first processes
    are being started."""
    try:
        lines = events.read_text().splitlines()
    except FileNotFoundError:
        return False
    return any('"subplan.state"' in line and '"to":"running"' in line for line in lines)


def _clean_up(scenario: Scenario, procs: list[subprocess.Popen[str]]) -> None:
    """Leave nothing behind, whatever happened: engines, workers, every step's group."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=10)
    if scenario.pids_dir.exists():
        recorded = read_recorded(scenario)
        for pgid in recorded.leaders:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    for pid in _carrying(scenario.token):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
