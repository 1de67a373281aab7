"""`MemoryStore`: the store port in plain dictionaries, at the domain level.

The API's default (`Engine()` without a database URL) and the fast store of tests. It follows the
same contract as the SQL store (tests/test_store_contract.py): a batch is checked whole before
any of it is applied, so a bad batch changes nothing. It never does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import overload

from engine.domain.events import Event
from engine.domain.lock import LockKind
from engine.domain.states import (
    TERMINAL_RUN_STATES,
    TERMINAL_SUBPLAN_STATES,
    RunState,
    SubplanState,
)
from engine.errors import StoreError
from engine.ports.store import LOST_RUN_ERROR, Changes, RunRecord, SubplanRecord
from engine.store.memory_jobs import MemoryJobs
from engine.store.memory_locks import MemoryLocks


@dataclass(slots=True)
class _StoredRun:
    record: RunRecord
    plan_json: str
    subplans: dict[str, SubplanRecord]
    events: list[Event] = field(default_factory=list)


class MemoryStore(MemoryLocks, MemoryJobs):
    """Runs, locks and jobs kept in this process only; gone when it exits."""

    def __init__(self) -> None:
        super().__init__()
        MemoryJobs.__init__(self)
        self._runs: dict[str, _StoredRun] = {}
        self._orphan_events: list[Event] = []

    @property
    def location(self) -> str:
        return "memory"

    async def abandon_lost_runs(self, now: datetime, created_before: datetime) -> list[str]:
        now, created_before = _utc(now), _utc(created_before)
        live = {
            lock.run_id
            for lock in self._locks.values()
            if lock.resource.kind is LockKind.PLAN and lock.expires_at > now
        }
        lost: list[str] = []
        for run_id, stored in self._runs.items():
            run = stored.record
            if (
                run.state in TERMINAL_RUN_STATES
                or run.created_at >= created_before
                or run_id in live
            ):
                continue
            stored.record = replace(
                run,
                state=RunState.FAILED,
                finished_at=now,
                duration=None,  # unknown: when it really stopped was not recorded
                error=LOST_RUN_ERROR,
            )
            for path, sub in stored.subplans.items():
                if sub.state not in TERMINAL_SUBPLAN_STATES:
                    stored.subplans[path] = replace(
                        sub, state=SubplanState.CANCELLED, finished_at=now, error=LOST_RUN_ERROR
                    )
            lost.append(run_id)
        return lost

    async def write(self, changes: Changes) -> None:
        self._check(changes)
        for new in changes.created:
            run = replace(
                new.run,
                created_at=_utc(new.run.created_at),
                started_at=_utc(new.run.started_at),
                finished_at=_utc(new.run.finished_at),
            )
            self._runs[run.id] = _StoredRun(
                run, new.plan_json, {s.path: _subplan_utc(s) for s in new.subplans}
            )
        for sub in changes.added:
            self._runs[sub.run_id].subplans[sub.path] = _subplan_utc(sub)
        for run in changes.runs:
            stored = self._runs[run.id]
            stored.record = replace(
                stored.record,
                state=run.state,
                started_at=_utc(run.started_at),
                finished_at=_utc(run.finished_at),
                duration=run.duration,
                error=run.error,
            )
        for sub in changes.subplans:
            subplans = self._runs[sub.run_id].subplans
            # Identity and place are fixed at creation; only the state part is an update.
            subplans[sub.path] = replace(
                subplans[sub.path],
                state=sub.state,
                attempts=sub.attempts,
                started_at=_utc(sub.started_at),
                finished_at=_utc(sub.finished_at),
                duration=sub.duration,
                error=sub.error,
                output_tail=sub.output_tail,
                log_path=sub.log_path,
            )
        for event in changes.events:
            if event.run_id is None:
                self._orphan_events.append(event)
            else:
                self._runs[event.run_id].events.append(event)
        for release in changes.releases:
            release.left = self._release(release.resource, release.owner_id)
            release.written = True

    def _check(self, changes: Changes) -> None:
        """Everything the SQL store's keys and constraints would reject, before any change."""
        # Subplan paths of the runs this batch creates or adds to, as they will be after it.
        paths: dict[str, set[str]] = {}
        for new in changes.created:
            run = new.run
            if run.id in self._runs or run.id in paths:
                raise StoreError(f"cannot create run {run.id}: it exists already")
            if run.resumed_from is not None and not self._knows(run.resumed_from, paths):
                raise StoreError(f"run {run.id} resumes unknown run {run.resumed_from}")
            if any(s.run_id != run.id for s in new.subplans):
                raise StoreError(f"cannot create run {run.id}: a subplan names another run")
            paths[run.id] = set()
            self._add_paths(paths[run.id], new.subplans)
        for sub in changes.added:
            if sub.run_id not in paths:
                if sub.run_id not in self._runs:
                    raise StoreError(f"cannot add subplan {sub.path!r} to unknown run {sub.run_id}")
                paths[sub.run_id] = set(self._runs[sub.run_id].subplans)
            self._add_paths(paths[sub.run_id], [sub])
        for run in changes.runs:
            if not self._knows(run.id, paths):
                raise StoreError(f"cannot update run {run.id}: no such run")
        for sub in changes.subplans:
            if sub.run_id in paths:
                known = sub.path in paths[sub.run_id]
            else:
                stored = self._runs.get(sub.run_id)
                known = stored is not None and sub.path in stored.subplans
            if not known:
                raise StoreError(f"cannot update subplan {sub.path!r} of run {sub.run_id}: unknown")
        for event in changes.events:
            if event.run_id is not None and not self._knows(event.run_id, paths):
                raise StoreError(f"cannot record an event of unknown run {event.run_id}")

    def _knows(self, run_id: str, created: dict[str, set[str]]) -> bool:
        return run_id in self._runs or run_id in created

    @staticmethod
    def _add_paths(paths: set[str], subplans: Sequence[SubplanRecord]) -> None:
        for sub in subplans:
            if sub.path in paths:
                raise StoreError(f"subplan {sub.path!r} of run {sub.run_id} exists already")
            paths.add(sub.path)

    async def get_run(self, run_id: str) -> RunRecord | None:
        stored = self._runs.get(run_id)
        return stored.record if stored is not None else None

    async def get_plan(self, run_id: str) -> str | None:
        stored = self._runs.get(run_id)
        return stored.plan_json if stored is not None else None

    async def list_runs(self, *, limit: int | None = None) -> list[RunRecord]:
        records = sorted(
            (s.record for s in self._runs.values()),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        return records if limit is None else records[:limit]

    async def list_subplans(self, run_id: str) -> list[SubplanRecord]:
        stored = self._runs.get(run_id)
        if stored is None:
            return []
        return sorted(stored.subplans.values(), key=lambda s: s.position)

    async def list_events(self, run_id: str) -> list[Event]:
        stored = self._runs.get(run_id)
        if stored is None:
            return []
        return sorted(stored.events, key=lambda e: e.seq)

    async def close(self) -> None:
        return None


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: datetime | None) -> datetime | None:
    """Times come back in UTC from every store."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def _subplan_utc(sub: SubplanRecord) -> SubplanRecord:
    if sub.started_at is None and sub.finished_at is None:
        return sub
    return replace(sub, started_at=_utc(sub.started_at), finished_at=_utc(sub.finished_at))
