"""INSERT ... ON CONFLICT DO NOTHING (and batched UPDATE) for a whole batch, on every dialect we support.

This is what makes each stage idempotent: rows a previous (crashed, concurrent or repeated) attempt
already committed hit a unique constraint and are skipped, and RETURNING tells the caller which rows
this attempt actually inserted.

The statements run on the DB-API cursor of the same connection (and transaction), which skips
SQLAlchemy's per-row parameter processing (it cost more than the database's own work at these batch
sizes):
- SQLite: multi-row `INSERT ... VALUES (?, ...), (?, ...) ON CONFLICT DO NOTHING [RETURNING ...]`.
- PostgreSQL: the whole batch as ONE JSON parameter, `INSERT ... SELECT ... FROM
  json_populate_recordset(NULL::table, %s) ON CONFLICT DO NOTHING [RETURNING ...]`. A multi-row VALUES
  statement spends most of its time in the planner, which type-checks and folds every one of its
  thousands of literals (EXPLAIN ANALYZE, 1,000 LLM-call rows: 10.7 ms planning, 19 ms executing), and
  psycopg2 quotes each value in Python on the way (9-14 us per row); one JSON text, encoded by
  pydantic-core in C and decoded by the server into the table's own row type, measured 19-21 us per
  row against 32-56 us. JSON carries every value our columns hold: text, numbers, booleans, null,
  timestamps as ISO 8601, JSON columns as nested JSON; inf and nan as strings, which float8 parses.
Values are converted the way the column types would (JSON -> text on SQLite); nothing else in our
schema needs a conversion. Other dialects go through Core with one savepoint per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_json, to_jsonable_python
from sqlalchemy.engine import Connection

from db.dbapi import has_fast_path

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER (3.32+) is 32766.
_SQLITE_MAX_PARAMS = 32_000
_MAX_ROWS_PER_STATEMENT = 2_000


def _to_json(value: Any) -> str | None:
    # pydantic-core's encoder: same JSON as json.dumps for plain values, about 4x faster, and it takes
    # pydantic models (per-test results) as they are
    return None if value is None else to_json(value).decode()


def _json_payload(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The rows as one JSON array of objects keyed by column name (PostgreSQL's json_populate_recordset)."""
    return to_json([dict(zip(names, row)) for row in rows], inf_nan_mode="strings").decode()


def _json_columns(columns: Sequence[sa.Column]) -> list[int]:
    """Positions of the JSON columns (JSONB on PostgreSQL, a variant of JSON): SQLite takes their value
    as JSON text."""
    return [i for i, c in enumerate(columns) if isinstance(c.type, sa.JSON)]


def _converted(row: Sequence[Any], json_columns: list[int]) -> list[Any]:
    """The row's values, with the JSON columns' serialized."""
    values = list(row)
    for i in json_columns:
        values[i] = _to_json(values[i])
    return values


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
    if not has_fast_path(conn):
        return _insert_ignore_per_row(conn, table, names, rows, returning)
    quote = conn.dialect.identifier_preparer.quote
    cols = ", ".join(quote(n) for n in names)
    tail = " ON CONFLICT DO NOTHING"
    if returning:
        tail += " RETURNING " + ", ".join(quote(c.name) for c in returning)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    inserted: list[tuple] = []
    try:
        if conn.dialect.name == "postgresql":
            sql = f"INSERT INTO {quote(table.name)} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{quote(table.name)}, %s){tail}"
            for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
                cursor.execute(sql, [_json_payload(names, rows[start : start + _MAX_ROWS_PER_STATEMENT])])
                if returning:
                    inserted.extend(tuple(r) for r in cursor.fetchall())
            return inserted
        json_columns = _json_columns([table.c[n] for n in names])
        row_sql = "(" + ", ".join(["?"] * len(names)) + ")"
        head = f"INSERT INTO {quote(table.name)} ({cols}) VALUES "
        per_statement = max(1, min(_MAX_ROWS_PER_STATEMENT, _SQLITE_MAX_PARAMS // len(names)))
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params: list[Any] = []
            if json_columns:
                for row in chunk:
                    params.extend(_converted(row, json_columns))
            else:
                for row in chunk:
                    params.extend(row)
            cursor.execute(head + ", ".join([row_sql] * len(chunk)) + tail, params)
            if returning:
                inserted.extend(tuple(r) for r in cursor.fetchall())
    finally:
        cursor.close()
    return inserted


def _core_row(table: sa.Table, names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row for Core: JSON column values as plain Python data (SQLAlchemy's encoder takes no models)."""
    return {n: to_jsonable_python(v) if isinstance(table.c[n].type, sa.JSON) else v for n, v in zip(names, row)}


def _insert_ignore_per_row(
    conn: Connection, table: sa.Table, names: Sequence[str], rows: Sequence[Sequence[Any]],
    returning: Sequence[sa.Column],
) -> list[tuple]:
    inserted: list[tuple] = []
    stmt = sa.insert(table)
    if returning:
        stmt = stmt.returning(*returning)
    for row in rows:
        try:
            with conn.begin_nested():
                result = conn.execute(stmt, _core_row(table, names, row))
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

    PostgreSQL gets the chunk as one JSON parameter (`UPDATE ... FROM json_populate_recordset(...)`,
    see the module docstring; psycopg2's executemany would send one UPDATE per row). SQLite's
    executemany runs in C and is used as is.
    """
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    if not has_fast_path(conn):
        stmt = (
            sa.update(table).where(table.c[key] == sa.bindparam("b_key")).values({n: sa.bindparam(f"b_{n}") for n in names})
        )
        params = []
        for row in rows:
            values = _core_row(table, names, row[1:])
            params.append({"b_key": row[0], **{f"b_{n}": values[n] for n in names}})
        conn.execute(stmt, params)
        return
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            t = quote(table.name)
            sets = ", ".join(f"{quote(n)} = v.{quote(n)}" for n in names)
            sql = f"UPDATE {t} AS t SET {sets} FROM json_populate_recordset(NULL::{t}, %s) AS v WHERE t.{quote(key)} = v.{quote(key)}"
            for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
                cursor.execute(sql, [_json_payload((key, *names), rows[start : start + _MAX_ROWS_PER_STATEMENT])])
        else:
            json_columns = _json_columns([table.c[n] for n in (key, *names)])
            sets = ", ".join(f"{quote(n)} = ?" for n in names)
            params = [[*values[1:], values[0]] for values in (_converted(row, json_columns) for row in rows)]
            cursor.executemany(f"UPDATE {quote(table.name)} SET {sets} WHERE {quote(key)} = ?", params)
    finally:
        cursor.close()
