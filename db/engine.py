"""Engines, transactions and schema versioning for any SQLAlchemy URL (SQLite by default, PostgreSQL at scale).

SQLite is tuned for a pipeline that writes in batches while other processes read: WAL journal (readers
never block the writer), a 30 s busy timeout, foreign keys on, synchronous=NORMAL (a crash loses at
most the last commits, never consistency). Writers open their transactions with BEGIN IMMEDIATE, so
two processes writing the same file queue on the busy timeout instead of failing with "database is
locked" when a read lock would have to be upgraded.

`init_db` is what the pipeline calls: it creates an empty database at the newest schema and refuses,
with the command that fixes it, a database at an older revision (`selfinstruct db upgrade --db URL`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from selfinstruct.errors import UserError

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 32_768  # the default 2 MiB thrashes on the unique indexes of million-row tables
# WAL pages between automatic checkpoints (SQLite's default: 1,000). A stage batch re-dirties most
# pages of the random-keyed problem-hash index, and a checkpoint copies every page in the WAL back
# to the database file once: with 1,000 pages nearly every batch's commit ran one, copying the index
# again each time. Measured (bench/db.py, inserts at 5k and 100k problems): 4,000 pages (16 MiB)
# beat 1,000 at both sizes and 10,000 too, whose longer WAL slowed the execution batches' lookups.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 4_000
PG_CONNECT_TIMEOUT_S = 10
# Connections of an engine carrying this execution option open SQLite transactions with BEGIN IMMEDIATE.
_WRITE_OPTION = "selfinstruct_write"
# A fixed key for PostgreSQL's advisory lock that serializes concurrent schema creation/upgrades.
_SCHEMA_LOCK_KEY = 0x5E1F1A57


def normalize_url(url: str) -> sa.URL:
    """A SQLAlchemy URL; a plain file path means a SQLite file (`runs/a.db` -> `sqlite:///runs/a.db`)."""
    if "://" not in url:
        url = f"sqlite:///{url}"
    try:
        return sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise UserError(
            f"not a database URL: {url!r} ({exc}); use e.g. sqlite:///runs/db.sqlite or postgresql+psycopg2://user:pw@host/db"
        ) from None


def display_url(url: sa.URL | str | Engine) -> str:
    """The URL as it is safe to print (password hidden)."""
    if isinstance(url, Engine):
        url = url.url
    if isinstance(url, str):
        url = normalize_url(url)
    return url.render_as_string(hide_password=True)


def _sqlite_file(url: sa.URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def make_engine(url: str | sa.URL, *, must_exist: bool = False, echo: bool = False) -> Engine:
    """An engine for `url` (any SQLAlchemy URL, or a SQLite file path).

    For SQLite the file's directory is created unless `must_exist`, which instead refuses a file that
    does not exist (commands that only read, like `db stats`, must not create empty databases).
    """
    url = normalize_url(url) if isinstance(url, str) else url
    kwargs: dict = {"echo": echo}
    if url.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            if must_exist and not path.exists():
                raise UserError(
                    f"no database at {path}; run `selfinstruct db upgrade --db {display_url(url)}` to create one"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg2", "psycopg"):
        kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        kwargs["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise UserError(f"cannot use database URL {display_url(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, in_memory=_sqlite_file(url) is None)
    return engine


def _tune_sqlite(engine: Engine, *, in_memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
        # Let SQLAlchemy's "begin" event (below) issue BEGIN, instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")  # page cache per connection, in KiB
        cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}")
        # Debian builds SQLite with SECURE_DELETE, which zeroes freed cell space on every page split of
        # the indexes; nothing here needs deleted bytes scrubbed from the file (upstream's default is off)
        cursor.execute("PRAGMA secure_delete = OFF")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The same engine (same pool), whose transactions take SQLite's write lock when they begin."""
    return engine.execution_options(**{_WRITE_OPTION: True})


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that writes: committed when the block ends, rolled back on an exception."""
    with _translate_connect_errors(engine), writer(engine).begin() as conn:
        yield conn


@contextmanager
def read_transaction(engine: Engine, *, snapshot: bool = False) -> Iterator[Connection]:
    """One read-only transaction (never blocks a writer under WAL). With `snapshot`, every statement in it
    sees the same snapshot on PostgreSQL too (REPEATABLE READ; its default, READ COMMITTED, takes a new
    one per statement); a SQLite read transaction always has one snapshot."""
    with _translate_connect_errors(engine), engine.connect() as conn:
        if snapshot and conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


@contextmanager
def session(engine: Engine, *, write: bool = True) -> Iterator[Session]:
    """An ORM session in one transaction: committed on success, rolled back on an exception."""
    bind = writer(engine) if write else engine
    with _translate_connect_errors(engine), Session(bind, expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def _translate_connect_errors(engine: Engine) -> Iterator[None]:
    try:
        yield
    except sa.exc.OperationalError as exc:
        if _is_connect_error(exc):
            raise UserError(_unreachable_message(engine, exc)) from None
        raise


def _is_connect_error(exc: sa.exc.DBAPIError) -> bool:
    return bool(exc.connection_invalidated) or exc.statement is None or "connect" in str(exc.orig).lower()


def _unreachable_message(engine: Engine, exc: Exception) -> str:
    orig = getattr(exc, "orig", exc)
    detail = " ".join(str(orig).split()) or orig.__class__.__name__
    return f"cannot reach the database {display_url(engine)}: {detail}; check --db and that the server is running"


def check_connection(engine: Engine) -> None:
    """Connect once, turning an unreachable server or unopenable file into a one-line UserError."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        raise UserError(_unreachable_message(engine, exc)) from None


