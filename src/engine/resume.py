"""Resuming a recorded run: which plan to run again, and which subplans to keep.

A plan is stored with every run as canonical JSON with its sha256. Resuming reruns the plan file
the run came from if it is unchanged, else the stored plan (and says so). Subplans that completed
in the earlier run are kept: the dispatcher treats them as done (`skip`), and the new run's
tracker starts with them completed. This module reads the store through the port only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from engine.dispatch.tracker import SubplanTracker
from engine.domain.job import CANONICAL_JSON
from engine.domain.plan import Plan
from engine.domain.states import RunState, SubplanState
from engine.errors import EngineError, InputError, RunNotFoundError
from engine.planfile import load_plan
from engine.ports.store import RunRecord, Store


@dataclass(frozen=True, slots=True)
class PlanSnapshot:
    """A plan as stored: canonical JSON (sorted keys, defaults left out) and its sha256."""

    json: str
    digest: str

    @classmethod
    def of(cls, plan: Plan) -> PlanSnapshot:
        data = plan.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        text = CANONICAL_JSON.encode(data)
        return cls(text, hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """What a new run takes over from `previous`."""

    previous: RunRecord
    plan: Plan
    #: Paths completed in `previous`: not run again, completed in the new run from the start.
    kept: frozenset[str]
    #: Things the user should know (the plan file changed, the run looks still alive, ...).
    notes: tuple[str, ...] = ()


async def resume_point(store: Store, run_id: str) -> ResumePoint:
    previous = await store.get_run(run_id)
    if previous is None:
        raise RunNotFoundError(run_id, store.location)
    if previous.state is RunState.COMPLETED:
        raise InputError(f"run {run_id} completed: there is nothing to resume")
    notes: list[str] = []
    if previous.state in (RunState.PENDING, RunState.RUNNING):
        notes.append(
            f"run {run_id} is recorded as {previous.state.value} (its process may have died); "
            "if it is still running, both will execute its remaining subplans"
        )
    plan, note = await _plan_of(store, previous)
    if note:
        notes.append(note)
    records = await store.list_subplans(run_id)
    kept = _with_descendants({r.path for r in records if r.state is SubplanState.COMPLETED}, plan)
    return ResumePoint(previous, plan, kept, tuple(notes))


async def _plan_of(store: Store, run: RunRecord) -> tuple[Plan, str | None]:
    """The plan file if it is still what the run executed, else the stored plan."""
    source = Path(run.plan_source) if run.plan_source else None
    note: str | None = None
    if source is not None:
        try:
            current = load_plan(source)
        except (OSError, EngineError):
            reason = "is gone" if not source.exists() else "no longer loads"
        else:
            if PlanSnapshot.of(current).digest == run.plan_digest:
                return current, None
            reason = "changed"
        note = (
            f"plan file {source} {reason} since run {run.id}; "
            "resuming with the plan stored with that run"
        )
    stored = await store.get_plan(run.id)
    if stored is None:  # pragma: no cover - every stored run has its plan
        raise InputError(f"run {run.id} has no stored plan: it cannot be resumed")
    plan = Plan.model_validate(json.loads(stored))
    return (plan.with_source(source) if source is not None else plan), note


def _with_descendants(completed: set[str], plan: Plan) -> frozenset[str]:
    """A kept group is never entered again, so everything under it is kept with it."""
    kept = set(completed)
    for path, _ in plan.walk():
        parent = path.rpartition("/")[0]
        while parent:
            if parent in completed:
                kept.add(path)
                break
            parent = parent.rpartition("/")[0]
    known = {path for path, _ in plan.walk()}
    return frozenset(kept & known)


def mark_kept(tracker: SubplanTracker, kept: frozenset[str]) -> None:
    """Start the new run with the kept subplans completed: initialisation, not a transition
    (no event; nothing ran)."""
    for path in kept:
        tracker.subplans[path].state = SubplanState.COMPLETED
