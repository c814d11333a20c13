"""Database fixtures: every test gets a fresh database, SQLite or a private PostgreSQL schema.

PostgreSQL tests use `pg_schema_url` (tests/conftest.py): a private schema per test on the shared server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))  # db_workload, db_writer


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'pipeline.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database: SQLite file, or a private schema on the real PostgreSQL server."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database at the newest schema."""
    from db.engine import init_db, make_engine

    eng = make_engine(db_url)
    init_db(eng)
    yield eng
    eng.dispose()
