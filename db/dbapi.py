"""Plain DB-API statements inside a SQLAlchemy transaction, for the stage queries' hot paths.

SQLAlchemy builds a Row object per result row and processes every bound parameter; for the lookups
a batch makes (a thousand ids in, a thousand small tuples out) that cost several times what the
database itself spends (measured in `record_executions`: 5.4 us of 6 us per row on SQLite). These
helpers run hand-written SQL on the DB-API cursor of the same connection and transaction.

SQL is written with `?` placeholders (SQLite's style) and rewritten to `%s` for psycopg2, so it must
contain no literal `?` or `%`. Only SQLite and PostgreSQL are supported; callers fall back to Core
statements for any other dialect.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pydantic_core import to_json
from sqlalchemy.engine import Connection

FAST_DIALECTS = ("sqlite", "postgresql")


def has_fast_path(conn: Connection) -> bool:
    return conn.dialect.name in FAST_DIALECTS


def fetch(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """The rows of `sql` (with `?` placeholders) as DB-API tuples."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_placeholders(conn, sql), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def execute(conn: Connection, sql: str, params: Sequence[Any] = ()) -> None:
    """Run `sql` (with `?` placeholders) for its effect."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_placeholders(conn, sql), params)
    finally:
        cursor.close()


def in_ids(conn: Connection, ids: Collection[int]) -> tuple[str, Any]:
    """(`IN ...` SQL fragment with one placeholder, its parameter) for a list of integer ids.

    One parameter whatever the list's length: a JSON array read by json_each on SQLite (no limit on
    bound variables, one prepared statement for every batch size), an array with `= ANY` on PostgreSQL.
    """
    ids = [int(i) for i in ids]
    if conn.dialect.name == "sqlite":
        return "IN (SELECT value FROM json_each(?))", to_json(ids).decode()
    return "= ANY(?::bigint[])", ids  # the cast types an empty list too


def _placeholders(conn: Connection, sql: str) -> str:
    return sql.replace("?", "%s") if conn.dialect.name == "postgresql" else sql
