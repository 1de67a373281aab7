"""Background jobs: submitting, reading and cancelling them, and what `diagnostics` reports.

The worker pool that runs them is `engine.worker`. See docs/jobs.md.
"""

from engine.jobs.diagnostics import Diagnostics, WorkerHealth
from engine.jobs.service import JobService

__all__ = ["Diagnostics", "JobService", "WorkerHealth"]
