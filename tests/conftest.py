"""Shared test plumbing: services (Docker, PostgreSQL) and how their absence is handled.

Locally a missing service skips its tests; under scripts/test.sh (SELFINSTRUCT_REQUIRE_SERVICES=1,
which CI uses) it fails them, so a CI run can never go green by skipping the real thing.
Package-specific fixtures live in tests/<package>/conftest.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REQUIRE_SERVICES = os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1"


def missing_service(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


def require_docker_runtime(client, name: str) -> None:
    """A container runtime (runc, runsc) the daemon does not know is a missing service."""
    if name not in (client.info().get("Runtimes") or {}):
        missing_service(f"Docker runtime {name!r} is not registered; run scripts/setup.sh")


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client for a daemon that answers (tests marked `docker`)."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no daemon"
        missing_service(f"no Docker daemon ({exc.__class__.__name__}); run scripts/setup.sh")
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of a real PostgreSQL test database (tests marked `postgres`)."""
    url = os.environ.get("SELFINSTRUCT_TEST_PG_URL")
    if not url:
        missing_service("SELFINSTRUCT_TEST_PG_URL is not set; scripts/test.sh starts PostgreSQL and sets it")
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        missing_service(f"PostgreSQL at {url} does not answer: {exc}")
    return url


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test.

    Every package's tests share one server, so each test gets its own schema: runs never collide.
    """
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in pg_url else "?"
    yield f"{pg_url}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
