"""The values `LockService` hands out and is configured with: backoff, statistics, held locks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from engine.domain.lock import LockRecord, Owner, Resource
from engine.errors import LockExpiredError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts while waiting for a lock: `initial * factor**n`, capped at
    `maximum`, each drawn uniformly from its upper half (jitter spreads waiters apart)."""

    initial: float = 0.05
    maximum: float = 1.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class LockStatistics:
    #: Acquires that succeeded (first takes, take-overs and re-entries).
    acquired: int
    #: Of those, re-entries by an owner that held the lock already.
    reentered: int
    #: Acquires that had to wait at least once.
    waited: int
    #: `LockConflictError`s raised.
    conflicts: int
    #: Acquire statements sent to the store.
    attempts: int
    renewed: int
    #: Holds whose lock expired or was taken over while they ran.
    lost: int
    released: int
    #: `hold` blocks open right now.
    held: int


@dataclass(slots=True)
class HeldLock:
    """One lock held by a `hold` block; `lost` is set if renewal found it gone. `handing_over`
    while another write releases it (`LockService.releases`), `released` once that write did:
    the block does not release it again on its way out."""

    resource: Resource
    owner: Owner
    ttl: float
    record: LockRecord
    lost: LockExpiredError | None = None
    handing_over: bool = False
    released: bool = False


@dataclass(slots=True)
class LockGuard:
    """The locks of one `hold_all` block."""

    locks: list[HeldLock] = field(default_factory=list)

    @property
    def lost(self) -> LockExpiredError | None:
        return next((h.lost for h in self.locks if h.lost is not None), None)
