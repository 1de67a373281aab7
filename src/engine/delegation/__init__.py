"""`Delegator`: in-process background work with a handle, a hard cap and a completion queue.

This package owns ONLY the lifecycle of delegations: admission (the cap), the tasks that run
them (always inside a task group that its owner, or the `Delegator` itself, holds open),
their one transition table, their events and the completion queue. It never queues work
behind the cap, never persists anything and never lets a task outlive its `async with` block.

    async with Delegator(run_plan=eng.run_plan, clock=eng.clock, bus=eng.bus) as delegator:
        handle = delegator.delegate(fetch_report, goal="fetch the weekly report")
        ...                                    # `delegate` returned at once; keep working
        async for done in delegator.completions():
            print(done.goal, done.status, done.result_summary or done.error)

- `delegate()` is synchronous on purpose: the capacity check and the registration run without
  an `await` between them, so concurrent callers can never exceed `max_concurrent_delegations`.
  Call it from the event loop's thread.
- Each delegation goes `running -> succeeded | failed | cancelled` (`DELEGATION_TRANSITIONS`);
  every transition is a `DelegationStateChanged` on the bus, and the end is one
  `DelegationCompleted`, put on the completion queue (each one reaches exactly one consumer)
  and published on the bus. A completion that cannot be queued is logged and counted.
- Errors, summaries and reasons are redacted (`engine.redaction`) before they leave this package.

The package: `handles` (what a caller holds: `DelegationHandle`, the completion queue and
stream, the settings and statistics) and `delegator` (`Delegator`: admission, tasks, events).
"""

from engine.delegation.delegator import (
    CLOSE_REASON,
    AsyncWork,
    Delegator,
    PlanRunner,
    PlanSource,
    Work,
)
from engine.delegation.handles import (
    CompletionStream,
    DelegationHandle,
    DelegationSettings,
    DelegationStatistics,
)

__all__ = [
    "CLOSE_REASON",
    "AsyncWork",
    "CompletionStream",
    "DelegationHandle",
    "DelegationSettings",
    "DelegationStatistics",
    "Delegator",
    "PlanRunner",
    "PlanSource",
    "Work",
]
