"""What a background job is: its record, its payload, and the values that cross the job store.

Pure pydantic + stdlib, no I/O. The statuses and the ONE table of legal transitions live in
`engine.domain.states` (`AsyncJobStatus`, `VALID_JOB_TRANSITIONS`); `check_job_transition` is
the only place that reads the table. The queue's rules (claiming, heartbeats, fencing) are the
store's and the worker's (`engine.ports.store.JobStore`, `engine.worker`).

The payload is versioned JSON carrying the validated plan itself (not a path to a file that may
change or be absent on the worker's machine) and the working folder its steps run in.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.domain.plan import Plan
from engine.domain.states import TERMINAL_JOB_STATUSES, VALID_JOB_TRANSITIONS, AsyncJobStatus
from engine.errors import EngineError, InvalidJobTransitionError, JobPayloadError
from engine.ids import new_id

#: The payload version this engine writes and the only one it reads.
JOB_PAYLOAD_VERSION = 1
#: How often a job is claimed before a lost worker's job is failed instead of requeued.
DEFAULT_MAX_ATTEMPTS = 3
#: Canonical JSON (sorted keys, no spaces, UTF-8 as it is): made once, `json.dumps` with
#: options makes an encoder per call.
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_job_transition(job_id: str, old: AsyncJobStatus, new: AsyncJobStatus) -> None:
    """Raise `InvalidJobTransitionError` unless `VALID_JOB_TRANSITIONS` allows old -> new."""
    if new not in VALID_JOB_TRANSITIONS[old]:
        raise InvalidJobTransitionError(f"job {job_id}", old.value, new.value)


class AsyncJob(BaseModel):
    """One job as stored. `attempts` counts claims and is the fencing token of the current one:
    every write a worker makes for the job is conditional on it (and on `worker_id`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: AsyncJobStatus
    plan_name: str
    #: Versioned JSON (`serialize_job_payload`).
    payload: str
    created_at: datetime
    attempts: int = Field(default=0, ge=0)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_heartbeat: datetime | None = None
    cancel_requested: bool = False
    #: Why it failed or was cancelled (redacted before it was stored).
    error_message: str | None = None
    #: A short JSON summary of the run's outcome (state, subplan counts, duration).
    result: str | None = None
    #: The plan run this job made (its latest attempt's).
    run_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES

    @classmethod
    def new(
        cls,
        plan: Plan,
        created_at: datetime,
        *,
        workdir: Path | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> AsyncJob:
        """A queued job for `plan` (validated already: it is a `Plan`)."""
        return cls(
            id=new_id(),
            status=AsyncJobStatus.QUEUED,
            plan_name=plan.name,
            payload=serialize_job_payload(plan, workdir),
            created_at=created_at,
            max_attempts=max_attempts,
        )


class JobPayload(BaseModel):
    """What a worker needs to run a job: the plan, and the folder relative `cwd`s start from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    version: int
    plan: Plan
    workdir: str
    #: The plan file it was submitted from (for messages and `resume`), if any.
    plan_source: str | None = None


def serialize_job_payload(plan: Plan, workdir: Path | None = None) -> str:
    """The payload JSON of `plan`; `workdir` defaults to the plan's own folder."""
    folder = Path(workdir) if workdir is not None else plan.base_dir
    data: dict[str, Any] = {
        "version": JOB_PAYLOAD_VERSION,
        "plan": plan.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "workdir": str(folder.resolve()),
        "plan_source": str(plan.source) if plan.source is not None else None,
    }
    return CANONICAL_JSON.encode(data)


def deserialize_job_payload(text: str) -> JobPayload:
    """Read and validate a payload. Its plan's `base_dir` is the payload's working folder.

    `JobPayloadError` (with what is wrong) for anything this engine cannot run: not JSON, an
    unknown version, a plan that no longer validates.
    """
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise JobPayloadError(f"job payload is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobPayloadError("job payload must be a JSON object")
    version = data.get("version")
    if type(version) is not int:
        raise JobPayloadError(f"job payload has no integer version (found {version!r})")
    if version != JOB_PAYLOAD_VERSION:
        raise JobPayloadError(
            f"job payload version {version} is not supported: this engine reads version "
            f"{JOB_PAYLOAD_VERSION}; run the job with the engine release that submitted it"
        )
    workdir, source = data.get("workdir"), data.get("plan_source")
    if not isinstance(workdir, str) or not workdir:
        raise JobPayloadError("job payload has no working folder (workdir)")
    if source is not None and not isinstance(source, str):
        raise JobPayloadError(f"job payload plan_source must be a string, got {source!r}")
    try:
        plan = Plan.model_validate(data.get("plan"))
    except (ValidationError, EngineError) as exc:
        raise JobPayloadError(f"job payload holds an invalid plan: {exc}") from None
    # The plan's folder is the working folder: `cwd` and `call` modules resolve from there.
    # String operations, one Path: a worker reads thousands of payloads a second.
    name = os.path.basename(source.rstrip("/")) if source else f"{plan.name}.yaml"
    source_path = Path(os.path.join(workdir, name))
    plan = plan.with_source(source_path, resolved=os.path.isabs(workdir), copy=False)
    # Every field is checked above: validating the model again would check the plan's
    # structure a second time.
    return JobPayload.model_construct(
        version=version, plan=plan, workdir=workdir, plan_source=source
    )


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """A worker's write for a job it claimed: accepted only while the job is `running` with
    this `token` (attempt) and `worker_id`, else rejected (someone else owns the job now)."""

    job_id: str
    worker_id: str
    token: int
    #: A terminal status, or QUEUED to hand the job back.
    status: AsyncJobStatus
    at: datetime
    error_message: str | None = None
    result: str | None = None
    run_id: str | None = None

    def __post_init__(self) -> None:
        check_job_transition(self.job_id, AsyncJobStatus.RUNNING, self.status)


@dataclass(frozen=True, slots=True)
class Claimed:
    """The answer of `JobStore.finish_and_claim`: the outcomes it applied, the jobs it claimed
    (oldest first) and, when it also took their runs' plan locks (`RunLocking`), the ids of
    the jobs whose lock it took."""

    applied: list[str]
    jobs: list[AsyncJob]
    locked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class JobBeat:
    """What one heartbeat says of a job the worker holds: whether it is still the owner (the
    token matches), and whether someone asked to cancel the job."""

    job_id: str
    token: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A live worker as it registers itself with each heartbeat (for `diagnostics`)."""

    id: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    concurrency: int
    processed: int = 0
    failed: int = 0
    cancelled: int = 0


def lost_worker_message(worker_id: str | None, last_seen: datetime, now: datetime) -> str:
    """The error of a job whose worker stopped heartbeating (stuck detection)."""
    age = (now - last_seen).total_seconds()
    seen = last_seen.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"worker {worker_id or '?'} was lost: last seen {seen} UTC ({age:.0f}s before it was "
        "declared stuck)"
    )


def new_worker_id() -> str:
    """`host:pid:ulid`: unique per worker pool, readable in `jobs show` and `diagnostics`."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{new_id()}"
