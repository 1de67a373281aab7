"""engine: an asyncio-native execution engine.

Run plans of parallel subplans under a concurrency cap, with structured cancellation, live
events, durable state, TTL locks and background jobs.

    import engine
    results = await engine.dispatch([fetch_a, fetch_b], max_parallel=2)
    result = await engine.run_plan("plan.yaml")
"""

from engine.app import Engine, run_plan
from engine.config import Settings, load_settings
from engine.dispatch.fast import dispatch
from engine.dispatch.limiter import AsyncSemaphoreLimiter
from engine.dispatch.dispatcher import ParallelSubplanDispatcher
from engine.dispatch.tracker import SubplanTracker
from engine.domain.events import (
    EVENT_SCHEMA_VERSION,
    Event,
    RunStateChanged,
    SubplanAttemptFailed,
    SubplanStateChanged,
)
from engine.domain.plan import ParallelExecutionConfig, Plan, Subplan
from engine.domain.results import RunResult, SubplanResult
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.errors import (
    AggregateSubplanError,
    ConfigError,
    EngineError,
    InputError,
    InvalidTransitionError,
    NotFoundError,
    PlanValidationError,
    RunCancelledError,
    SubplanExecutionError,
)
from engine.planfile import load_plan
from engine.ports.clock import Clock, SystemClock

__version__ = "0.1.0"

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "AggregateSubplanError",
    "AsyncSemaphoreLimiter",
    "Clock",
    "ConfigError",
    "Engine",
    "EngineError",
    "Event",
    "FailureMode",
    "InputError",
    "InvalidTransitionError",
    "NotFoundError",
    "ParallelExecutionConfig",
    "ParallelSubplanDispatcher",
    "Plan",
    "PlanValidationError",
    "RunCancelledError",
    "RunResult",
    "RunState",
    "RunStateChanged",
    "Settings",
    "Subplan",
    "SubplanAttemptFailed",
    "SubplanExecutionError",
    "SubplanResult",
    "SubplanState",
    "SubplanStateChanged",
    "SubplanTracker",
    "SystemClock",
    "dispatch",
    "load_plan",
    "load_settings",
    "run_plan",
]
