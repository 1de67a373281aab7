"""Running ONE claimed job: its plan through the engine's own run path, and the outcome to record.

The plan runs exactly as `python -m engine run` would run it (`Engine.prepare_run` and
`PreparedRun.execute`: locks, recorder, dispatcher), so the run is recorded and the job is linked
to it by run id. The job's cancel scope is the pool's handle on it: cancelling it (a cancel
request, a lost claim, shutdown) kills the run's processes before `run_job` returns. Everything
persisted from a failure goes through the redactor first. This module never writes to the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

import anyio

from engine.domain.job import AsyncJob, JobOutcome, deserialize_job_payload
from engine.domain.lock import LockRecord, Owner
from engine.domain.plan import Plan
from engine.domain.results import RunResult
from engine.domain.states import AsyncJobStatus, RunState, SubplanState
from engine.errors import EngineError, JobPayloadError, StoreError
from engine.ports.clock import Clock
from engine.redaction import Redactor
from engine.signing import SigningKey, verify_payload

if TYPE_CHECKING:
    from engine.locks.service import LockService
    from engine.prepared import PreparedRun

logger = logging.getLogger("engine.worker")

#: Longest error message stored for a job (the run's own records keep everything).
MAX_ERROR_CHARS = 4000
#: Output lines of each failed subplan quoted in a job's error.
TAIL_LINES = 5
#: How long releasing a plan lock the run never took may take (shielded from cancellation).
RELEASE_TIMEOUT = 10.0


class StopReason(Enum):
    """Why the pool cancelled a job's scope; decides what is recorded."""

    #: `jobs cancel`: the owner records `cancelled`.
    CANCEL_REQUESTED = "cancel requested"
    #: The claim is no longer ours (fenced, or our heartbeats failed): record nothing.
    LOST = "claim lost"
    #: Graceful shutdown after the grace period: hand the job back to `queued`.
    SHUTDOWN = "worker shutting down"


class Preparer(Protocol):
    """What the runner needs of the engine (`engine.app.Engine`)."""

    @property
    def locks(self) -> LockService: ...

    def prepare_run(
        self,
        plan: Plan,
        *,
        lock_wait: float = 0.0,
        run_id: str | None = None,
        taken: Sequence[LockRecord] = (),
    ) -> PreparedRun: ...


@dataclass(slots=True)
class RunningJob:
    """A claimed job in this worker: its claim (the token is `job.attempts`) and its scope."""

    job: AsyncJob
    worker_id: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    reason: StopReason | None = None
    #: The id of its run, once prepared.
    run_id: str | None = None
    #: The id the claim chose for its run (`RunLocking`; None: a new one) and the run's plan
    #: lock, if the claim took it: the run holds it from its first step.
    claimed_run_id: str | None = None
    plan_lock: LockRecord | None = None
    #: Called once its run has ended, before the end is written (`PreparedRun.execute`).
    on_ended: Callable[[], None] | None = None

    def stop(self, reason: StopReason) -> None:
        """Cancel the job's scope; the first reason given is the one that counts."""
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    def outcome(
        self,
        clock: Clock,
        status: AsyncJobStatus,
        error: str | None = None,
        result: str | None = None,
    ) -> JobOutcome:
        return JobOutcome(
            job_id=self.job.id,
            worker_id=self.worker_id,
            token=self.job.attempts,
            status=status,
            at=clock.now(),
            error_message=error,
            result=result,
            run_id=self.run_id,
        )


async def run_job(
    engine: Preparer,
    running: RunningJob,
    clock: Clock,
    *,
    job_timeout: float,
    redact: Redactor,
    signing_key: SigningKey | None = None,
) -> JobOutcome | None:
    """Run the job's plan to its end; the outcome to record (None: the claim was lost).
    With a `signing_key`, a job whose payload signature is missing or wrong fails unrun. A
    plan lock the claim took for the run (`running.plan_lock`) is the run's to hold, and
    released here if the run never gets to it."""
    try:
        return await _run(engine, running, clock, job_timeout, redact, signing_key)
    finally:
        lock, running.plan_lock = running.plan_lock, None
        if lock is not None and running.claimed_run_id is not None:  # never taken over
            owner = Owner.of_run(running.claimed_run_id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_TIMEOUT):
                try:
                    await engine.locks.release(lock.resource, owner)
                except StoreError as exc:
                    logger.warning("job %s: its plan lock stays: %s", running.job.id, exc)


