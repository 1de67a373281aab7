"""What `diagnostics` reports: worker health, queue depth by status, stuck jobs, stale locks.

Pure values built by `JobService.diagnostics` (which only reads); `problems()` says what needs
attention (the command exits 1 when there is anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.domain.job import AsyncJob, WorkerRecord
from engine.domain.states import AsyncJobStatus


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    record: WorkerRecord
    #: Seconds since its last heartbeat.
    age: float


@dataclass(frozen=True, slots=True)
class Diagnostics:
    at: datetime
    stuck_after: float
    workers: list[WorkerHealth]
    queue: dict[AsyncJobStatus, int]
    stuck: list[AsyncJob]
    stale_locks: int

    def lost_workers(self) -> list[WorkerHealth]:
        """Registered workers that have not heartbeated for longer than `stuck_after`."""
        return [w for w in self.workers if w.age > self.stuck_after]

    def problems(self) -> list[str]:
        found = []
        lost = self.lost_workers()
        if lost:
            names = ", ".join(w.record.id for w in lost)
            found.append(f"{len(lost)} worker(s) silent for over {self.stuck_after:g}s: {names}")
        if self.stuck:
            found.append(
                f"{len(self.stuck)} running job(s) with no heartbeat for over "
                f"{self.stuck_after:g}s (a live worker will requeue or fail them)"
            )
        if self.stale_locks:
            found.append(
                f"{self.stale_locks} expired lock(s) not yet purged "
                "(see `python -m engine locks list`)"
            )
        return found

    def to_json(self) -> dict[str, Any]:
        lost = {w.record.id for w in self.lost_workers()}
        return {
            "at": self.at.isoformat(),
            "ok": not self.problems(),
            "problems": self.problems(),
            "queue": {status.value: count for status, count in self.queue.items()},
            "workers": [
                {
                    "id": w.record.id,
                    "host": w.record.host,
                    "pid": w.record.pid,
                    "started_at": w.record.started_at.isoformat(),
                    "last_heartbeat": w.record.last_heartbeat.isoformat(),
                    "heartbeat_age": round(w.age, 3),
                    "healthy": w.record.id not in lost,
                    "concurrency": w.record.concurrency,
                    "processed": w.record.processed,
                    "failed": w.record.failed,
                    "cancelled": w.record.cancelled,
                }
                for w in self.workers
            ],
            "stuck_jobs": [
                {
                    "id": j.id,
                    "worker_id": j.worker_id,
                    "last_heartbeat": j.last_heartbeat.isoformat() if j.last_heartbeat else None,
                    "attempts": j.attempts,
                }
                for j in self.stuck
            ],
            "stale_locks": self.stale_locks,
        }
