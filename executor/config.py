"""Sandbox configuration: how many warm containers, and the limits every job runs under."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGE_REPOSITORY = "selfinstruct-sandbox"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:latest"
CONTAINER_LABEL = "selfinstruct.sandbox"  # every container the sandbox starts carries it (cleanup key)
SANDBOX_UID = 10001  # the unprivileged user jobs run as; no entry in the image needs to exist for it


class SandboxConfig(BaseModel):
    """Limits and pool shape. Per-job limits apply to the forked child; the container gets headroom on top.

    The container's memory limit is `memory_mb + 2 * tmpfs_mb + RUNNER_HEADROOM_MB` (/tmp and /dev/shm pages are charged
    to the container's cgroup, and the runner needs a few MB of its own), with swap disabled.
    """

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, description="warm containers, one job at a time each"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=3600, description="wall-clock limit per job")
    memory_mb: int = Field(
        default=512,
        ge=64,
        description="address-space limit of a job's process (the runner's "
        "own ~28 MB, inherited by the fork, count towards it)",
    )
    cpus: float = Field(default=1.0, gt=0, description="CPU share of each container (docker --cpus)")
    pids_limit: int = Field(default=64, ge=8, description="processes/threads per container (fork bombs)")
    tmpfs_mb: int = Field(default=64, ge=1, description="size of the writable /tmp (and /dev/shm)")
    output_limit_bytes: int = Field(
        default=1 << 20, ge=1024, description="stdout+stderr a job may write before it is killed"
    )
    output_keep_bytes: int = Field(default=4096, ge=0, description="stdout/stderr kept in each Result")
    max_files: int = Field(default=64, ge=8, description="RLIMIT_NOFILE of a job")
    recycle_after: int = Field(default=500, ge=1, description="replace a container after this many jobs")
    host_grace_s: float = Field(
        default=5.0, gt=0, description="extra time the host waits for a runner before replacing it"
    )
    image: str | None = Field(default=None, description=f"image name; None means {DEFAULT_IMAGE}")
    transport: Literal["auto", "socket", "exec"] = Field(
        default="auto",
        description="how jobs reach the runner: a unix socket bind-mounted read-only from the host "
        "(local daemon only; bypasses dockerd), the `docker exec` stream (works with any daemon), or auto: "
        "socket when the daemon is local, exec otherwise",
    )

    runtime: Literal["runc", "runsc"] = Field(
        default="runc",
        description="the container runtime: runc (namespaces and cgroups on the host kernel) or runsc "
        "(gVisor: a user-space kernel between the job and the host's; registered by scripts/setup.sh)",
    )

    @property
    def image_name(self) -> str:
        return self.image or DEFAULT_IMAGE


RUNNER_HEADROOM_MB = 64
