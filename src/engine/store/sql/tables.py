"""The store's tables in SQLAlchemy Core: the one declaration the migrations must equal.

Every status column has a CHECK constraint whose allowed values are the members of the domain
enum (never a second list). Every query the CLI makes has an index. Primary keys are ULIDs (26
characters, time-ordered). Times are UTC: aware datetimes in, aware datetimes out, on SQLite too.
Names carry an `engine_` prefix so that a shared PostgreSQL database has room for other tenants;
the jobs table of a later issue joins this same `metadata`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from engine.domain.lock import LockKind
from engine.domain.states import AsyncJobStatus, FailureMode, RunState, SubplanState

#: Alembic's own bookkeeping table (not `alembic_version`: a shared database may have one).
VERSION_TABLE = "engine_schema_version"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive ISO text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps UTC times only")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def one_of(column: str, enum: type[StrEnum]) -> sa.CheckConstraint:
    """`column IN (...)` over the enum's values; the constraint is named after the column."""
    allowed = ", ".join(f"'{member.value}'" for member in enum)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_allowed")


ULID = sa.String(26)

runs = sa.Table(
    "engine_runs",
    metadata,
    sa.Column("id", ULID, primary_key=True),
    sa.Column("plan_name", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("duration", sa.Double(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("max_parallel", sa.Integer(), nullable=False),
    sa.Column("failure_mode", sa.String(32), nullable=False),
    sa.Column("plan_source", sa.Text(), nullable=True),
    sa.Column("plan_digest", sa.String(64), nullable=False),
    sa.Column("plan", sa.Text(), nullable=False),
    sa.Column(
        "resumed_from",
        ULID,
        sa.ForeignKey("engine_runs.id", ondelete="SET NULL"),
        nullable=True,
    ),
    one_of("state", RunState),
    one_of("failure_mode", FailureMode),
    # `runs list`: newest first.
    sa.Index(None, "created_at"),
)

# A worker writes a few rows into each of these for every job, thousands a second: each index
# is one more B-tree to change per row (and one more page to write per commit). So they have the
# indexes their queries need and no more, and on SQLite, where a table is a B-tree of its own
# beside its primary key's, the tables of small rows are WITHOUT ROWID: the primary key is the
# table (`sqlite_with_rowid=False`; PostgreSQL ignores it).

subplan_runs = sa.Table(
    "engine_subplan_runs",
    metadata,
    sa.Column("id", ULID, primary_key=True),
    sa.Column(
        "run_id",
        ULID,
        sa.ForeignKey("engine_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("duration", sa.Double(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("output_tail", sa.Text(), nullable=True),
    sa.Column("log_path", sa.Text(), nullable=True),
    one_of("state", SubplanState),
    # The key of every update, and a run's subplans for `runs show` and `resume` (which put
    # them in plan order, `position`, themselves: a run has few).
    sa.UniqueConstraint("run_id", "path"),
    sqlite_with_rowid=False,
)

events = sa.Table(
    "engine_events",
    metadata,
    # A run's event log, in order: its key is the run and the event's number in it.
    sa.Column(
        "run_id",
        ULID,
        sa.ForeignKey("engine_runs.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("path", sa.Text(), nullable=True),
    #: The whole event as its JSON line (schema in docs/events.md).
    sa.Column("payload", sa.Text(), nullable=False),
    sqlite_with_rowid=False,
)

locks = sa.Table(
    "engine_locks",
    metadata,
    # (resource_type, resource_id) is the key and the conflict target of the one-statement
    # acquire (engine.store.sql.locks).
    sa.Column("resource_type", sa.String(16), primary_key=True),
    sa.Column("resource_id", sa.String(64), primary_key=True),
    #: `host:pid:run_id[/subplan path]` (engine.domain.lock.Owner).
    sa.Column("owner_id", sa.Text(), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    #: Re-entrant acquires by the same owner; the row is deleted when it would reach zero.
    sa.Column("depth", sa.Integer(), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("run_id", ULID, nullable=True),
    one_of("resource_type", LockKind),
    sa.CheckConstraint("depth >= 1", name="depth_positive"),
    sa.CheckConstraint("pid >= 0", name="pid_not_negative"),
    sa.CheckConstraint("expires_at > acquired_at", name="expires_after_acquired"),
    # `release_all_for_owner`; purging and counting expired locks.
    sa.Index(None, "owner_id"),
    sa.Index(None, "expires_at"),
    sqlite_with_rowid=False,
)

jobs = sa.Table(
    "engine_jobs",
    metadata,
    sa.Column("id", ULID, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("plan_name", sa.String(64), nullable=False),
    #: Versioned JSON: the validated plan and its working folder (engine.domain.job).
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    #: Claims so far; the fencing token every write of the current owner is conditional on.
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("max_attempts", sa.Integer(), nullable=False),
    sa.Column("worker_id", sa.String(160), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("last_heartbeat", UTCDateTime(), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("result", sa.Text(), nullable=True),
    # No foreign key: the run is recorded by the worker's recorder, the job by the queue; a
    # job row must never fail to update because of the order the two are written in.
    sa.Column("run_id", ULID, nullable=True),
    one_of("status", AsyncJobStatus),
    sa.CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    sa.CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
    sa.CheckConstraint(
        "status <> 'running' OR (worker_id IS NOT NULL AND last_heartbeat IS NOT NULL)",
        name="running_has_worker",
    ),
    # The claim (oldest queued first) and `jobs list --status`.
    sa.Index(None, "status", "id"),
    # A worker's heartbeat (all its running jobs in one statement).
    sa.Index(None, "worker_id"),
    # Stuck detection: running jobs by heartbeat age.
    sa.Index(None, "status", "last_heartbeat"),
    # TTL cleanup of finished jobs.
    sa.Index(None, "finished_at"),
)

workers = sa.Table(
    "engine_workers",
    metadata,
    #: `host:pid:ulid` (engine.domain.job.new_worker_id).
    sa.Column("id", sa.String(160), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("last_heartbeat", UTCDateTime(), nullable=False),
    sa.Column("concurrency", sa.Integer(), nullable=False),
    sa.Column("processed", sa.Integer(), nullable=False),
    sa.Column("failed", sa.Integer(), nullable=False),
    sa.Column("cancelled", sa.Integer(), nullable=False),
    # Forgetting workers gone for longer than the job TTL.
    sa.Index(None, "last_heartbeat"),
)
