"""Typed events: one for every transition of a run or a subplan (schema version 1).

The same objects feed the terminal view, `--events` JSON lines, the store and `async for`
subscribers. `from`/`to` are serialized under those names (`from` is a Python keyword).
Later event families (jobs, locks, delegations) add classes here; the `type` strings are stable.
Only run and subplan events are part of a run's stored event log (`seq` per run); the other
families number their events per emitter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic_core import to_jsonable_python

from engine.domain.states import AsyncJobStatus, DelegationState, RunState, SubplanState

EVENT_SCHEMA_VERSION = 1


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    v: int = EVENT_SCHEMA_VERSION
    type: str
    at: datetime
    seq: int = 0
    run_id: str | None = None

    def to_json(self) -> str:
        # `model_dump_json(by_alias=True, exclude_none=True)`, less its wrapper's per-call
        # work: the store writes four of these per run.
        json: bytes = self.__pydantic_serializer__.to_json(self, by_alias=True, exclude_none=True)
        return json.decode()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RunStateChanged(Event):
    type: Literal["run.state"] = "run.state"
    plan: str
    from_: RunState | None = Field(default=None, alias="from")
    to: RunState
    error: str | None = None


class SubplanStateChanged(Event):
    type: Literal["subplan.state"] = "subplan.state"
    path: str
    from_: SubplanState = Field(alias="from")
    to: SubplanState
    attempt: int = 0
    error: str | None = None
    duration: float | None = None


class SubplanAttemptFailed(Event):
    """An attempt failed; another follows after `retry_in` seconds (the subplan stays running)."""

    type: Literal["subplan.retry"] = "subplan.retry"
    path: str
    attempt: int
    error: str
    retry_in: float


# --- Delegations (in-process background work; see engine.delegation) -------------------------


class DelegationStateChanged(Event):
    """A delegation changed state; `from` is absent on the first event (dispatch -> running).

    `seq` counts per delegation. `error` is redacted; `reason` says why it was cancelled.
    """

    type: Literal["delegation.state"] = "delegation.state"
    delegation_id: str
    goal: str
    from_: DelegationState | None = Field(default=None, alias="from")
    to: DelegationState
    error: str | None = None
    reason: str | None = None
    duration: float | None = None


class DelegationCompleted(Event):
    """The self-contained outcome of one delegation, put on the completion queue exactly once.

    Carries everything needed to act on it long after dispatch: the caller's goal, context and
    metadata, the final status, the result (in-process only) and a redacted summary of it, the
    redacted error, and the times. `at` equals `completed_at`.
    """

    type: Literal["delegation.completed"] = "delegation.completed"
    delegation_id: str
    goal: str
    #: What ran: a callable's qualified name, a plan's name or a plan file's path.
    work: str
    context: Any = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: DelegationState
    #: The work's return value (a `RunResult` for plans); in-process only, never serialized.
    result: Any = Field(default=None, exclude=True, repr=False)
    #: A short, redacted text form of `result` (what `--events` and logs see).
    result_summary: str | None = None
    error: str | None = None
    error_type: str | None = None
    reason: str | None = None
    dispatched_at: datetime
    completed_at: datetime
    duration: float

    @property
    def ok(self) -> bool:
        return self.status is DelegationState.SUCCEEDED

    @field_serializer("context", "metadata", when_used="json")
    def _jsonable(self, value: Any) -> Any:
        """The caller's values may hold anything; JSON gets their `repr` where it must."""
        return to_jsonable_python(value, fallback=repr)


AnyDelegationEvent = DelegationStateChanged | DelegationCompleted


# --- Locks (engine.locks.service) and background jobs (engine.jobs, engine.worker) ----------


LockEventType = Literal[
    "lock.acquired",
    "lock.renewed",
    "lock.released",
    "lock.lost",
    "lock.expired",
    "lock.force_released",
]


class LockEvent(Event):
    """A lock changed hands: taken (not re-entered), renewed, released for good, lost or
    expired (a renewal found it gone), or removed by `locks release --force`.

    `seq` counts per lock service (one per engine). `owner` is the holder's id (for a forced
    release, the holder it was taken from); `run_id` is the holding run's, where known.
    """

    type: LockEventType
    resource: str
    owner: str
    expires_at: datetime | None = None
    error: str | None = None


class JobStateChanged(Event):
    """A background job changed status; `from` is absent on submit (-> queued).

    `seq` counts per engine. `attempt` is the job's claim count (its fencing token);
    `worker_id` is the worker that made the change (absent for submit and cancel-while-queued);
    `error` was redacted before it was stored; `run_id` is the run of that attempt, if any.
    """

    type: Literal["job.state"] = "job.state"
    job_id: str
    from_: AsyncJobStatus | None = Field(default=None, alias="from")
    to: AsyncJobStatus
    attempt: int = 0
    worker_id: str | None = None
    error: str | None = None


#: Every event class (a run's own log holds only the first three).
AnyEvent = (
    RunStateChanged
    | SubplanStateChanged
    | SubplanAttemptFailed
    | DelegationStateChanged
    | DelegationCompleted
    | LockEvent
    | JobStateChanged
)
