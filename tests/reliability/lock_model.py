"""Lock model check: random acquire / renew / release / expiry / purge / crash across several
processes, against a reference model. Never two holders.

Each agent is a process with its own store connection and a `LockService` over it, and two lock
owners; it reads commands as JSON lines and answers each. Time is logical: every command carries
the time its agent's clock is set to (a `ManualClock`), so expiry is exact. A round:

1. time may move on (0.5 to 2.5 s: TTLs are 1 to 5 s, so locks expire and are taken over);
2. one step each for two or more agents, all at the same time, sent at once and executed
   concurrently;
3. now and then an agent is SIGKILLed right after it was sent a step (which may or may not have
   been applied) while holding locks: they stay until their TTL runs out; a new agent replaces it;
4. the coordinator reads the lock table. Some order of the round's steps (with or without the
   killed agent's) must give, on the reference model, exactly the answers the agents got and
   exactly the table read; else it is a violation;
5. never two holders: at most one live owner believes (from its answers) it holds a resource
   unexpired, and that owner is the one in the table.

On one SQLite file, and on PostgreSQL when a server answers.

    python tests/reliability/lock_model.py [--rounds 1500] [--agents 4] [--only sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, run as a script

from engine import LockConflictError, LockExpiredError, LockService, Owner
from engine.ports.store import Store
from engine.store import open_store
from engine.testing import EPOCH, ManualClock
from reliability._suitekit import Report, finish, postgres_database, python_env, skipped

RESOURCES = ["resource:m0", "resource:m1"]
TTLS = [1.0, 2.5, 5.0]
ADVANCES = [0.5, 1.0, 2.5]
OWNERS_PER_AGENT = 2
#: (kind, weight) of the steps an agent is asked to make.
STEPS = [("acquire", 8), ("renew", 4), ("release", 5), ("release_all", 1), ("purge", 2)]

#: A lock as the model and the table hold it: owner, acquired, expires (seconds after EPOCH), depth.
Row = tuple[str, float, float, int]
State = dict[str, Row]


@dataclass(frozen=True)
class LockModelConfig:
    rounds: int = 1500
    agents: int = 4
    #: Probability that a round moves time on, and that it kills an agent.
    advance: float = 0.3
    crash: float = 0.01
    seed: int = 0


def seconds(at: datetime) -> float:
    return round((at - EPOCH).total_seconds(), 6)


def owner_of(name: str) -> Owner:
    return Owner(name, "model", 0)


# -- the agent (a process of its own) --------------------------------------------------------


async def serve(url: str) -> None:
    """Answer commands from stdin until it closes, one JSON line each."""
    store = await open_store(url)
    clock = ManualClock(EPOCH)
    locks = LockService(store, clock)
    print("ready", flush=True)
    try:
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            command = json.loads(line)
            late = command["t"] - clock.monotonic()
            if late > 0:
                clock.advance(late)
            try:
                answer = await perform(locks, command)
            except Exception as exc:
                answer = ["error", f"{type(exc).__name__}: {exc}"]
            print(json.dumps(answer), flush=True)
    finally:
        await store.close()


async def perform(locks: LockService, command: dict[str, Any]) -> list[Any]:
    kind, owner = command["kind"], owner_of(command.get("owner", "-"))
    resource = command.get("resource", "")
    if kind == "acquire":
        try:
            record = await locks.acquire(resource, owner, command["ttl"])
        except LockConflictError:
            return ["conflict"]
        return ["ok", record.depth, seconds(record.acquired_at), seconds(record.expires_at)]
    if kind == "renew":
        try:
            record = await locks.renew(resource, owner, command["ttl"])
        except LockExpiredError:
            return ["expired"]
        return ["ok", seconds(record.expires_at)]
    if kind == "release":
        return ["released", await locks.release(resource, owner)]
    if kind == "release_all":
        return ["released", sorted(str(r) for r in await locks.release_all_for_owner(owner))]
    if kind == "purge":
        return ["purged", await locks.cleanup_expired()]
    raise ValueError(f"unknown step {kind!r}")


# -- the reference model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    agent: str
    kind: str
    owner: str
    resource: str
    ttl: float
    t: float

    def command(self) -> dict[str, Any]:
        fields = {"kind": self.kind, "owner": self.owner, "resource": self.resource}
        return {**fields, "ttl": self.ttl, "t": self.t}


def apply(state: State, step: Step) -> list[Any]:
    """Make `step` on `state` (changed in place) the way the store must; the answer it gives."""
    now, held = step.t, state.get(step.resource)
    live = held is not None and held[2] > now
    if step.kind == "acquire":
        expires = now + step.ttl
        if held is None or not live:
            state[step.resource] = (step.owner, now, expires, 1)
        elif held[0] == step.owner:
            state[step.resource] = (step.owner, held[1], max(held[2], expires), held[3] + 1)
        else:
            return ["conflict"]
        row = state[step.resource]
        return ["ok", row[3], round(row[1], 6), round(row[2], 6)]
    if step.kind == "renew":
        if held is None or not live or held[0] != step.owner:
            return ["expired"]
        state[step.resource] = (held[0], held[1], now + step.ttl, held[3])
        return ["ok", round(now + step.ttl, 6)]
    if step.kind == "release":
        if held is None or held[0] != step.owner:
            return ["released", False]
        if held[3] == 1:
            del state[step.resource]
        else:
            state[step.resource] = (held[0], held[1], held[2], held[3] - 1)
        return ["released", True]
    if step.kind == "release_all":
        mine = sorted(r for r, row in state.items() if row[0] == step.owner)
        for resource in mine:
            del state[resource]
        return ["released", mine]
    if step.kind == "purge":
        gone = [r for r, row in state.items() if row[2] <= now]
        for resource in gone:
            del state[resource]
        return ["purged", len(gone)]
    raise ValueError(step.kind)


def explain(
    before: State, answered: Sequence[tuple[Step, list[Any]]], unknown: Sequence[Step], after: State
) -> bool:
    """Is there an order of the answered steps, and of any of the unknown ones (sent to agents
    that were killed), that gives every answer and ends in `after`?"""
    for size in range(len(unknown) + 1):
        for extra in itertools.combinations(unknown, size):
            steps: list[tuple[Step, list[Any] | None]] = [*answered, *((s, None) for s in extra)]
            if any(_gives(before, order, after) for order in itertools.permutations(steps)):
                return True
    return False


def _gives(before: State, order: Sequence[tuple[Step, list[Any] | None]], after: State) -> bool:
    state = dict(before)
    for step, answer in order:
        given = apply(state, step)
        if answer is not None and given != answer:
            return False
    return state == after


# -- the coordinator ---------------------------------------------------------------------------


@dataclass
class Agent:
    name: str
    process: Process
    lines: BufferedByteReceiveStream
    owners: list[str]

    async def send(self, step: Step) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(step.command()) + "\n").encode())

    async def receive(self) -> list[Any]:
        line = await self.lines.receive_until(b"\n", 1 << 20)
        answer: list[Any] = json.loads(line)
        return answer


@dataclass
class Coordinator:
    url: str
    config: LockModelConfig
    rng: random.Random
    report: Report
    agents: list[Agent] = field(default_factory=list)
    #: Owner -> resource -> (expires, depth), from the owner's own answers.
    beliefs: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    state: State = field(default_factory=dict)
    now: float = 0.0
    born: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: Where replacement agents are started (set by the caller).
    spares: TaskGroup = field(init=False)
    joining: int = 0
    joined: anyio.Event = field(default_factory=anyio.Event)

    def add_agent(self) -> None:
        """Start an agent; it takes part in the rounds from the moment it is up."""
        self.joining += 1
        self.spares.start_soon(self._join)

    async def _join(self) -> None:
        try:
            self.agents.append(await self.spawn())
        finally:
            self.joining -= 1
            joined, self.joined = self.joined, anyio.Event()
            joined.set()

    async def wait_for_agents(self, count: int) -> None:
        """Until `count` agents are up (or none is on its way)."""
        with anyio.fail_after(120):
            while len(self.agents) < count and self.joining:
                await self.joined.wait()

    async def spawn(self) -> Agent:
        self.born += 1
        name = f"a{self.born}"
        script = str(Path(__file__).resolve())
        process = await anyio.open_process(
            [sys.executable, script, "--agent", "--db", self.url],
            env=python_env(),
            stderr=None,
        )
        assert process.stdout is not None
        agent = Agent(
            name,
            process,
            BufferedByteReceiveStream(process.stdout),
            [f"{name}-{i}" for i in range(OWNERS_PER_AGENT)],
        )
        with anyio.fail_after(60):
            ready = await agent.lines.receive_until(b"\n", 1 << 10)
        assert ready == b"ready", ready
        for owner in agent.owners:
            self.beliefs[owner] = {}
        return agent

    def pick_step(self, agent: Agent) -> Step:
        kinds, weights = zip(*STEPS, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        owner = self.rng.choice(agent.owners)
        resource = self.rng.choice(RESOURCES)
        if kind == "release":  # mostly of something the owner holds
            held = sorted(self.beliefs[owner])
            if held and self.rng.random() < 0.7:
                resource = self.rng.choice(held)
        return Step(agent.name, kind, owner, resource, self.rng.choice(TTLS), self.now)

    async def round(self, store: Store) -> None:
        config = self.config
        if self.rng.random() < config.advance:
            self.now += self.rng.choice(ADVANCES)
        if not self.agents:
            await self.wait_for_agents(1)
        busy = self.rng.sample(
            self.agents, self.rng.randint(min(2, len(self.agents)), len(self.agents))
        )
        steps = [self.pick_step(agent) for agent in busy]
        for agent, step in zip(busy, steps, strict=True):
            await agent.send(step)
        racing = Counter(s.resource for s in steps if s.kind == "acquire")
        self.counts["races"] += sum(1 for n in racing.values() if n > 1)
        victim: Agent | None = None
        if self.rng.random() < config.crash:
            victim = self.rng.choice(busy)
            await anyio.sleep(self.rng.uniform(0, 0.01))  # the step may or may not be made
            victim.process.kill()
            await victim.process.wait()
            self.agents.remove(victim)
            self.counts["crashes"] += 1
            if any(row[0] in victim.owners and row[2] > self.now for row in self.state.values()):
                self.counts["crashes holding locks"] += 1
        answered: list[tuple[Step, list[Any]]] = []
        unknown: list[Step] = []
        for agent, step in zip(busy, steps, strict=True):
            if agent is victim:
                unknown.append(step)
                continue
            answer = await agent.receive()
            if answer[0] == "error":
                self.report.violate(f"{step}: {answer[1]}")
                continue
            answered.append((step, answer))
            self.counts["steps"] += 1
            self.counts[answer[0]] = self.counts.get(answer[0], 0) + 1
        after = {
            str(lock.resource): (
                lock.owner_id.split(":", 2)[2],
                seconds(lock.acquired_at),
                seconds(lock.expires_at),
                lock.depth,
            )
            for lock in await store.list_locks()
        }
        if not explain(self.state, answered, unknown, after):
            self.report.violate(
                f"no order of the steps explains the answers and the table at t={self.now}: "
                f"before {self.state}, steps {answered} (unknown: {unknown}), after {after}"
            )
        self.state = after
        self.believe(answered, victim)
        self.check_holders()
        if victim is not None:
            self.add_agent()

    def believe(self, answered: list[tuple[Step, list[Any]]], victim: Agent | None) -> None:
        """What each owner now believes it holds, from its own answers only."""
        for step, answer in answered:
            mine = self.beliefs[step.owner]
            if step.kind == "acquire" and answer[0] == "ok":
                mine[step.resource] = (answer[3], answer[1])
            elif step.kind == "renew":
                if answer[0] == "ok":
                    mine[step.resource] = (answer[1], mine.get(step.resource, (0.0, 1))[1])
                else:
                    mine.pop(step.resource, None)
            elif step.kind == "release" and step.resource in mine:
                expires, depth = mine[step.resource]
                if answer[1] and depth > 1:
                    mine[step.resource] = (expires, depth - 1)
                else:
                    mine.pop(step.resource)
            elif step.kind == "release_all":
                mine.clear()
        if victim is not None:  # the dead believe nothing
            for owner in victim.owners:
                del self.beliefs[owner]

    def check_holders(self) -> None:
        for resource in RESOURCES:
            believers = [
                owner
                for owner, held in self.beliefs.items()
                if resource in held and held[resource][0] > self.now
            ]
            if len(believers) > 1:
                self.counts["two holders"] += 1
                self.report.violate(f"{resource} at t={self.now}: held by {believers} at once")
            row = self.state.get(resource)
            if believers and (row is None or row[0] != believers[0] or row[2] <= self.now):
                self.report.violate(
                    f"{resource} at t={self.now}: {believers[0]} believes it holds it; "
                    f"the table says {row}"
                )

    async def close(self) -> None:
        await self.wait_for_agents(self.config.agents + self.counts["crashes"])
        for agent in self.agents:
            assert agent.process.stdin is not None
            await agent.process.stdin.aclose()
        with anyio.fail_after(30):
            for agent in self.agents:
                await agent.process.wait()


def run_lock_model(url: str, label: str, config: LockModelConfig) -> Report:
    """The model check on the (upgraded, lock-free) database at `url`."""
    return anyio.run(_lock_model, url, label, config)


async def _lock_model(url: str, label: str, config: LockModelConfig) -> Report:
    report = Report(f"lock model on {label}")
    rng = random.Random(config.seed)
    coordinator = Coordinator(url, config, rng, report)
    coordinator.counts.update(
        steps=0, crashes=0, races=0, **{"crashes holding locks": 0, "two holders": 0}
    )
    started = time.monotonic()
    store = await open_store(url)
    try:
        async with anyio.create_task_group() as spares:
            coordinator.spares = spares
            for _ in range(config.agents):
                coordinator.add_agent()
            await coordinator.wait_for_agents(config.agents)
            try:
                for _ in range(config.rounds):
                    await coordinator.round(store)
                    if len(report.violations) > 20:
                        break
            finally:
                await coordinator.close()
    finally:
        await store.close()
    counts = coordinator.counts
    report.figures.update(
        rounds=config.rounds,
        agents=config.agents,
        steps=counts["steps"],
        crashes=counts["crashes"],
    )
    report.figures["of them holding locks"] = counts["crashes holding locks"]
    report.figures["races for one lock"] = counts["races"]
    report.figures["acquired or renewed"] = counts.get("ok", 0)
    report.figures["conflicts"] = counts.get("conflict", 0)
    report.figures["expired"] = counts.get("expired", 0)
    report.figures["logical seconds"] = coordinator.now
    report.figures["two holders"] = counts["two holders"]
    report.figures["unexplained"] = len(report.violations) - counts["two holders"]
    report.figures["seconds"] = round(time.monotonic() - started, 1)
    if not report.ok:
        report.notes.append(f"seed {config.seed}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument("--agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        anyio.run(serve, args.db)
        return 0
    config = LockModelConfig(rounds=args.rounds, agents=args.agents, seed=args.seed)
    print(f"lock model: {args.rounds} rounds, {args.agents} agents, seed {args.seed}", flush=True)
    reports = []
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="lock-model-") as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'locks.db'}"
            anyio.run(_create, url)
            reports.append(run_lock_model(url, "SQLite", config))
            reports[-1].print()
    if args.only in (None, "postgresql"):
        with postgres_database("locks") as pg_url:
            if pg_url is None:
                reports.append(skipped("lock model on PostgreSQL", "no server"))
            else:
                reports.append(run_lock_model(pg_url, "PostgreSQL", config))
            reports[-1].print()
    return finish(reports)


async def _create(url: str) -> None:
    store = await open_store(url)
    await store.close()


if __name__ == "__main__":
    sys.exit(main())
