"""engine: an asyncio-native execution engine.

Run plans of parallel subplans under a concurrency cap, with structured cancellation, live
events, durable state, TTL locks and background jobs.

    import engine
    results = await engine.dispatch([fetch_a, fetch_b], max_parallel=2)
    result = await engine.run_plan("plan.yaml")
"""

from engine.app import Engine, run_plan
from engine.config import Settings, load_settings
from engine.delegation import (
    CompletionStream,
    DelegationHandle,
    DelegationSettings,
    DelegationStatistics,
    Delegator,
)
from engine.dispatch.dispatcher import ParallelSubplanDispatcher
from engine.dispatch.fast import dispatch
from engine.dispatch.limiter import AsyncSemaphoreLimiter
from engine.dispatch.tracker import SubplanTracker
from engine.domain.events import (
    EVENT_SCHEMA_VERSION,
    DelegationCompleted,
    DelegationStateChanged,
    Event,
    JobStateChanged,
    LockEvent,
    RunStateChanged,
    SubplanAttemptFailed,
    SubplanStateChanged,
)
from engine.domain.job import AsyncJob, deserialize_job_payload, serialize_job_payload
from engine.domain.lock import LockKind, LockRecord, Owner, Resource
from engine.domain.plan import ParallelExecutionConfig, Plan, Subplan
from engine.domain.results import RunResult, SubplanResult
from engine.domain.states import (
    AsyncJobStatus,
    DelegationState,
    FailureMode,
    RunState,
    SubplanState,
)
from engine.errors import (
    AggregateSubplanError,
    ConfigError,
    DelegationRejected,
    EngineError,
    InputError,
    InvalidJobTransitionError,
    InvalidTransitionError,
    JobNotFoundError,
    JobPayloadError,
    JobSignatureError,
    LockConflictError,
    LockError,
    LockExpiredError,
    LockNotFoundError,
    NotADatabaseError,
    NotFoundError,
    PlanValidationError,
    RunCancelledError,
    RunNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    StoreURLError,
    SubplanExecutionError,
)
from engine.locks import LockService
from engine.planfile import load_plan
from engine.ports.clock import Clock, SystemClock
from engine.ports.store import RunRecord, Store, SubplanRecord
from engine.prepared import PreparedRun
from engine.worker import WorkerHealthReport, WorkerPool, WorkerSettings

__version__ = "0.1.0"

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "AggregateSubplanError",
    "AsyncJob",
    "AsyncJobStatus",
    "AsyncSemaphoreLimiter",
    "Clock",
    "CompletionStream",
    "ConfigError",
    "DelegationCompleted",
    "DelegationHandle",
    "DelegationRejected",
    "DelegationSettings",
    "DelegationState",
    "DelegationStateChanged",
    "DelegationStatistics",
    "Delegator",
    "Engine",
    "EngineError",
    "Event",
    "FailureMode",
    "InputError",
    "InvalidJobTransitionError",
    "InvalidTransitionError",
    "JobNotFoundError",
    "JobPayloadError",
    "JobSignatureError",
    "JobStateChanged",
    "LockConflictError",
    "LockError",
    "LockEvent",
    "LockExpiredError",
    "LockKind",
    "LockNotFoundError",
    "LockRecord",
    "LockService",
    "NotADatabaseError",
    "NotFoundError",
    "Owner",
    "ParallelExecutionConfig",
    "ParallelSubplanDispatcher",
    "Plan",
    "PlanValidationError",
    "PreparedRun",
    "Resource",
    "RunCancelledError",
    "RunNotFoundError",
    "RunRecord",
    "RunResult",
    "RunState",
    "RunStateChanged",
    "SchemaVersionError",
    "Settings",
    "Store",
    "StoreError",
    "StoreURLError",
    "StoreUnavailableError",
    "Subplan",
    "SubplanAttemptFailed",
    "SubplanExecutionError",
    "SubplanRecord",
    "SubplanResult",
    "SubplanState",
    "SubplanStateChanged",
    "SubplanTracker",
    "SystemClock",
    "WorkerHealthReport",
    "WorkerPool",
    "WorkerSettings",
    "deserialize_job_payload",
    "dispatch",
    "load_plan",
    "load_settings",
    "run_plan",
    "serialize_job_payload",
]
