"""runs.driver and runs.heartbeat_at: the lease of the one driver process that works on a run.

The unique constraints keep a second driver from duplicating rows, but not from paying for the same
LLM calls: both would take the same pending batches. The lease (db/lease.py) lets one driver work
on a run at a time; existing runs start without a holder.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("driver", sa.String(300), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("driver")
