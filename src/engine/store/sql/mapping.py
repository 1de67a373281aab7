"""Records <-> rows. Pure functions over the tables in `tables`; no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from engine.domain.events import Event
from engine.domain.states import FailureMode, RunState, SubplanState
from engine.ports.store import RunRecord, SubplanRecord

#: Run columns an update may change; the rest are fixed when the run is created.
RUN_UPDATE_COLUMNS = ("state", "started_at", "finished_at", "duration", "error")
#: Subplan columns an update may change (the rest are fixed when the run is created).
SUBPLAN_UPDATE_COLUMNS = (
    "state",
    "attempts",
    "started_at",
    "finished_at",
    "duration",
    "error",
    "output_tail",
    "log_path",
)
RUN_COLUMNS = (
    "id",
    "plan_name",
    "project",
    "state",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
    "error",
    "max_parallel",
    "failure_mode",
    "plan_source",
    "plan_digest",
    "plan",
    "resumed_from",
)
SUBPLAN_COLUMNS = ("id", "run_id", "path", "position", "kind", *SUBPLAN_UPDATE_COLUMNS)
EVENT_COLUMNS = ("run_id", "seq", "type", "at", "path", "payload")

#: A datetime as the driver takes it: the SQLite text form, or the aware datetime itself.
TimeParam = Callable[[datetime | None], datetime | str | None]


# The hot rows below are tuples for driver-level executemany, in the column orders above:
# SQLAlchemy's per-row parameter processing would cost more than the database does.


def run_update(run: RunRecord, time: TimeParam) -> tuple[Any, ...]:
    """RUN_UPDATE_COLUMNS, then the run's id."""
    return (
        run.state.value,
        time(run.started_at),
        time(run.finished_at),
        run.duration,
        run.error,
        run.id,
    )


def run_row(run: RunRecord, plan_json: str, time: TimeParam) -> tuple[Any, ...]:
    """A new run, in RUN_COLUMNS order."""
    return (
        run.id,
        run.plan_name,
        run.project,
        run.state.value,
        time(run.created_at),
        time(run.started_at),
        time(run.finished_at),
        run.duration,
        run.error,
        run.max_parallel,
        run.failure_mode.value,
        run.plan_source,
        run.plan_digest,
        plan_json,
        run.resumed_from,
    )


def subplan_row(sub: SubplanRecord, time: TimeParam) -> tuple[Any, ...]:
    return (
        sub.id,
        sub.run_id,
        sub.path,
        sub.position,
        sub.kind,
        *subplan_update(sub, time)[:-2],
    )


def subplan_update(sub: SubplanRecord, time: TimeParam) -> tuple[Any, ...]:
    """SUBPLAN_UPDATE_COLUMNS, then the key (run_id, path)."""
    return (
        sub.state.value,
        sub.attempts,
        time(sub.started_at),
        time(sub.finished_at),
        sub.duration,
        sub.error,
        sub.output_tail,
        sub.log_path,
        sub.run_id,
        sub.path,
    )


def event_rows(events: Sequence[Event], time: TimeParam) -> list[tuple[Any, ...]]:
    return [
        (e.run_id, e.seq, e.type, time(e.at), getattr(e, "path", None), e.to_json()) for e in events
    ]


def remembered(time: TimeParam) -> TimeParam:
    """`time` that formats each datetime object once: a run's records and its events share
    their times (the event of a start is stamped with the start's own object). Keyed by the
    object's identity, so only for the rows of one batch, whose objects are all alive."""
    seen: dict[int, datetime | str | None] = {}

    def once(value: datetime | None) -> datetime | str | None:
        if value is None:
            return None
        key = id(value)
        if key not in seen:
            seen[key] = time(value)
        return seen[key]

    return once


def sqlite_time(value: datetime | None) -> str | None:
    """The text SQLAlchemy's SQLite DATETIME reads back: naive UTC with microseconds."""
    if value is None:
        return None
    # "YYYY-MM-DD HH:MM:SS.ffffff" (26 characters), then the "+00:00" that is cut off.
    return _utc(value).isoformat(" ", "microseconds")[:26]


def aware_time(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the store keeps UTC times only")
    return value.astimezone(UTC)


def run_record(row: Mapping[Any, Any]) -> RunRecord:
    return RunRecord(
        id=row["id"],
        plan_name=row["plan_name"],
        project=row["project"],
        state=RunState(row["state"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration=row["duration"],
        error=row["error"],
        max_parallel=row["max_parallel"],
        failure_mode=FailureMode(row["failure_mode"]),
        plan_source=row["plan_source"],
        plan_digest=row["plan_digest"],
        resumed_from=row["resumed_from"],
    )


def subplan_record(row: Mapping[Any, Any]) -> SubplanRecord:
    return SubplanRecord(
        id=row["id"],
        run_id=row["run_id"],
        path=row["path"],
        position=row["position"],
        kind=row["kind"],
        state=SubplanState(row["state"]),
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration=row["duration"],
        error=row["error"],
        output_tail=row["output_tail"],
        log_path=row["log_path"],
    )


def event_from(type_: str, payload: str) -> Event:
    """The typed event a stored JSON line came from (a plain `Event` for an unknown type)."""
    cls = event_classes().get(type_)
    if cls is None:
        event_classes.cache_clear()  # an event family imported since the last look
        cls = event_classes().get(type_, Event)
    return cls.model_validate_json(payload)


@cache
def event_classes() -> dict[str, type[Event]]:
    """`type` string -> event class, for every subclass of `Event` defined so far."""
    found: dict[str, type[Event]] = {}
    pending: list[type[Event]] = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        default = cls.model_fields["type"].default
        if isinstance(default, str):
            found[default] = cls
    return found
