"""Runs, subplan runs and the event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The allowed values of the CHECK constraints are written out here, as they were at this
revision: a later change of an enum needs its own revision (tests/test_migrations.py compares
these constraints with the declared tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATES = "'pending', 'running', 'completed', 'failed', 'cancelled'"
SUBPLAN_STATES = "'pending', 'running', 'completed', 'failed', 'cancelled', 'skipped'"
FAILURE_MODES = "'fail_fast', 'continue_on_error'"


def upgrade() -> None:
    op.create_table(
        "engine_runs",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("plan_name", sa.String(64), nullable=False),
        sa.Column("project", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("failure_mode", sa.String(32), nullable=False),
        sa.Column("plan_source", sa.Text(), nullable=True),
        sa.Column("plan_digest", sa.String(64), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.Column("resumed_from", sa.String(26), nullable=True),
        sa.CheckConstraint(f"state IN ({RUN_STATES})", name=op.f("ck_engine_runs_state_allowed")),
        sa.CheckConstraint(
            f"failure_mode IN ({FAILURE_MODES})", name=op.f("ck_engine_runs_failure_mode_allowed")
        ),
        sa.ForeignKeyConstraint(
            ["resumed_from"],
            ["engine_runs.id"],
            name=op.f("fk_engine_runs_resumed_from_engine_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_runs")),
    )
    op.create_index(op.f("ix_engine_runs_created_at"), "engine_runs", ["created_at"])

    op.create_table(
        "engine_subplan_runs",
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
    )
    op.create_index(
        "ix_engine_subplan_runs_run_id_position", "engine_subplan_runs", ["run_id", "position"]
    )

    op.create_table(
        "engine_events",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=True),
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_events")),
    )
    op.create_index(op.f("ix_engine_events_run_id_seq"), "engine_events", ["run_id", "seq"])


def downgrade() -> None:
    op.drop_index(op.f("ix_engine_events_run_id_seq"), table_name="engine_events")
    op.drop_table("engine_events")
    op.drop_index(op.f("ix_engine_subplan_runs_run_id_position"), table_name="engine_subplan_runs")
    op.drop_table("engine_subplan_runs")
    op.drop_index(op.f("ix_engine_runs_created_at"), table_name="engine_runs")
    op.drop_table("engine_runs")
