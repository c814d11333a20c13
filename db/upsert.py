"""INSERT ... ON CONFLICT DO NOTHING for a whole batch in one statement, on every dialect we support.

This is what makes each stage idempotent: rows a previous (crashed, concurrent or repeated) attempt
already committed hit a unique constraint and are skipped, and RETURNING tells the caller which rows
this attempt actually inserted. SQLite (>= 3.35) and PostgreSQL batch the rows into multi-row
INSERTs (SQLAlchemy's "insertmanyvalues"); other dialects fall back to one savepoint per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def insert_ignore(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, returning: Sequence[sa.Column] = ()
) -> list[sa.Row]:
    """Insert `rows` (dicts with the same keys), skipping those that violate a unique constraint.

    Returns the `returning` columns of the rows inserted now (empty when `returning` is empty); their
    order is unspecified, so return a key column to match them up.
    """
    if not rows:
        return []
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        return _insert_ignore_per_row(conn, table, rows, returning)
    stmt = insert(table).on_conflict_do_nothing()
    if not returning:
        conn.execute(stmt, list(rows))
        return []
    return list(conn.execute(stmt.returning(*returning), list(rows)))


def _insert_ignore_per_row(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], returning: Sequence[sa.Column]
) -> list[sa.Row]:
    inserted: list[sa.Row] = []
    stmt = sa.insert(table)
    if returning:
        stmt = stmt.returning(*returning)
    for row in rows:
        try:
            with conn.begin_nested():
                result = conn.execute(stmt, row)
                if returning:
                    inserted.append(result.one())
        except sa.exc.IntegrityError:
            continue
    return inserted
