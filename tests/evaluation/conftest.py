"""Fixtures for the eval tests: the real sandbox image (through the shared docker fixture)."""

from __future__ import annotations

import os

import pytest

from executor.config import DEFAULT_IMAGE


def missing_service(reason: str) -> None:
    if os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sandbox_ready(docker_client) -> None:
    import docker

    try:
        docker_client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        missing_service(f"sandbox image {DEFAULT_IMAGE} missing; run `selfinstruct sandbox build`")