async def _run(
    engine: Preparer,
    running: RunningJob,
    clock: Clock,
    job_timeout: float,
    redact: Redactor,
    signing_key: SigningKey | None,
) -> JobOutcome | None:
    try:
        if signing_key is not None:
            verify_payload(running.job.payload, running.job.id, signing_key)
        payload = deserialize_job_payload(running.job.payload)
    except JobPayloadError as exc:  # JobSignatureError included: nothing of the plan runs
        message = redact(str(exc))
        logger.warning("job %s: %s", running.job.id, message)
        return running.outcome(clock, AsyncJobStatus.FAILED, message)
    lock = running.plan_lock
    taken = (lock,) if lock is not None and lock.resource.name == payload.plan.name else ()
    prepared: PreparedRun | None = None
    result: RunResult | None = None
    error: str | None = None
    # One scope for the pool's stops and the timeout: a stop says why (`running.reason`).
    scope = running.scope
    scope.deadline = min(scope.deadline, anyio.current_time() + job_timeout)
    with scope:
        # A plan already running elsewhere (its plan lock) is waited for, within the timeout.
        try:
            prepared = engine.prepare_run(
                payload.plan, lock_wait=job_timeout, run_id=running.claimed_run_id, taken=taken
            )
            running.run_id = prepared.run_id
            if taken:
                running.plan_lock = None  # the run holds it from its first step
            # The job row says it runs: its run is created by the next flush, not awaited.
            result = await prepared.execute(record_first=False, on_ended=running.on_ended)
        except EngineError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must fail the job, not the pool
            logger.exception("job %s: unexpected error", running.job.id)
            error = f"{type(exc).__name__}: {exc}"
    if result is None and prepared is not None:  # it did not return: where it got to
        result = prepared.result()
    summary = _summary(result) if result is not None else None
    if running.reason is StopReason.LOST:
        return None
    if running.reason is StopReason.SHUTDOWN:
        return running.outcome(
            clock, AsyncJobStatus.QUEUED, f"handed back: {running.worker_id} shut down", summary
        )
    if running.reason is StopReason.CANCEL_REQUESTED:
        return running.outcome(clock, AsyncJobStatus.CANCELLED, "cancelled by request", summary)
    if scope.cancelled_caught:  # not stopped by the pool (that has a reason): timed out
        message = f"timed out after {job_timeout:g}s (async.job_timeout)"
        return running.outcome(clock, AsyncJobStatus.FAILED, message, summary)
    if error is not None:
        return running.outcome(clock, AsyncJobStatus.FAILED, _cut(redact(error)), summary)
    assert result is not None
    if result.state is RunState.COMPLETED:
        return running.outcome(clock, AsyncJobStatus.SUCCEEDED, None, summary)
    cancelled = result.state is RunState.CANCELLED
    status = AsyncJobStatus.CANCELLED if cancelled else AsyncJobStatus.FAILED
    return running.outcome(clock, status, _cut(redact(failure_text(result))), summary)


def failure_text(result: RunResult) -> str:
    """The run's error, then each failed subplan's error and the last lines of its output."""
    lines = [result.error or f"run {result.run_id} {result.state.value}"]
    for path, sub in result.subplans.items():
        if sub.state is not SubplanState.FAILED or sub.kind == "group":
            continue
        lines.append(f"{path}: {sub.error or 'failed'}")
        if sub.output_tail:
            lines.extend(f"  | {line}" for line in sub.output_tail.splitlines()[-TAIL_LINES:])
    return "\n".join(lines)


def _summary(result: RunResult) -> str:
    states: dict[str, int] = {}
    for sub in result.subplans.values():
        states[sub.state.value] = states.get(sub.state.value, 0) + 1
    data = {
        "run_id": result.run_id,
        "state": result.state.value,
        "duration": round(result.duration, 6) if result.duration is not None else None,
        "subplans": dict(sorted(states.items())),
    }
    return _SUMMARY.encode(data)


#: The summary's encoder, made once (`json.dumps` with options makes one per call).
_SUMMARY = json.JSONEncoder(separators=(",", ":"))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
