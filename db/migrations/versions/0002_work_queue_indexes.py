"""Indexes for the work queue and the funnel: pending tests/solutions per run, parse status, outcomes,
triples per run, and problem hashes across runs (export dedup).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES: list[tuple[str, str, list[str]]] = [
    ("ix_problems_tests_queue", "problems", ["run_id", "status", "tests_status"]),
    ("ix_problems_solutions_queue", "problems", ["run_id", "tests_status", "solutions_status"]),
    ("ix_problems_norm_hash", "problems", ["norm_hash"]),
    ("ix_solutions_parse_status", "solutions", ["parse_status"]),
    ("ix_executions_outcome", "executions", ["outcome"]),
    ("ix_triples_run", "triples", ["run_id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
