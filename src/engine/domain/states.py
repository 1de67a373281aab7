"""Every status enum of the engine and the ONE table of legal transitions for each.

A state change anywhere (tracker, store, worker) is checked against these tables; nothing else
decides what may follow what.
"""

from __future__ import annotations

from enum import StrEnum


class SubplanState(StrEnum):
    #: Not started yet (waiting for a slot, a lock or its `needs`).
    PENDING = "pending"
    #: Executing; retries happen inside this state.
    RUNNING = "running"
    #: Finished successfully.
    COMPLETED = "completed"
    #: Finished with an error (after its last attempt).
    FAILED = "failed"
    #: Stopped by fail-fast, a timeout of its parent, or an interruption.
    CANCELLED = "cancelled"
    #: Never started because a subplan it `needs` did not complete.
    SKIPPED = "skipped"


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureMode(StrEnum):
    #: The first failure cancels every pending and running sibling.
    FAIL_FAST = "fail_fast"
    #: Every sibling runs to a terminal state; failures are aggregated.
    CONTINUE_ON_ERROR = "continue_on_error"


TERMINAL_SUBPLAN_STATES: frozenset[SubplanState] = frozenset(
    {SubplanState.COMPLETED, SubplanState.FAILED, SubplanState.CANCELLED, SubplanState.SKIPPED}
)
TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}
)

SUBPLAN_TRANSITIONS: dict[SubplanState, frozenset[SubplanState]] = {
    SubplanState.PENDING: frozenset(
        {SubplanState.RUNNING, SubplanState.CANCELLED, SubplanState.SKIPPED}
    ),
    SubplanState.RUNNING: frozenset(
        {SubplanState.COMPLETED, SubplanState.FAILED, SubplanState.CANCELLED}
    ),
    SubplanState.COMPLETED: frozenset(),
    SubplanState.FAILED: frozenset(),
    SubplanState.CANCELLED: frozenset(),
    SubplanState.SKIPPED: frozenset(),
}

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}


class DelegationState(StrEnum):
    #: The work is executing in the owner's task group (a delegation starts here).
    RUNNING = "running"
    #: The work returned (a plan run that completed).
    SUCCEEDED = "succeeded"
    #: The work raised, or a plan run did not complete.
    FAILED = "failed"
    #: Stopped by `cancel`, `interrupt_all` or the close of its owner.
    CANCELLED = "cancelled"


TERMINAL_DELEGATION_STATES: frozenset[DelegationState] = frozenset(
    {DelegationState.SUCCEEDED, DelegationState.FAILED, DelegationState.CANCELLED}
)

DELEGATION_TRANSITIONS: dict[DelegationState, frozenset[DelegationState]] = {
    DelegationState.RUNNING: TERMINAL_DELEGATION_STATES,
    DelegationState.SUCCEEDED: frozenset(),
    DelegationState.FAILED: frozenset(),
    DelegationState.CANCELLED: frozenset(),
}


class AsyncJobStatus(StrEnum):
    """A background job (`submit`, `worker`): see docs/jobs.md for the lifecycle."""

    #: Waiting in the queue for a worker to claim it.
    QUEUED = "queued"
    #: Claimed by a worker (its `worker_id`, fencing token `attempts`) and executing.
    RUNNING = "running"
    #: Its plan run completed.
    SUCCEEDED = "succeeded"
    #: Its plan run failed, timed out, or its worker was lost with no attempts left.
    FAILED = "failed"
    #: Cancelled while queued, or by its owning worker after `jobs cancel`.
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES: frozenset[AsyncJobStatus] = frozenset(
    {AsyncJobStatus.SUCCEEDED, AsyncJobStatus.FAILED, AsyncJobStatus.CANCELLED}
)

#: `running -> queued` only hands a job back (graceful shutdown, a lost worker with attempts
#: left); every other pair raises `InvalidJobTransitionError` (`engine.domain.job`).
VALID_JOB_TRANSITIONS: dict[AsyncJobStatus, frozenset[AsyncJobStatus]] = {
    AsyncJobStatus.QUEUED: frozenset({AsyncJobStatus.RUNNING, AsyncJobStatus.CANCELLED}),
    AsyncJobStatus.RUNNING: frozenset(
        {
            AsyncJobStatus.SUCCEEDED,
            AsyncJobStatus.FAILED,
            AsyncJobStatus.CANCELLED,
            AsyncJobStatus.QUEUED,
        }
    ),
    AsyncJobStatus.SUCCEEDED: frozenset(),
    AsyncJobStatus.FAILED: frozenset(),
    AsyncJobStatus.CANCELLED: frozenset(),
}
