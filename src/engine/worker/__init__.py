"""The worker pool that runs background jobs (`python -m engine worker`, `Engine.worker()`)."""

from engine.worker.models import WorkerHealthReport, WorkerSettings
from engine.worker.pool import WorkerPool

__all__ = ["WorkerHealthReport", "WorkerPool", "WorkerSettings"]
