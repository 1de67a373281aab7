"""Every exception the engine raises on purpose, under one root.

    EngineError                      exit code 1 unless a subclass says otherwise
    ├── InputError                   exit 2: bad input; nothing was executed
    │   ├── PlanValidationError      a plan file or Plan object breaks the schema
    │   ├── ConfigError              a configuration value is missing, malformed or out of range
    │   └── NotFoundError            an id (run, job) that the store does not know
    │       ├── RunNotFoundError
    │       ├── JobNotFoundError
    │       └── LockNotFoundError    `locks release` of a resource nobody holds
    ├── ExecutionError               the work itself failed
    │   ├── SubplanExecutionError    one subplan failed (fail_fast)
    │   └── AggregateSubplanError    several failed (continue_on_error); carries each failure
    ├── RunCancelledError            the run was cancelled (timeout of the plan, signal)
    ├── InvalidTransitionError       a state change not in the transition table
    │   └── InvalidJobTransitionError
    ├── JobPayloadError              a job's stored payload cannot be read (unknown version, ...)
    │   └── JobSignatureError        its signature is missing or wrong (ENGINE_SIGNING_KEY is set)
    ├── StoreError                   the database failed (driver errors are translated into this)
    │   ├── StoreUnavailableError    the server cannot be reached, or refused the login
    │   ├── StoreURLError            exit 2: unknown scheme, malformed URL, driver not installed
    │   ├── NotADatabaseError        exit 2: a file that is not an engine store (left untouched)
    │   └── SchemaVersionError       exit 2: schema newer than this engine, or not upgraded yet
    ├── LockError                    carries resource, holder, expires_at
    │   ├── LockConflictError        exit 3: another owner holds the resource
    │   └── LockExpiredError         a held lock expired or was taken over
    └── DelegationRejected           in-process delegation at capacity (or its owner closing)

Each class's docstring is its default message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from engine.domain.plan import PlanProblem


class EngineError(Exception):
    """The engine failed."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or type(self).__name__).strip()
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InputError(EngineError):
    """Bad input."""

    exit_code = 2


class PlanValidationError(InputError):
    """The plan is not valid."""

    def __init__(self, source: str, problems: Sequence[PlanProblem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems))


class ConfigError(InputError):
    """The configuration is not valid."""


class NotFoundError(InputError):
    """No such id."""


class RunNotFoundError(NotFoundError):
    """No such run."""

    def __init__(self, run_id: str, where: str | None = None) -> None:
        self.run_id = run_id
        self.where = where
        suffix = f" in {where}" if where else ""
        super().__init__(f"no run {run_id!r}{suffix} (see `python -m engine runs list`)")


class JobNotFoundError(NotFoundError):
    """No such job."""

    def __init__(self, job_id: str, where: str | None = None) -> None:
        self.job_id = job_id
        self.where = where
        suffix = f" in {where}" if where else ""
        super().__init__(f"no job {job_id!r}{suffix} (see `python -m engine jobs list`)")


class LockNotFoundError(NotFoundError):
    """No such lock."""

    def __init__(self, resource: str, where: str | None = None) -> None:
        self.resource = resource
        self.where = where
        suffix = f" in {where}" if where else ""
        super().__init__(f"nobody holds {resource}{suffix} (see `python -m engine locks list`)")


class ExecutionError(EngineError):
    """The work failed."""


class SubplanExecutionError(ExecutionError):
    """A subplan failed."""

    def __init__(self, path: str, error: str) -> None:
        self.path = path
        self.error = error
        super().__init__(f"subplan {path!r} failed: {error}")


class AggregateSubplanError(ExecutionError):
    """Several subplans failed."""

    def __init__(self, failures: Sequence[SubplanExecutionError]) -> None:
        self.failures = list(failures)
        names = ", ".join(repr(f.path) for f in self.failures)
        super().__init__(f"{len(self.failures)} subplan(s) failed: {names}")


class RunCancelledError(EngineError):
    """The run was cancelled."""


class InvalidTransitionError(EngineError):
    """A state change that the transition table does not allow."""

    def __init__(self, what: str, old: str, new: str) -> None:
        self.what = what
        self.old = old
        self.new = new
        super().__init__(f"{what}: illegal transition {old} -> {new}")


class InvalidJobTransitionError(InvalidTransitionError):
    """A job state change that the transition table does not allow."""


class JobPayloadError(EngineError):
    """The job's payload cannot be read by this engine."""


class JobSignatureError(JobPayloadError):
    """The job's payload signature is missing or invalid; the job was not run."""


class StoreError(EngineError):
    """The store failed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached."""


class StoreURLError(StoreError):
    """The database URL is not one the engine can use."""

    exit_code = 2


class NotADatabaseError(StoreError):
    """The file is not an engine database; it was left untouched."""

    exit_code = 2

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}; the file was left untouched")


class SchemaVersionError(StoreError):
    """The database schema is not the one this engine needs."""

    exit_code = 2

    def __init__(self, message: str, *, current: str | None, expected: str) -> None:
        self.current = current
        self.expected = expected
        super().__init__(message)


class LockError(EngineError):
    """A lock operation failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        resource: str | None = None,
        holder: str | None = None,
        expires_at: datetime | None = None,
    ) -> None:
        #: The resource, written `kind:name` (`plan:nightly`).
        self.resource = resource
        #: The owner id of the holder (`host:pid:run id[/subplan path]`).
        self.holder = holder
        #: When the holder's lock expires (or expired), UTC.
        self.expires_at = expires_at
        super().__init__(message)


class LockConflictError(LockError):
    """The resource is locked by another owner."""

    exit_code = 3

    def __init__(
        self,
        resource: str | None = None,
        holder: str | None = None,
        expires_at: datetime | None = None,
        *,
        waited: float = 0.0,
    ) -> None:
        #: Seconds spent waiting for the lock before giving up (0: it was tried once).
        self.waited = waited
        message = None
        if resource is not None:
            message = f"{resource} is locked by {holder or 'another owner'}"
            if expires_at is not None:
                message += f" (its lock expires at {_utc(expires_at)} UTC unless renewed)"
            if waited > 0:
                message += f"; still locked after waiting {waited:g}s"
            else:
                message += "; wait for it with --lock-wait SECONDS"
        super().__init__(message, resource=resource, holder=holder, expires_at=expires_at)


class LockExpiredError(LockError):
    """The lock expired or was taken over by another owner."""

    def __init__(
        self,
        resource: str | None = None,
        holder: str | None = None,
        expires_at: datetime | None = None,
        *,
        taken_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        #: The owner that holds the resource now, if another one took it over.
        self.taken_by = taken_by
        message = None
        if resource is not None:
            message = f"lock {resource} of {holder or 'this owner'} was lost: "
            if taken_by is not None:
                message += f"taken over by {taken_by}"
            elif reason is not None:
                message += reason
            else:
                message += "it expired"
            if expires_at is not None:
                message += f" (it expired at {_utc(expires_at)} UTC)"
        super().__init__(message, resource=resource, holder=holder, expires_at=expires_at)


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class DelegationRejected(EngineError):
    """At capacity: wait for a running delegation to finish, or run the work synchronously."""

    def __init__(self, limit: int, running: int, *, closed: bool = False) -> None:
        self.limit = limit
        self.running = running
        #: True when rejected because the owner is closing, not because of the cap.
        self.closed = closed
        if closed:
            message = "delegation rejected: the engine is closing; run the work synchronously"
        else:
            message = (
                f"delegation rejected: {running} of {limit} delegations are running (the cap); "
                "wait for one to finish, or run the work synchronously"
            )
        super().__init__(message)
