"""Engine settings, schema versions and migrations, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from db.engine import (
    alembic_config,
    current_revision,
    head_revision,
    init_db,
    make_engine,
    read_transaction,
    require_schema,
    schema_transaction,
    session,
    upgrade,
    write_transaction,
)
from db.models import Base, Problem, Run
from selfinstruct.errors import UserError


def test_sqlite_pragmas(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 4_000
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 0
    engine.dispose()


def test_plain_path_is_a_sqlite_file(tmp_path) -> None:
    path = tmp_path / "sub" / "dir" / "p.db"
    engine = make_engine(str(path))
    init_db(engine)
    engine.dispose()
    assert path.exists()
    assert sqlite3.connect(path).execute("select version_num from alembic_version").fetchone() == (head_revision(),)


def test_must_exist_refuses_a_missing_file(tmp_path) -> None:
    with pytest.raises(UserError, match="no database at .*selfinstruct db upgrade --db"):
        make_engine(str(tmp_path / "missing.db"), must_exist=True)
    assert not (tmp_path / "missing.db").exists()


def test_init_db_creates_at_head_and_is_idempotent(db_url: str) -> None:
    engine = make_engine(db_url)
    init_db(engine)
    init_db(engine)
    with read_transaction(engine) as conn:
        assert current_revision(conn) == head_revision()
        assert {"runs", "llm_calls", "problems", "tests", "solutions", "executions", "triples"} <= set(
            sa.inspect(conn).get_table_names()
        )
    engine.dispose()


def test_migrations_match_the_models(db_url: str) -> None:
    """Upgrading an empty database gives exactly the schema the ORM models declare; down and up again works."""
    engine = make_engine(db_url)
    upgrade(engine)
    with read_transaction(engine) as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    downgrade(engine, "base")
    with read_transaction(engine) as conn:
        assert current_revision(conn) is None
        assert "problems" not in sa.inspect(conn).get_table_names()
    assert upgrade(engine) == (None, head_revision())
    engine.dispose()


def downgrade(engine: sa.Engine, revision: str) -> None:
    cfg = alembic_config(engine)
    with schema_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_migrations_keep_the_data_of_a_populated_database(db_url: str) -> None:
    """Down to 0002 and up again (SQLite rebuilds `problems` by copy): no child row is lost to a
    cascade, and 0003 fills problems.tests_call_id from the tests calls."""
    from db_workload import run_pipeline, snapshot

    engine = make_engine(db_url)
    init_db(engine)
    run_pipeline(engine, "run")
    before = snapshot(engine)
    with read_transaction(engine) as conn:
        linked = dict(
            conn.execute(sa.select(Problem.id, Problem.tests_call_id).where(Problem.tests_call_id.is_not(None))).all()
        )
        tests_json_before = dict(conn.execute(sa.select(Problem.id, Problem.tests_json)).all())
    assert linked and len(before["tests"]) > 10
    assert sum(v is not None for v in tests_json_before.values()) > 5
    downgrade(engine, "0002")
    with read_transaction(engine) as conn:
        assert "tests_call_id" not in {c["name"] for c in sa.inspect(conn).get_columns("problems")}
    assert upgrade(engine) == ("0002", head_revision())
    assert snapshot(engine) == before
    with read_transaction(engine) as conn:
        # migration 0006 rebuilt every problem's tests_json exactly as record_tests had written it
        assert dict(conn.execute(sa.select(Problem.id, Problem.tests_json)).all()) == tests_json_before
        assert (
            dict(
                conn.execute(
                    sa.select(Problem.id, Problem.tests_call_id).where(Problem.tests_call_id.is_not(None))
                ).all()
            )
            == linked
        )
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # switched back on
    engine.dispose()


def test_older_schema_is_refused_with_the_fix(db_url: str) -> None:
    engine = make_engine(db_url)
    assert upgrade(engine, "0001") == (None, "0001")
    with pytest.raises(UserError) as err:
        init_db(engine)
    msg = str(err.value)
    assert "revision 0001" in msg and f"needs {head_revision()}" in msg
    assert "selfinstruct db upgrade --db" in msg
    with pytest.raises(UserError, match="selfinstruct db upgrade"):
        require_schema(engine)
    assert upgrade(engine) == ("0001", head_revision())
    init_db(engine)
    require_schema(engine)
    engine.dispose()


def test_unknown_newer_revision_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    init_db(engine)
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(UserError, match="newer version"):
        init_db(engine)
    with pytest.raises(UserError, match="newer version"):
        upgrade(engine)
    engine.dispose()


def test_foreign_tables_without_version_are_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE somebody_elses (id INTEGER PRIMARY KEY)")
    with pytest.raises(UserError, match="no selfinstruct schema version"):
        init_db(engine)
    engine.dispose()


@pytest.mark.timeout(60)
def test_unreachable_server_is_one_clear_error() -> None:
    engine = make_engine("postgresql+psycopg2://nobody:pw@127.0.0.1:1/nothing")
    with pytest.raises(UserError) as err:
        init_db(engine)
    msg = str(err.value)
    assert "cannot reach the database" in msg and "***" in msg and "pw" not in msg
    assert "\n" not in msg


def test_bad_urls_are_user_errors() -> None:
    with pytest.raises(UserError, match="not a database URL"):
        make_engine("postgresql://user@host:notaport/db")
    with pytest.raises(UserError, match="cannot use database URL"):
        make_engine("nosuchdialect://x/y")


def test_session_commits_or_rolls_back(engine: sa.Engine) -> None:
    with session(engine) as s:
        s.add(Run(name="a", config={}, config_fingerprint="f", code_version="v"))
    with pytest.raises(RuntimeError):
        with session(engine) as s:
            s.add(Run(name="b", config={}, config_fingerprint="f", code_version="v"))
            s.flush()
            raise RuntimeError("boom")
    with session(engine, write=False) as s:
        assert list(s.scalars(sa.select(Run.name))) == ["a"]


def test_sqlite_reader_is_not_blocked_by_an_open_writer(sqlite_url: str) -> None:
    """WAL: a second connection reads the last committed state while a write transaction is open."""
    engine = make_engine(sqlite_url)
    init_db(engine)
    other = make_engine(sqlite_url)
    with write_transaction(engine) as conn:
        conn.execute(sa.insert(Run).values(name="x", config={}, config_fingerprint="f", code_version="v"))
        with read_transaction(other) as rconn:
            assert rconn.scalar(sa.select(sa.func.count()).select_from(Run)) == 0
    with read_transaction(other) as rconn:
        assert rconn.scalar(sa.select(sa.func.count()).select_from(Run)) == 1
    engine.dispose()
    other.dispose()
