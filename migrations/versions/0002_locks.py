"""TTL locks on plans, projects and declared resources.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

One row per held resource; (resource_type, resource_id) is the primary key, and so the conflict
target of the single-statement acquire. The allowed resource types are written out as they were
at this revision (a later change needs its own revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_KINDS = "'plan', 'project', 'resource'"


def upgrade() -> None:
    op.create_table(
        "engine_locks",
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
            f"resource_type IN ({LOCK_KINDS})",
            name=op.f("ck_engine_locks_resource_type_allowed"),
        ),
        sa.CheckConstraint("depth >= 1", name=op.f("ck_engine_locks_depth_positive")),
        sa.CheckConstraint("pid >= 0", name=op.f("ck_engine_locks_pid_not_negative")),
        sa.CheckConstraint(
            "expires_at > acquired_at", name=op.f("ck_engine_locks_expires_after_acquired")
        ),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", name=op.f("pk_engine_locks")),
    )
    op.create_index(op.f("ix_engine_locks_owner_id"), "engine_locks", ["owner_id"])
    op.create_index(op.f("ix_engine_locks_expires_at"), "engine_locks", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_engine_locks_expires_at"), table_name="engine_locks")
    op.drop_index(op.f("ix_engine_locks_owner_id"), table_name="engine_locks")
    op.drop_table("engine_locks")