# --- schema versions (Alembic) ------------------------------------------------------------------


def alembic_config(engine: Engine | None = None):  # -> alembic.config.Config
    """The Alembic config shipped inside the package (db/alembic.ini), so migrations work when installed."""
    from alembic.config import Config

    cfg = Config(str(Path(__file__).with_name("alembic.ini")))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The schema revision this code expects."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision, or None when it has never been migrated."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


@contextmanager
def schema_transaction(engine: Engine) -> Iterator[Connection]:
    """The transaction schema changes run in: locked against concurrent creation/migration (SQLite's
    write lock, a PostgreSQL advisory lock).

    On SQLite, foreign keys are switched off around it, as SQLite's documented procedure for table
    rebuilds requires: Alembic's batch mode rebuilds a table by copy, drop and rename, and with
    foreign keys on, the drop would cascade-delete every child row. Integrity is checked with
    `PRAGMA foreign_key_check` before the commit instead.
    """
    with _translate_connect_errors(engine), writer(engine).connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.dbapi_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys = OFF")  # outside any transaction, or it is a no-op
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
                yield conn
                if sqlite and (bad := conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise RuntimeError(f"the migration broke {len(bad)} foreign keys, e.g. {bad[0]}; rolled back")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys = ON")


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the database to `revision`; returns (revision before, revision after).

    Runs in one transaction under a lock (SQLite's write lock, a PostgreSQL advisory lock), so
    processes that start at the same time on an empty database do not race to create it.
    """
    check_connection(engine)
    with schema_transaction(engine) as conn:
        before = current_revision(conn)
        if before is not None and before not in _known_revisions():
            raise UserError(_newer_message(engine, before))
        after = _migrate(engine, conn, revision)
    return before, after


def _migrate(engine: Engine, conn: Connection, revision: str) -> str:
    from alembic import command

    cfg = alembic_config(engine)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
    after = current_revision(conn)
    assert after is not None
    return after


def _newer_message(engine: Engine, revision: str) -> str:
    return (
        f"the database {display_url(engine)} is at schema revision {revision}, which this version of selfinstruct "
        "does not know (written by a newer version): upgrade selfinstruct"
    )


def init_db(engine: Engine) -> None:
    """Make sure the database is at the schema this code expects.

    An empty database is created at the newest revision; one at the newest revision is left alone;
    one at an older revision is refused with the fix (`selfinstruct db upgrade --db URL`), because a
    migration of a database other processes may be using is the operator's decision.
    """
    check_connection(engine)
    head = head_revision()
    with read_transaction(engine) as conn:
        rev = current_revision(conn)
    if rev == head:
        return
    if rev is None:
        with schema_transaction(engine) as conn:
            rev = current_revision(conn)  # another process may have created it meanwhile
            if rev is None:
                tables = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
                if tables:
                    raise UserError(
                        f"the database {display_url(engine)} has tables ({', '.join(sorted(tables)[:5])}) but no "
                        "selfinstruct schema version: point --db at a new or a selfinstruct database"
                    )
                _migrate(engine, conn, "head")
                return
    if rev == head:
        return
    if rev not in _known_revisions():
        raise UserError(_newer_message(engine, rev))
    raise UserError(_older_message(engine, rev, head))


def _older_message(engine: Engine, rev: str, head: str) -> str:
    return (
        f"the database {display_url(engine)} is at schema revision {rev}, this code needs {head}: "
        f"run `selfinstruct db upgrade --db {display_url(engine)}`"
    )


def require_schema(engine: Engine) -> None:
    """For commands that only read: the database must exist at the schema this code expects."""
    check_connection(engine)
    with read_transaction(engine) as conn:
        rev = current_revision(conn)
    head = head_revision()
    if rev == head:
        return
    if rev is None:
        raise UserError(
            f"the database {display_url(engine)} has no selfinstruct schema: "
            f"run `selfinstruct db upgrade --db {display_url(engine)}` (or point --db at a pipeline database)"
        )
    if rev not in _known_revisions():
        raise UserError(_newer_message(engine, rev))
    raise UserError(_older_message(engine, rev, head))


def env_url(default: str | None = None) -> str | None:
    """The database URL from $SELFINSTRUCT_DB, for commands whose --db is optional."""
    return os.environ.get("SELFINSTRUCT_DB", default)
