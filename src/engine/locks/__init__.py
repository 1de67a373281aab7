"""TTL locks: `LockService` (the rules) and what runs and subplans hold (`enforce`)."""

from engine.locks.models import Backoff, HeldLock, LockGuard, LockStatistics
from engine.locks.service import LockService

__all__ = ["Backoff", "HeldLock", "LockGuard", "LockService", "LockStatistics"]
