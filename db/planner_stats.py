"""Keep PostgreSQL's planner statistics up with a pipeline that bulk-loads its tables.

Autovacuum analyzes a table only after it has grown by 10% and on its own schedule (a minute or
more). Until then the planner believes a freshly loaded table holds a handful of rows and picks
nested loops that re-scan one side per row of the other: measured on 20k solutions, handing out
1,000 pending executions took 2.9 s instead of milliseconds. So the stage queries count the rows
they write, and once a process has written 20k, 40k, 80k, ... rows since it last did, it runs
ANALYZE on the pipeline's tables (a sample of 30k rows per table: about 0.1-0.3 s). SQLite needs
nothing: its planner does not depend on collected statistics.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy.engine import Connection

FIRST_ANALYZE_AFTER_ROWS = 20_000
TABLES = ("problems", "tests", "solutions", "executions", "llm_calls", "triples")

_lock = threading.Lock()
# per (process, database URL): rows written since the last ANALYZE, and the row count that triggers the next
_written: dict[tuple[int, str], list[int]] = {}


def note_bulk_write(conn: Connection, rows: int) -> bool:
    """Count `rows` written in this transaction; run ANALYZE when due. Returns whether it ran."""
    if conn.dialect.name != "postgresql" or rows <= 0:
        return False
    key = (os.getpid(), conn.engine.url.render_as_string(hide_password=True))
    with _lock:
        state = _written.setdefault(key, [0, FIRST_ANALYZE_AFTER_ROWS])
        state[0] += rows
        if state[0] < state[1]:
            return False
        state[0], state[1] = 0, state[1] * 2
    quote = conn.dialect.identifier_preparer.quote
    conn.exec_driver_sql("ANALYZE " + ", ".join(quote(t) for t in TABLES))
    return True
