"""`engine.testing`: a pytest plugin for suites that test their plans and jobs without sleeps.

Installed with the package (entry point `pytest11`), so the fixtures are simply there:

- `manual_clock`: a `ManualClock`; time moves only when the test calls `advance()`.
- `memory_engine`: an open `Engine` recording in memory, on `manual_clock`, its data folder in
  `tmp_path`, no retry backoff, and none of the caller's `ENGINE_*` environment.
- `sqlite_url`: the URL of a fresh SQLite file in `tmp_path`.
- `sqlite_engine`: like `memory_engine`, recording in that SQLite file.

The engine fixtures need pytest-asyncio (as every async test does); without it they are absent.
pytest-asyncio sets a fixture up and tears it down in two different tasks, while an open Engine
holds an anyio task group that must be closed by the task that opened it: `hosted()` bridges the
two by keeping the engine open in a task of its own. Use it for your own engine fixtures.
See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import pytest

if TYPE_CHECKING:
    from engine.app import Engine
    from engine.config import Settings

__all__ = ["ManualClock", "hosted", "settings_for_test"]

T = TypeVar("T")

#: Where a ManualClock starts unless told otherwise.
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class ManualClock:
    """The `Clock` port under the test's control: `now()` and `monotonic()` move only when
    `advance()` is called, and `sleep()` returns once the clock has been advanced far enough.

    It governs what reads the Clock (timestamps, durations, anything sleeping on it); timeouts
    and retry backoff inside the dispatcher still use the event loop's time.
    """

    def __init__(self, start: datetime = EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._start = start.astimezone(UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self._changed = anyio.Event()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._elapsed + seconds, next(self._order), anyio.Event())
        heapq.heappush(self._sleepers, entry)
        self._notify()
        try:
            await entry[2].wait()
        finally:
            if not entry[2].is_set():  # cancelled while asleep
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
                self._notify()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come (they run at the
        caller's next checkpoint)."""
        if seconds < 0:
            raise ValueError(f"time only moves forward, got {seconds}")
        self._elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            heapq.heappop(self._sleepers)[2].set()
        self._notify()

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock now."""
        return len(self._sleepers)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least `count` tasks sleep on this clock (instead of guessing)."""
        while len(self._sleepers) < count:
            await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


@asynccontextmanager
async def hosted(manager: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """Enter `manager` in a task of its own and keep it open until this block exits.

    For pytest-asyncio fixtures, whose setup and teardown run in different tasks:
    `async with hosted(Engine(...)) as eng: yield eng`.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[T] = loop.create_future()
    stop = asyncio.Event()

    async def host() -> None:
        async with manager as value:
            ready.set_result(value)
            await stop.wait()

    task = loop.create_task(host())
    try:
        either: list[asyncio.Future[Any]] = [ready, task]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            await task  # entering failed: raise its error here
            raise RuntimeError("the hosted context manager returned without entering")
        yield ready.result()
    finally:
        stop.set()
        await task


def settings_for_test(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a test: data in `tmp_path`, no retry backoff, nothing from ENGINE_*."""
    from engine.config import load_settings

    values: dict[str, object] = {"data_dir": str(tmp_path / ".engine"), "retry_backoff": 0}
    values.update(overrides)
    return load_settings(environ={}, cwd=tmp_path, overrides=values)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the engine fixtures need pytest-asyncio
    pass
else:

    @pytest_asyncio.fixture
    async def memory_engine(manual_clock: ManualClock, tmp_path: Path) -> AsyncIterator[Engine]:
        from engine.app import Engine

        async with hosted(Engine(settings_for_test(tmp_path), clock=manual_clock)) as eng:
            yield eng

    @pytest_asyncio.fixture
    async def sqlite_engine(
        sqlite_url: str, manual_clock: ManualClock, tmp_path: Path
    ) -> AsyncIterator[Engine]:
        from engine.app import Engine

        engine = Engine(settings_for_test(tmp_path), database_url=sqlite_url, clock=manual_clock)
        async with hosted(engine) as eng:
            yield eng
