"""Background jobs and the workers that run them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

`engine_jobs` is the durable queue (claimed with one conditional UPDATE ... RETURNING; the
`attempts` column is the fencing token); `engine_workers` holds each live worker's heartbeat
and counters for `diagnostics`. The allowed statuses are written out as they were at this
revision (a later change needs its own revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "engine_jobs",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan_name", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(160), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("run_id", sa.String(26), nullable=True),
        sa.CheckConstraint(
            f"status IN ({JOB_STATUSES})", name=op.f("ck_engine_jobs_status_allowed")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_engine_jobs_attempts_not_negative")),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_engine_jobs_max_attempts_positive")),
        sa.CheckConstraint(
            "status <> 'running' OR (worker_id IS NOT NULL AND last_heartbeat IS NOT NULL)",
            name=op.f("ck_engine_jobs_running_has_worker"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_jobs")),
    )
    op.create_index(op.f("ix_engine_jobs_status_id"), "engine_jobs", ["status", "id"])
    op.create_index(op.f("ix_engine_jobs_worker_id"), "engine_jobs", ["worker_id"])
    op.create_index(
        op.f("ix_engine_jobs_status_last_heartbeat"), "engine_jobs", ["status", "last_heartbeat"]
    )
    op.create_index(op.f("ix_engine_jobs_finished_at"), "engine_jobs", ["finished_at"])
    op.create_table(
        "engine_workers",
        sa.Column("id", sa.String(160), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("cancelled", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engine_workers")),
    )
    op.create_index(op.f("ix_engine_workers_last_heartbeat"), "engine_workers", ["last_heartbeat"])


def downgrade() -> None:
    op.drop_index(op.f("ix_engine_workers_last_heartbeat"), table_name="engine_workers")
    op.drop_table("engine_workers")
    op.drop_index(op.f("ix_engine_jobs_finished_at"), table_name="engine_jobs")
    op.drop_index(op.f("ix_engine_jobs_status_last_heartbeat"), table_name="engine_jobs")
    op.drop_index(op.f("ix_engine_jobs_worker_id"), table_name="engine_jobs")
    op.drop_index(op.f("ix_engine_jobs_status_id"), table_name="engine_jobs")
    op.drop_table("engine_jobs")
