"""`AsyncSemaphoreLimiter`: the concurrency cap of one group, with statistics.

A slot is acquired *before* a child's task is created and released when the child is terminal,
so at most `max_parallel` children of a group are ever live at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    limit: int
    in_use: int
    peak: int
    waiting: int
    acquired_total: int


class AsyncSemaphoreLimiter:
    __slots__ = ("_acquired_total", "_in_use", "_limit", "_peak", "_sem", "_waiting")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self._sem = asyncio.Semaphore(limit)
        self._in_use = 0
        self._peak = 0
        self._waiting = 0
        self._acquired_total = 0

    @property
    def limit(self) -> int:
        return self._limit

    async def acquire(self) -> None:
        if self._sem.locked():
            self._waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._sem.acquire()
        self._in_use += 1
        self._acquired_total += 1
        if self._in_use > self._peak:
            self._peak = self._in_use

    def release(self) -> None:
        self._in_use -= 1
        self._sem.release()

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            self._limit, self._in_use, self._peak, self._waiting, self._acquired_total
        )
