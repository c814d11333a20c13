"""problems.selection_check: a queue for triple selection.

`record_executions` sets it on the problems whose solutions it recorded; `select_triples` looks at
those problems only and clears the flag once a problem is final (a triple, or every parsed
solution executed without a pass). Before, each call scanned every problem of the run: 22 s at
100k problems, after every execution batch. Existing problems that are not final yet are queued.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("problems") as batch:
        batch.add_column(sa.Column("selection_check", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_problems_selection_queue", "problems", ["run_id", "selection_check"])
    problems = sa.table("problems", sa.column("id"), sa.column("selection_check", sa.Boolean))
    triples = sa.table("triples", sa.column("problem_id"))
    solutions = sa.table("solutions", sa.column("id"), sa.column("problem_id"))
    executions = sa.table("executions", sa.column("solution_id"))
    op.execute(
        problems.update()
        .where(
            ~sa.exists().where(triples.c.problem_id == problems.c.id),
            sa.exists().where(solutions.c.problem_id == problems.c.id, executions.c.solution_id == solutions.c.id),
        )
        .values(selection_check=True)
    )


def downgrade() -> None:
    op.drop_index("ix_problems_selection_queue", table_name="problems")
    with op.batch_alter_table("problems") as batch:
        batch.drop_column("selection_check")
