"""`Recorder`: write-behind recording of runs into a `Store`, off the dispatcher's path.

It listens on the engine's event bus. An event costs the dispatcher a list append and a set
insert; the flusher task (owned by the engine's task group) later writes everything that
accumulated, in one transaction (group commit: while one batch is written the next one grows).
Subplan records are snapshots of the tracker taken at flush time, so a subplan that started and
finished between two flushes is written once.

When it writes:
- a subplan or run reaching a terminal state asks for a prompt flush, which nobody awaits;
- anything else is written within `max_delay` seconds;
- `flush()` returns once everything received before the call is written: the engine awaits it
  when a run is created (so a store that cannot be written fails the run before it starts) and
  after its terminal state, before `execute()` returns, on every exit path.
So a crash loses at most the events of the batch in flight, never a run's terminal state.
A run's lock releases ride in the batch that writes its end (`settle(releasing=...)`): the
locks are freed in the same transaction, never before it.

A failed write keeps its changes for the next attempt (backing off), and `flush()` raises the
`StoreError`. This module never imports a store implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import anyio
from anyio.abc import TaskStatus

from engine.dispatch.tracker import SubplanTracker
from engine.domain.events import (
    Event,
    RunStateChanged,
    SubplanAttemptFailed,
    SubplanStateChanged,
)
from engine.domain.states import TERMINAL_RUN_STATES, TERMINAL_SUBPLAN_STATES
from engine.errors import StoreError
from engine.ports.store import Changes, LockRelease, NewRun, RunRecord, Store, SubplanRecord

#: The events a run's record is made of: the recorder listens to these only.
RUN_EVENTS: tuple[type[Event], ...] = (RunStateChanged, SubplanStateChanged, SubplanAttemptFailed)

#: Seconds a non-terminal change may wait before it is written.
MAX_DELAY = 0.5
#: Ceiling of the backoff between attempts while the store fails.
MAX_BACKOFF = 5.0
#: How long closing (or a run's last flush) waits for the store before giving up.
CLOSE_TIMEOUT = 30.0


@dataclass(slots=True)
class _Recording:
    """One run being recorded: its fixed record, its tracker, and what changed since a flush."""

    base: RunRecord
    tracker: SubplanTracker
    subplans: dict[str, SubplanRecord]
    dirty: dict[str, None] = field(default_factory=dict)
    run_dirty: bool = False
    #: Whether the subplan rows exist yet: the first flush inserts every subplan as it is then
    #: (so a subplan that finished before it is written once, not inserted and then updated).
    inserted: bool = False

    def snapshot_run(self) -> RunRecord:
        t, base = self.tracker, self.base
        started, finished = t.run_started_at, t.run_finished_at
        # Built directly, not with dataclasses.replace (several times slower): once per run
        # per flush, and a worker flushes thousands of runs a second.
        return RunRecord(
            id=base.id,
            plan_name=base.plan_name,
            state=t.run_state,
            created_at=base.created_at,
            max_parallel=base.max_parallel,
            failure_mode=base.failure_mode,
            plan_digest=base.plan_digest,
            plan_source=base.plan_source,
            project=base.project,
            started_at=started,
            finished_at=finished,
            duration=(finished - started).total_seconds() if started and finished else None,
            error=t.run_error,
            resumed_from=base.resumed_from,
        )

    def snapshot_subplan(self, path: str) -> SubplanRecord:
        s = self.tracker.subplans[path]
        first = self.subplans[path]
        # Built directly, not with dataclasses.replace: this runs once per subplan per flush.
        return SubplanRecord(
            id=first.id,
            run_id=first.run_id,
            path=path,
            position=first.position,
            kind=first.kind,
            state=s.state,
            attempts=s.attempts,
            started_at=s.started_at,
            finished_at=s.finished_at,
            duration=s.duration,
            error=s.error,
            output_tail=s.output_tail,
            log_path=s.log_path,
        )


@dataclass(slots=True)
class _Batch:
    changes: Changes
    #: run id -> (run record included, subplan paths included or None if all were inserted),
    #: to restore on failure.
    touched: dict[str, tuple[bool, list[str] | None]]
    #: How many notes this batch covers.
    upto: int


class Recorder:
    def __init__(self, store: Store, *, max_delay: float = MAX_DELAY) -> None:
        self.store = store
        self._max_delay = max_delay
        self._recordings: dict[str, _Recording] = {}
        self._created: list[NewRun] = []
        self._events: list[Event] = []
        #: Lock releases to write with the next batch (`settle(releasing=...)`).
        self._releases: list[LockRelease] = []
        #: Notes received (each event or create) and notes written: flush() waits on these.
        self._received = 0
        self._written = 0
        #: Set when anything arrives (the flusher then writes within max_delay), and when
        #: something must be written now (a terminal state, a flush() waiting).
        self._arrived = anyio.Event()
        self._urgent = anyio.Event()
        #: Set (and replaced) after every write attempt.
        self._progress = anyio.Event()
        self._attempts = 0
        self._failure: StoreError | None = None
        self._failed_attempt = 0
        self._failures_in_a_row = 0
        self._running = False
        self._closing = False

    # -- the producer side (called from the dispatcher's tasks; never awaits) ---------------

    def __call__(self, event: Event) -> None:
        """The bus callback. Only a run's own events are its log (`seq` 1, 2, ...); lock and
        job events that name the run live in the locks and jobs tables instead."""
        if not isinstance(event, RUN_EVENTS):
            return
        recording = self._recordings.get(event.run_id) if event.run_id is not None else None
        if recording is None:
            return
        self._events.append(event)
        self._received += 1
        if isinstance(event, SubplanStateChanged):
            recording.dirty[event.path] = None
            if event.to in TERMINAL_SUBPLAN_STATES:
                self._urgent.set()
        elif isinstance(event, RunStateChanged):
            recording.run_dirty = True
            if event.to in TERMINAL_RUN_STATES:
                self._urgent.set()
        elif isinstance(event, SubplanAttemptFailed):
            recording.dirty[event.path] = None
        self._arrived.set()

    async def begin(
        self,
        run: RunRecord,
        plan_json: str,
        subplans: Sequence[SubplanRecord],
        tracker: SubplanTracker,
        *,
        wait: bool = True,
    ) -> None:
        """Create the run in the store and record its changes from then on. Its subplans
        (`subplans` give their ids and places) are inserted by a later flush, as they are at
        that time: a subplan that ends before it is written once, not inserted and then updated.

        `wait` (the default): the creation is awaited, so a store that cannot be written stops
        the run before it starts. Without it the run is created by the next flush, with what
        happened to it by then (a background job: its job row already says it runs, and the
        run's end is awaited as always).
        """
        new = NewRun(run, plan_json, [])
        self._created.append(new)
        self._received += 1
        self._arrived.set()
        if wait:
            try:
                # Shielded: a create half-written when a cancellation arrives would leave a
                # run that nobody records any more.
                await self.settle()
            except BaseException:
                if new in self._created:
                    self._created.remove(new)
                raise
        self._recordings[run.id] = _Recording(run, tracker, {s.path: s for s in subplans})

    # -- waiting for durability ------------------------------------------------------------

    async def flush(self) -> None:
        """Return once everything received before this call is written; raise StoreError if
        an attempt made after this call failed to write it."""
        if not self._running:
            raise RuntimeError("the recorder is not running (use `async with Engine(...)`)")
        target = self._received
        first_attempt = self._attempts + 1
        while self._written < target:
            if not self._running:
                raise StoreError(f"{self.store.location}: the recorder has stopped")
            progress = self._progress
            self._urgent.set()
            self._arrived.set()
            await progress.wait()
            failure = self._failure
            if self._written < target and failure and self._failed_attempt >= first_attempt:
                raise failure

    async def settle(self, *, releasing: Sequence[LockRelease] = ()) -> None:
        """`flush()`, shielded from cancellation and bounded by CLOSE_TIMEOUT: for the end of
        a run and for closing, which must record what happened even while being cancelled.

        `releasing`: lock releases written in the same transaction as everything received so
        far (a run's locks, with its end: one write instead of two, and the lock is never free
        while the run still looks unfinished). Each is marked `written` when it was; if this
        raises, those not yet sent are withdrawn, for the caller to release itself.
        """
        if releasing:
            self._releases.extend(releasing)
            self._received += 1
        try:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
                await self.flush()
            if scope.cancelled_caught:
                raise StoreError(
                    f"{self.store.location}: recording did not finish within {CLOSE_TIMEOUT:g}s"
                ) from self._failure
        except BaseException:
            if releasing:
                withdrawn = set(map(id, releasing))
                self._releases = [r for r in self._releases if id(r) not in withdrawn]
            raise

    # -- the flusher task --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The flusher: runs until `close()`. Start it with `await task_group.start(rec.run)`."""
        self._running = True
        task_status.started()
        try:
            while True:
                await self._arrived.wait()
                if self._closing:
                    return
                if not self._urgent.is_set():
                    with anyio.move_on_after(self._delay()):
                        await self._urgent.wait()
                self._arrived, self._urgent = anyio.Event(), anyio.Event()
                await self._write_pending()
                if self._pending():  # failed: try again after the backoff
                    self._arrived.set()
        finally:
            self._running = False
            self._progress.set()

    async def close(self) -> None:
        """Write what is left (bounded by CLOSE_TIMEOUT, shielded) and stop the flusher; what
        could not be written by then is lost, and the StoreError is raised."""
        if not self._running:
            return
        try:
            await self.settle()
        finally:
            with anyio.CancelScope(shield=True):
                self._closing = True
                self._arrived.set()
                self._urgent.set()
                while self._running:
                    await self._progress.wait()

    def _pending(self) -> bool:
        return self._written < self._received

    def _delay(self) -> float:
        if self._failures_in_a_row:
            return min(MAX_BACKOFF, self._max_delay * 2.0**self._failures_in_a_row)
        return self._max_delay

    async def _write_pending(self) -> None:
        self._attempts += 1
        batch = self._collect()
        try:
            if batch.changes:
                await self.store.write(batch.changes)
        except StoreError as exc:
            self._restore(batch)
            self._failure = exc
            self._failed_attempt = self._attempts
            self._failures_in_a_row += 1
        else:
            self._written = batch.upto
            self._failure = None
            self._failures_in_a_row = 0
            self._forget_finished(batch)
        finally:
            progress, self._progress = self._progress, anyio.Event()
            progress.set()

    def _collect(self) -> _Batch:
        changes = Changes(created=self._created, events=self._events, releases=self._releases)
        self._created, self._events, self._releases = [], [], []
        touched: dict[str, tuple[bool, list[str] | None]] = {}
        creating = {new.run.id: i for i, new in enumerate(changes.created)}
        for run_id, rec in self._recordings.items():
            if rec.inserted and not (rec.run_dirty or rec.dirty):
                continue
            if rec.run_dirty:
                position = creating.get(run_id)
                if position is None:
                    changes.runs.append(rec.snapshot_run())
                else:  # created by this batch: inserted as it is now, not updated after
                    new = changes.created[position]
                    run = rec.snapshot_run()
                    changes.created[position] = NewRun(run, new.plan_json, new.subplans)
            if rec.inserted:
                paths: list[str] | None = list(rec.dirty)
                changes.subplans.extend(rec.snapshot_subplan(p) for p in rec.dirty)
            else:
                paths = None
                changes.added.extend(rec.snapshot_subplan(p) for p in rec.subplans)
                rec.inserted = True
            touched[run_id] = (rec.run_dirty, paths)
            rec.run_dirty, rec.dirty = False, {}
        return _Batch(changes, touched, self._received)

    def _restore(self, batch: _Batch) -> None:
        """Put a failed batch back in front of what arrived meanwhile."""
        self._created[:0] = batch.changes.created
        self._events[:0] = batch.changes.events
        self._releases[:0] = batch.changes.releases
        for run_id, (run_dirty, paths) in batch.touched.items():
            rec = self._recordings[run_id]
            rec.run_dirty = rec.run_dirty or run_dirty
            if paths is None:
                rec.inserted = False  # insert them all again (with what changed meanwhile)
            else:
                rec.dirty = {**dict.fromkeys(paths), **rec.dirty}

    def _forget_finished(self, batch: _Batch) -> None:
        created = (new.run for new in batch.changes.created)
        for run in chain(batch.changes.runs, created):
            rec = self._recordings.get(run.id)
            if (
                rec is not None
                and run.state in TERMINAL_RUN_STATES
                and rec.inserted
                and not (rec.run_dirty or rec.dirty)
            ):
                del self._recordings[run.id]
