"""Fixtures for the sandbox tests: a real Docker daemon, the real sandbox image, warm pools.

The suites that prove containment and correctness (hostile programs, false negatives, HumanEval) run
under every runtime in RUNTIMES: runc (namespaces and cgroups on the host kernel) and runsc (gVisor's
user-space kernel). A runtime the daemon does not know skips those tests, or fails them when
SELFINSTRUCT_REQUIRE_SERVICES=1 (CI), like any other missing service.
"""

from __future__ import annotations

import os

import pytest

from executor.config import DEFAULT_IMAGE, SandboxConfig
from executor.sandbox import Sandbox
from tests.conftest import require_docker_runtime

RUNTIMES = ("runc", "runsc")


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


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime(request, docker_client) -> str:
    """Each container runtime in turn; one the daemon does not know is a missing service."""
    require_docker_runtime(docker_client, request.param)
    return request.param


@pytest.fixture(scope="session")
def sandbox(sandbox_image, docker_client):
    """A warm two-container pool with short limits, shared by the tests that only run ordinary jobs."""
    with Sandbox(SandboxConfig(workers=2, timeout_s=5, memory_mb=256), client=docker_client) as pool:
        yield pool


@pytest.fixture(scope="session")
def runtime_sandbox(sandbox_image, docker_client, runtime):
    """A warm two-container pool under each runtime in turn (runc's is the shared `sandbox` settings)."""
    with Sandbox(
        SandboxConfig(workers=2, timeout_s=5, memory_mb=256, runtime=runtime), client=docker_client
    ) as pool:
        yield pool
