"""problems.tests_call_id: the LLM call that wrote a problem's tests, joined by primary key; and
no index on solutions.parse_status.

Before, the tests call was only found through its item_key ("problem-<id>"), a string lookup per
problem that dominated the export's reads. Existing rows are filled from that lookup.

The parse-status index (a handful of distinct values) made PostgreSQL, before its statistics
caught up with a bulk load, intersect it with the per-problem index once per problem: triple
selection went quadratic. Queries reach solutions through their problem instead.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_solutions_parse_status", table_name="solutions")
    with op.batch_alter_table("problems") as batch:  # SQLite: copy-and-move, PostgreSQL: ALTER TABLE
        batch.add_column(sa.Column("tests_call_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_problems_tests_call_id_llm_calls"), "llm_calls", ["tests_call_id"], ["id"], ondelete="SET NULL"
        )
    problems = sa.table("problems", sa.column("id"), sa.column("run_id"), sa.column("tests_call_id"))
    calls = sa.table("llm_calls", sa.column("id"), sa.column("run_id"), sa.column("stage"), sa.column("item_key"))
    op.execute(
        problems.update().values(
            tests_call_id=sa.select(calls.c.id)
            .where(
                calls.c.run_id == problems.c.run_id,
                calls.c.stage == "tests",
                calls.c.item_key == sa.literal("problem-") + sa.cast(problems.c.id, sa.String),
            )
            .scalar_subquery()
        )
    )


def downgrade() -> None:
    op.create_index("ix_solutions_parse_status", "solutions", ["parse_status"])
    with op.batch_alter_table("problems") as batch:
        batch.drop_constraint(op.f("fk_problems_tests_call_id_llm_calls"), type_="foreignkey")
        batch.drop_column("tests_call_id")
