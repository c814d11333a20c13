"""Connecting to Ray: the cluster a job was submitted to, a running one, or a fresh local one.

`ensure_ray()` is what every entry point calls before it builds actor pools. It is idempotent, and
the same code works in three places:
- under `ray job submit` (RAY_ADDRESS is set for the entrypoint): it joins that cluster;
- on a machine where `ray start --head` ran: it joins that cluster;
- anywhere else: it starts a local Ray, registering the custom resource "docker" on the local node
  when a Docker daemon answers, so sandbox actors (which require it) can be placed there.
Cluster nodes that have Docker advertise the resource themselves:
`ray start --address HEAD:6379 --resources='{"docker": 1}'`.
"""

from __future__ import annotations

import logging
import os
import socket

from selfinstruct.errors import UserError

DOCKER_RESOURCE = "docker"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # batches of prompts and code are small; leave shared memory to others

log = logging.getLogger(__name__)


def docker_daemon_answers() -> bool:
    """True when a Docker daemon answers a ping (DOCKER_HOST or the default socket)."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no daemon here"
        return False


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    docker_slots: int | None = None,
) -> None:
    """Connect to Ray once per process.

    `address`: a cluster address ("HOST:6379", "ray://HOST:10001", "auto"), or "local" to always
    start a fresh local instance; None means RAY_ADDRESS, else a cluster running on this machine,
    else a fresh local instance. The other arguments apply only when a local instance is started:
    `docker_slots` is how many sandbox actors the local node may host (default 1 when a Docker
    daemon answers, none otherwise).
    """
    import ray

    if ray.is_initialized():
        return
    explicit = address or os.environ.get("RAY_ADDRESS")
    if explicit and explicit not in ("auto", "local"):
        _check_reachable(explicit)
    join = explicit if explicit and explicit != "local" else None
    if join is None and address != "local" and _running_cluster_answers():
        join = "auto"
    if join is not None:
        try:
            ray.init(address=join, logging_level=logging.WARNING, log_to_driver=True)
            log.info("joined the Ray cluster at %s", join)
            return
        except ConnectionError as exc:
            raise UserError(f"cannot connect to the Ray cluster at {join!r}: {exc}") from None
    if docker_slots is None:
        docker_slots = 1 if docker_daemon_answers() else 0
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources={DOCKER_RESOURCE: docker_slots} if docker_slots else None,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    log.info("started a local Ray (docker slots: %d)", docker_slots)


def _running_cluster_answers() -> bool:
    """Whether `ray start` left a cluster on this machine that still answers.

    `ray.init(address="auto")` finds it through /tmp/ray/ray_current_cluster, but a file left by a
    cluster that was killed makes it wait on a dead address for minutes: check the address first.
    """
    from pathlib import Path

    current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        address = current.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return False
    try:
        _check_reachable(address, timeout_s=2.0)
    except UserError:
        log.warning("ignoring %s: the cluster at %s does not answer", current, address)
        return False
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a GCS address nothing listens on (ray.init would wait on it for a minute or more)."""
    target = address.split("://", 1)[-1]
    if address.startswith(("http://", "https://")):
        return  # a dashboard/job-server address: ray.init reports those itself
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot connect to the Ray cluster at {address!r}: {exc.strerror or exc}; "
            "is `ray start --head` running there (and RAY_ADDRESS right)?"
        ) from None


def cluster_resource(name: str) -> float:
    """The cluster's total of one resource ("GPU", "CPU", "docker"); 0 when no node has it."""
    import ray

    return float(ray.cluster_resources().get(name, 0.0))
