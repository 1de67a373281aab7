"""`SubplanTracker`: the state of every subplan of one run, and the ONE place that changes it.

Transitions are checked against `SUBPLAN_TRANSITIONS`; an illegal one raises
`InvalidTransitionError`. Events are built only when somebody listens (`emit` is not None), so
the in-process fast path pays for a state check and a few attribute writes, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from engine.domain.events import (
    Event,
    RunStateChanged,
    SubplanAttemptFailed,
    SubplanStateChanged,
)
from engine.domain.states import (
    RUN_TRANSITIONS,
    SUBPLAN_TRANSITIONS,
    TERMINAL_SUBPLAN_STATES,
    RunState,
    SubplanState,
)
from engine.errors import InvalidTransitionError
from engine.ports.clock import Clock

Emit = Callable[[Event], None]


class SubplanStatus:
    """Mutable record of one subplan; only the tracker writes it."""

    __slots__ = (
        "_t0",
        "_t1",
        "attempts",
        "error",
        "finished_at",
        "kind",
        "log_path",
        "output_tail",
        "path",
        "result",
        "started_at",
        "state",
    )

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.state = SubplanState.PENDING
        self.attempts = 0
        self.error: str | None = None
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.output_tail: str | None = None
        self.log_path: str | None = None
        self.result: Any = None
        self._t0: float | None = None
        self._t1: float | None = None

    @property
    def duration(self) -> float | None:
        if self._t0 is None:
            return None
        return (self._t1 if self._t1 is not None else self._t0) - self._t0


class SubplanTracker:
    def __init__(
        self,
        run_id: str,
        plan_name: str,
        paths: Iterable[tuple[str, str]],
        *,
        clock: Clock,
        emit: Emit | None = None,
        wall_times: bool = True,
    ) -> None:
        self.run_id = run_id
        self.plan_name = plan_name
        self.clock = clock
        self.emit = emit
        #: Wall-clock start/finish per subplan; the in-process fast path skips them if unobserved.
        self._wall = wall_times or emit is not None
        self.run_state = RunState.PENDING
        self.run_error: str | None = None
        self.run_started_at: datetime | None = None
        self.run_finished_at: datetime | None = None
        self._seq = 0
        self.subplans: dict[str, SubplanStatus] = {
            path: SubplanStatus(path, kind) for path, kind in paths
        }

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def set_run_state(self, new: RunState, error: str | None = None) -> None:
        old = self.run_state
        if new not in RUN_TRANSITIONS[old]:
            raise InvalidTransitionError(f"run {self.run_id}", old, new)
        now = self.clock.now()
        self.run_state = new
        if new is RunState.RUNNING:
            self.run_started_at = now
        elif new in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
            self.run_finished_at = now
            self.run_error = error
        if self.emit is not None:
            self.emit(
                RunStateChanged(
                    at=now,
                    seq=self._next_seq(),
                    run_id=self.run_id,
                    plan=self.plan_name,
                    from_=old,
                    to=new,
                    error=error,
                )
            )

    def transition(self, path: str, new: SubplanState, error: str | None = None) -> SubplanStatus:
        status = self.subplans[path]
        old = status.state
        if new not in SUBPLAN_TRANSITIONS[old]:
            raise InvalidTransitionError(f"subplan {path!r}", old, new)
        status.state = new
        if new is SubplanState.RUNNING:
            status._t0 = self.clock.monotonic()
            if self._wall:
                status.started_at = self.clock.now()
        elif new in TERMINAL_SUBPLAN_STATES:
            status.error = error
            if status._t0 is not None:
                status._t1 = self.clock.monotonic()
            if self._wall:
                status.finished_at = self.clock.now()
        if self.emit is not None:
            self.emit(
                SubplanStateChanged(
                    at=status.finished_at or status.started_at or self.clock.now(),
                    seq=self._next_seq(),
                    run_id=self.run_id,
                    path=path,
                    from_=old,
                    to=new,
                    attempt=status.attempts,
                    error=error,
                    duration=status.duration if new in TERMINAL_SUBPLAN_STATES else None,
                )
            )
        return status

    def attempt_failed(self, path: str, error: str, retry_in: float) -> None:
        status = self.subplans[path]
        if self.emit is not None:
            self.emit(
                SubplanAttemptFailed(
                    at=self.clock.now(),
                    seq=self._next_seq(),
                    run_id=self.run_id,
                    path=path,
                    attempt=status.attempts,
                    error=error,
                    retry_in=retry_in,
                )
            )

    def counts(self) -> dict[SubplanState, int]:
        out = dict.fromkeys(SubplanState, 0)
        for status in self.subplans.values():
            out[status.state] += 1
        return out
