"""INSERT ... ON CONFLICT DO NOTHING for a whole batch, on every dialect we support.

This is what makes each stage idempotent: rows a previous (crashed, concurrent or repeated) attempt
already committed hit a unique constraint and are skipped, and RETURNING tells the caller which rows
this attempt actually inserted.

On SQLite and PostgreSQL the rows go out as multi-row `INSERT ... VALUES (...), (...) ON CONFLICT DO
NOTHING [RETURNING ...]` statements on the DB-API cursor of the same connection (and transaction).
That skips SQLAlchemy's per-row parameter processing, which costs more than the database's own work
at these batch sizes (bench/db.py: about 3x). Values are converted here the way the column types
would (JSON -> text); nothing else in our schema needs a conversion. Other dialects go through Core
with one savepoint per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json
from sqlalchemy.engine import Connection

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER (3.32+) is 32766; psycopg2 interpolates on the client,
# where a statement of a few thousand rows is the sweet spot.
_SQLITE_MAX_PARAMS = 32_000
_MAX_ROWS_PER_STATEMENT = 2_000


def _to_json(value: Any) -> str | None:
    # pydantic-core's encoder: same JSON as json.dumps for our values, about 4x faster
    return None if value is None else to_json(value).decode()


def _converter(column: sa.Column):  # -> Callable[[Any], Any] | None
    """JSON columns (JSONB on PostgreSQL, a variant of JSON) take their value as JSON text."""
    return _to_json if isinstance(column.type, sa.JSON) else None


def insert_ignore(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], *, returning: Sequence[sa.Column] = ()
) -> list[tuple]:
    """Insert `rows` (dicts with the same keys), skipping those that violate a unique constraint.

    Returns the `returning` columns (as tuples) of the rows inserted now, empty when `returning` is
    empty; their order is unspecified, so return a key column to match them up.
    """
    if not rows:
        return []
    names = list(rows[0].keys())
    return insert_ignore_values(conn, table, names, [[row[n] for n in names] for row in rows], returning=returning)


def insert_ignore_values(
    conn: Connection,
    table: sa.Table,
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    returning: Sequence[sa.Column] = (),
) -> list[tuple]:
    """`insert_ignore` for rows given as value sequences in the order of the column `names` (the hot
    paths build these directly: no dict per row)."""
    if not rows:
        return []
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        return _insert_ignore_per_row(conn, table, [dict(zip(names, row)) for row in rows], returning)
    columns = [table.c[n] for n in names]
    converters = [(i, f) for i, f in ((i, _converter(c)) for i, c in enumerate(columns)) if f is not None]
    quote = conn.dialect.identifier_preparer.quote
    placeholder = "?" if dialect == "sqlite" else "%s"
    row_sql = "(" + ", ".join([placeholder] * len(names)) + ")"
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) VALUES "
    tail = " ON CONFLICT DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(quote(c.name) for c in returning)
    per_statement = _MAX_ROWS_PER_STATEMENT
    if dialect == "sqlite":
        per_statement = max(1, min(per_statement, _SQLITE_MAX_PARAMS // len(names)))
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    inserted: list[tuple] = []
    try:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params: list[Any] = []
            if converters:
                for row in chunk:
                    values = list(row)
                    for i, convert in converters:
                        values[i] = convert(values[i])
                    params.extend(values)
            else:
                for row in chunk:
                    params.extend(row)
            cursor.execute(head + ", ".join([row_sql] * len(chunk)) + tail, params)
            if returning:
                inserted.extend(tuple(r) for r in cursor.fetchall())
    finally:
        cursor.close()
    return inserted


def _insert_ignore_per_row(
    conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], returning: Sequence[sa.Column]
) -> list[tuple]:
    inserted: list[tuple] = []
    stmt = sa.insert(table)
    if returning:
        stmt = stmt.returning(*returning)
    for row in rows:
        try:
            with conn.begin_nested():
                result = conn.execute(stmt, row)
                if returning:
                    inserted.append(tuple(result.one()))
        except sa.exc.IntegrityError:
            continue
    return inserted


def update_many(
    conn: Connection, table: sa.Table, key: str, names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """UPDATE `table` SET names... WHERE key = ..., one row per value sequence (key first, then
    `names`), in one round trip per chunk.

    psycopg2's executemany sends one UPDATE per row; PostgreSQL gets `UPDATE ... FROM (VALUES ...)`
    instead. SQLite's executemany runs in C and is used as is.
    """
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    columns = [table.c[n] for n in (key, *names)]
    converters = [(i, f) for i, f in ((i, _converter(c)) for i, c in enumerate(columns)) if f is not None]

    def convert(row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i, fn in converters:
            values[i] = fn(values[i])
        return values

    try:
        if conn.dialect.name == "postgresql":
            type_of = conn.dialect.type_compiler_instance.process
            sets = ", ".join(f"{quote(n)} = v.{quote(n)}::{type_of(table.c[n].type)}" for n in names)
            cols = ", ".join(quote(n) for n in (key, *names))
            row_sql = "(" + ", ".join(["%s"] * (1 + len(names))) + ")"
            for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
                chunk = rows[start : start + _MAX_ROWS_PER_STATEMENT]
                params = [v for row in chunk for v in convert(row)]
                cursor.execute(
                    f"UPDATE {quote(table.name)} AS t SET {sets} FROM (VALUES {', '.join([row_sql] * len(chunk))}) "
                    f"AS v({cols}) WHERE t.{quote(key)} = v.{quote(key)}::{type_of(table.c[key].type)}",
                    params,
                )
        elif conn.dialect.name == "sqlite":
            sets = ", ".join(f"{quote(n)} = ?" for n in names)
            cursor.executemany(
                f"UPDATE {quote(table.name)} SET {sets} WHERE {quote(key)} = ?",
                [[*v[1:], v[0]] for v in map(convert, rows)],
            )
        else:
            stmt = (
                sa.update(table)
                .where(table.c[key] == sa.bindparam("b_key"))
                .values({n: sa.bindparam(f"b_{n}") for n in names})
            )
            conn.execute(stmt, [{"b_key": row[0], **{f"b_{n}": v for n, v in zip(names, row[1:])}} for row in rows])
    finally:
        cursor.close()
