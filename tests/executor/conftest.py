"""Fixtures for the sandbox tests: a real Docker daemon, the real sandbox image, a warm pool."""

from __future__ import annotations

import os

import pytest

from executor.config import DEFAULT_IMAGE, SandboxConfig
from executor.sandbox import Sandbox


def missing_service(reason: str) -> None:
    if os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sandbox_image(docker_client) -> str:
    import docker

    try:
        docker_client.images.get(DEFAULT_IMAGE)
    except docker.errors.ImageNotFound:
        missing_service(f"sandbox image {DEFAULT_IMAGE} missing; run `selfinstruct sandbox build`")
    return DEFAULT_IMAGE


@pytest.fixture(scope="session")
def sandbox(sandbox_image, docker_client):
    """A warm two-container pool with short limits, shared by the tests that only run ordinary jobs."""
    with Sandbox(SandboxConfig(workers=2, timeout_s=5, memory_mb=256), client=docker_client) as pool:
        yield pool
