"""The public names of `engine` are a contract: adding one is a decision, removing one a break.

Changing this list is deliberate: update it together with `engine.__all__` and the docs.
"""

import engine

PUBLIC = {
    "AggregateSubplanError", "AsyncJob", "AsyncJobStatus", "AsyncSemaphoreLimiter", "Clock",
    "CompletionStream", "ConfigError", "DelegationCompleted", "DelegationHandle",
    "DelegationRejected", "DelegationSettings", "DelegationState", "DelegationStateChanged",
    "DelegationStatistics", "Delegator", "EVENT_SCHEMA_VERSION", "Engine", "EngineError",
    "Event", "FailureMode", "InputError", "InvalidJobTransitionError", "InvalidTransitionError",
    "JobNotFoundError", "JobPayloadError", "JobSignatureError", "JobStateChanged",
    "LockConflictError", "LockError",
    "LockEvent", "LockExpiredError", "LockKind", "LockNotFoundError", "LockRecord",
    "LockService", "NotADatabaseError", "NotFoundError", "Owner", "ParallelExecutionConfig",
    "ParallelSubplanDispatcher", "Plan", "PlanValidationError", "PreparedRun", "Resource",
    "RunCancelledError", "RunNotFoundError", "RunRecord", "RunResult", "RunState",
    "RunStateChanged", "SchemaVersionError", "Settings", "Store", "StoreError", "StoreURLError",
    "StoreUnavailableError", "Subplan", "SubplanAttemptFailed", "SubplanExecutionError",
    "SubplanRecord", "SubplanResult", "SubplanState", "SubplanStateChanged", "SubplanTracker",
    "SystemClock", "WorkerHealthReport", "WorkerPool", "WorkerSettings",
    "deserialize_job_payload", "dispatch", "load_plan", "load_settings", "run_plan",
    "serialize_job_payload"
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(engine.__all__) == PUBLIC


def test_every_public_name_resolves() -> None:
    assert [name for name in engine.__all__ if not hasattr(engine, name)] == []
