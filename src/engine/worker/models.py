"""The worker pool's settings and its `statistics()` report. Pure values."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from engine.config import AsyncSettings

#: Seconds running jobs get to finish after a stop request before they are handed back.
DEFAULT_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """One worker pool's knobs; `from_settings` takes them from the `async.*` configuration."""

    concurrency: int = 4
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    stuck_after: float = 60.0
    job_timeout: float = 3600.0
    job_ttl: float = 604800.0
    #: Exit once the queue is empty and the jobs claimed are done (`worker --burst`).
    burst: bool = False
    grace: float = DEFAULT_GRACE

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        for name in ("poll_interval", "heartbeat_interval", "stuck_after", "job_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0 seconds, got {getattr(self, name)}")
        if not self.grace >= 0:
            raise ValueError(f"grace must be 0 or more seconds, got {self.grace}")

    @classmethod
    def from_settings(cls, settings: AsyncSettings, **overrides: Any) -> WorkerSettings:
        base = cls(
            concurrency=settings.max_workers,
            poll_interval=settings.poll_interval,
            heartbeat_interval=settings.heartbeat_interval,
            stuck_after=settings.stuck_after,
            job_timeout=settings.job_timeout,
            job_ttl=settings.job_ttl,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(slots=True)
class WorkerHealthReport:
    """Counters of one worker pool (`WorkerPool.statistics()`)."""

    worker_id: str
    concurrency: int
    started_at: datetime | None = None
    #: Time of the last heartbeat that reached the store.
    last_heartbeat: datetime | None = None
    #: Jobs executing now.
    running: int = 0
    claimed: int = 0
    #: Jobs whose outcome was recorded (succeeded + failed + cancelled).
    processed: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Jobs given back to the queue (graceful shutdown).
    handed_back: int = 0
    #: Jobs whose claim was lost (another worker owns them now): nothing was recorded.
    fenced: int = 0
    #: Jobs of lost workers this pool requeued, failed or cancelled.
    rescued: int = 0
    #: Finished jobs deleted by TTL cleanup.
    purged: int = 0
    heartbeat_failures: int = 0
    store_errors: int = 0
    #: Outcomes waiting to be written.
    pending_outcomes: int = 0
    #: Whether the store wakes this pool when jobs are queued (PostgreSQL LISTEN/NOTIFY).
    notifications: bool = False

    def snapshot(self) -> WorkerHealthReport:
        return replace(self)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("started_at", "last_heartbeat"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out
