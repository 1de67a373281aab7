"""Fewer B-trees per row written: events keyed by (run, seq); small tables without rowid.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

A worker writes a run, its subplans, their events and a plan lock for every job, thousands a
second; every index is one more B-tree changed per row. So:

- `engine_events` loses its surrogate `id`: a run's log is keyed by `(run_id, seq)`, which is
  also the order it is read in (the index on those two columns goes; `run_id` is required).
- `engine_subplan_runs` loses its index on `(run_id, position)`: a run's subplans are found by
  the unique `(run_id, path)` and put in plan order by the reader.
- On SQLite, those two tables and `engine_locks` are WITHOUT ROWID (the primary key is the
  table, not a second B-tree beside it). SQLite cannot change that in place, so the three are
  copied into new tables; PostgreSQL changes its keys and indexes in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBPLAN_STATES = "'pending', 'running', 'completed', 'failed', 'cancelled', 'skipped'"
LOCK_KINDS = "'plan', 'project', 'resource'"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _subplans(name: str, *, lean: bool) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("output_tail", sa.Text(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.CheckConstraint(
            f"state IN ({SUBPLAN_STATES})", name=op.f("ck_engine_subplan_runs_state_allowed")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["engine_runs.id"],
            name=op.f("fk_engine_subplan_runs_run_id_engine_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_subplan_runs")),
        sa.UniqueConstraint("run_id", "path", name=op.f("uq_engine_subplan_runs_run_id_path")),
        sqlite_with_rowid=not lean,
    )


def _events(name: str, *, lean: bool) -> None:
    key = ["run_id", "seq"] if lean else ["id"]
    op.create_table(
        name,
        *([] if lean else [sa.Column("id", sa.String(26), nullable=False)]),
        sa.Column("run_id", sa.String(26), nullable=not lean),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["engine_runs.id"],
            name=op.f("fk_engine_events_run_id_engine_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_engine_events")),
        sqlite_with_rowid=not lean,
    )


def _locks(name: str, *, lean: bool) -> None:
    op.create_table(
        name,
        sa.Column("resource_type", sa.String(16), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("owner_id", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=True),
        sa.CheckConstraint(
            f"resource_type IN ({LOCK_KINDS})", name=op.f("ck_engine_locks_resource_type_allowed")
        ),
        sa.CheckConstraint("depth >= 1", name=op.f("ck_engine_locks_depth_positive")),
        sa.CheckConstraint("pid >= 0", name=op.f("ck_engine_locks_pid_not_negative")),
        sa.CheckConstraint(
            "expires_at > acquired_at", name=op.f("ck_engine_locks_expires_after_acquired")
        ),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", name=op.f("pk_engine_locks")),
        sqlite_with_rowid=not lean,
    )


def _copy(
    table: str, create: Callable[[str], None], columns: str, select: str, rest: str = ""
) -> None:
    """SQLite: the table again, as `create` makes it, with its rows (`select ... rest`, from
    the old table, gives `columns`; a row whose key is taken is left out); its indexes are
    made again by the caller."""
    new = f"_new_{table}"
    create(new)
    op.execute(f"INSERT OR IGNORE INTO {new} ({columns}) SELECT {select} FROM {table} {rest}")
    op.drop_table(table)
    op.rename_table(new, table)


_SUBPLAN_COLUMNS = (
    "id, run_id, path, position, kind, state, attempts, started_at, finished_at, duration, "
    "error, output_tail, log_path"
)
_EVENT_COLUMNS = "run_id, seq, type, at, path, payload"
_LOCK_COLUMNS = (
    "resource_type, resource_id, owner_id, acquired_at, expires_at, depth, host, pid, run_id"
)


def upgrade() -> None:
    if _sqlite():
        _copy(
            "engine_subplan_runs",
            lambda name: _subplans(name, lean=True),
            _SUBPLAN_COLUMNS,
            _SUBPLAN_COLUMNS,
        )
        _copy(
            "engine_events",
            lambda name: _events(name, lean=True),
            _EVENT_COLUMNS,
            _EVENT_COLUMNS,
            # Events outside a run, and a second event of one number in a run, have no key:
            # the engine never wrote either.
            "WHERE run_id IS NOT NULL ORDER BY id",
        )
        _copy("engine_locks", lambda name: _locks(name, lean=True), _LOCK_COLUMNS, _LOCK_COLUMNS)
        _lock_indexes()
        return
    op.drop_index("ix_engine_subplan_runs_run_id_position", table_name="engine_subplan_runs")
    op.drop_index("ix_engine_events_run_id_seq", table_name="engine_events")
    op.drop_constraint("pk_engine_events", "engine_events", type_="primary")
    op.execute("DELETE FROM engine_events WHERE run_id IS NULL")  # as on SQLite, above
    op.execute(
        "DELETE FROM engine_events AS a USING engine_events AS b "
        "WHERE a.run_id = b.run_id AND a.seq = b.seq AND a.id > b.id"
    )
    op.drop_column("engine_events", "id")
    op.alter_column("engine_events", "run_id", existing_type=sa.String(26), nullable=False)
    op.create_primary_key("pk_engine_events", "engine_events", ["run_id", "seq"])


def downgrade() -> None:
    if _sqlite():
        _copy(
            "engine_subplan_runs",
            lambda name: _subplans(name, lean=False),
            _SUBPLAN_COLUMNS,
            _SUBPLAN_COLUMNS,
        )
        # Revision 0003's events had an id of their own: a new random one each.
        _copy(
            "engine_events",
            lambda name: _events(name, lean=False),
            f"id, {_EVENT_COLUMNS}",
            f"upper(hex(randomblob(13))), {_EVENT_COLUMNS}",
        )
        _copy("engine_locks", lambda name: _locks(name, lean=False), _LOCK_COLUMNS, _LOCK_COLUMNS)
        _lock_indexes()
    else:
        op.drop_constraint("pk_engine_events", "engine_events", type_="primary")
        op.add_column("engine_events", sa.Column("id", sa.String(26), nullable=True))
        op.execute(
            "UPDATE engine_events "
            "SET id = upper(substr(md5(random()::text || run_id || seq), 1, 26))"
        )
        op.alter_column("engine_events", "id", existing_type=sa.String(26), nullable=False)
        op.alter_column("engine_events", "run_id", existing_type=sa.String(26), nullable=True)
        op.create_primary_key("pk_engine_events", "engine_events", ["id"])
    op.create_index("ix_engine_events_run_id_seq", "engine_events", ["run_id", "seq"])
    op.create_index(
        "ix_engine_subplan_runs_run_id_position", "engine_subplan_runs", ["run_id", "position"]
    )


def _lock_indexes() -> None:
    op.create_index("ix_engine_locks_owner_id", "engine_locks", ["owner_id"])
    op.create_index("ix_engine_locks_expires_at", "engine_locks", ["expires_at"])
