"""Scale-out on Ray: LLM stages on a pool of backend actors, execution on sandbox actors.

Both pools expose the same methods as their local counterparts, so the pipeline runs with or
without Ray:

    LLMPool(cfg).generate(requests)  ~  make_backend(cfg).generate(requests)
    SandboxPool(sandbox_cfg).run(jobs)  ~  Sandbox(sandbox_cfg).run(jobs)     (and .image_digest)

The driver keeps the database as the only state; an actor lost mid-batch costs only the batch it
held, which is resubmitted to its replacement (generator/actor_pool.py).

Placement:
- vLLM: one actor per tensor-parallel group, `num_gpus=tensor_parallel_size`; with TP > 1 the
  engine runs its TP workers as subprocesses (`distributed_executor_backend="mp"`) on the GPUs
  Ray gave the actor, so a group never straddles nodes. Default replicas: the GPUs free when the
  pool starts, // TP (set `replicas` per stage when several models share a cluster).
- torch: one actor per replica, `num_gpus=1` when its device is CUDA, else `num_cpus=1`.
- openai: I/O-bound actors (`num_cpus=0`), each with the backend's own bounded concurrency.
- sandbox: actors require the custom resource "docker" (one unit each, no Ray CPUs: the work runs
  in containers); default count: the cluster's total "docker".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import ray

from generator.actor_pool import ActorPool, PoolStats
from generator.backends.base import BackendError, Completion, GenerationRequest
from generator.backends.config import BackendConfig, TorchBackendConfig, VLLMBackendConfig
from generator.ray_cluster import DOCKER_RESOURCE, cluster_resource, ensure_ray
from selfinstruct.errors import UserError

if TYPE_CHECKING:
    from executor.jobs import Job, Result

__all__ = ["LLMPool", "SandboxPool", "ensure_ray", "llm_actor_options", "default_llm_replicas"]


class LLMActor:
    """Holds one backend (one vLLM engine, one model copy, one HTTP client pool) in a Ray actor."""

    def __init__(self, cfg: BackendConfig) -> None:
        from generator.backends.factory import make_backend

        # a constructor that raises kills the actor and Ray keeps only the text of the error; kept
        # here, the error reaches the driver as itself (a UserError stays one clear line)
        self._error: Exception | None = None
        try:
            self._backend = make_backend(cfg)
        except Exception as exc:  # noqa: BLE001 - re-raised by every call below
            self._error = exc

    def ready(self) -> int:
        if self._error is not None:
            raise self._error
        return os.getpid()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        self.ready()
        return self._backend.generate(requests)

    def close(self) -> None:
        if self._error is None:
            self._backend.close()


class SandboxActor:
    """Holds one entered `executor.sandbox.Sandbox` (its warm containers) in a Ray actor."""

    def __init__(self, sandbox_cfg: Any) -> None:
        from executor.sandbox import Sandbox

        self._error: Exception | None = None  # see LLMActor
        try:
            self._sandbox = Sandbox(sandbox_cfg)
            self._sandbox.__enter__()
        except Exception as exc:  # noqa: BLE001 - re-raised by every call below
            self._error = exc

    def ready(self) -> int:
        if self._error is not None:
            raise self._error
        return os.getpid()

    def image_digest(self) -> str | None:
        self.ready()
        return self._sandbox.image_digest

    def run(self, jobs: list[Job]) -> list[Result]:
        self.ready()
        return self._sandbox.run(jobs)

    def close(self) -> None:
        if self._error is None:
            self._sandbox.__exit__(None, None, None)


def llm_actor_options(cfg: BackendConfig) -> dict[str, Any]:
    """The Ray resources one LLM actor of this backend needs."""
    if isinstance(cfg, VLLMBackendConfig):
        return {"num_gpus": cfg.tensor_parallel_size, "num_cpus": 1}
    if isinstance(cfg, TorchBackendConfig):
        return {"num_gpus": 1, "num_cpus": 1} if cfg.device.startswith("cuda") else {"num_cpus": 1}
    return {"num_cpus": 0}


def default_llm_replicas(cfg: BackendConfig) -> int:
    """Replicas from the configuration, else (vLLM) as many TP groups as the cluster has GPUs for."""
    if isinstance(cfg, VLLMBackendConfig):
        if cfg.replicas is not None:
            return cfg.replicas
        gpus = int(cluster_resource("GPU"))
        if gpus < cfg.tensor_parallel_size:
            raise UserError(
                f"the vllm backend needs {cfg.tensor_parallel_size} GPU(s) per replica and the Ray cluster has "
                f"{gpus}; add GPU nodes (`ray start --address HEAD:6379` on each) or use kind: openai/torch"
            )
        # GPUs that other pools (e.g. another stage's model) do not hold right now
        free = int(ray.available_resources().get("GPU", 0.0))
        if free < cfg.tensor_parallel_size:
            raise UserError(
                f"all {gpus} GPUs of the Ray cluster are held (by other stages' engines or jobs) and the vllm "
                f"backend for {cfg.model} needs {cfg.tensor_parallel_size}; set `replicas` in each stage's "
                "backend so that the pools share the cluster"
            )
        return free // cfg.tensor_parallel_size
    if isinstance(cfg, TorchBackendConfig):
        return cfg.replicas
    return 1


class _RayPool:
    """What both pools share over their `ActorPool`: its actors, its stats, closing, and `with`."""

    _pool: ActorPool

    @property
    def actors(self) -> list[ray.actor.ActorHandle]:
        return self._pool.actors

    @property
    def stats(self) -> PoolStats:
        return self._pool.stats

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LLMPool(_RayPool):
    """`generate(requests)` over Ray actors, each holding `make_backend(cfg)`; same contract as a Backend."""

    def __init__(
        self,
        cfg: BackendConfig,
        replicas: int | None = None,
        *,
        chunk_size: int | None = None,
        max_chunk_retries: int = 3,
        ready_timeout_s: float = 600.0,
        task_timeout_s: float | None = None,
    ) -> None:
        ensure_ray()
        self.cfg = cfg
        self.model_name = getattr(cfg, "model", None) or getattr(cfg, "checkpoint", "")
        self.chunk_size = chunk_size
        options = llm_actor_options(cfg)
        actor_cls = ray.remote(LLMActor)
        self._pool: ActorPool[GenerationRequest, list[Completion]] = ActorPool(
            lambda: actor_cls.options(**options).remote(cfg),
            replicas or default_llm_replicas(cfg),
            "generate",
            what=f"LLM pool ({cfg.kind}: {self.model_name})",
            max_chunk_retries=max_chunk_retries,
            ready_timeout_s=ready_timeout_s,
            task_timeout_s=task_timeout_s,
        )

    @property
    def replicas(self) -> int:
        return self._pool.size

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        chunk_size = self.chunk_size
        if chunk_size is None and isinstance(self.cfg, VLLMBackendConfig) and requests:
            # vLLM schedules a whole batch itself: one big call per engine beats several small ones
            chunk_size = math.ceil(len(requests) / self.replicas)
        try:
            return self._pool.map(requests, chunk_size)
        except (BackendError, UserError):
            raise
        except Exception as exc:  # an actor lost too often, or an unexpected error inside one
            raise BackendError(" ".join(str(exc).split())[:400]) from exc


class SandboxPool(_RayPool):
    """`run(jobs)` over sandbox actors on nodes that have Docker; same contract as an entered Sandbox."""

    def __init__(
        self,
        sandbox_cfg: Any,
        actors: int | None = None,
        *,
        chunk_size: int | None = None,
        max_chunk_retries: int = 3,
        ready_timeout_s: float = 600.0,
        task_timeout_s: float | None = None,
    ) -> None:
        ensure_ray()
        slots = int(cluster_resource(DOCKER_RESOURCE))
        if slots < 1:
            raise UserError(
                'no Ray node offers the resource "docker": start nodes that have a Docker daemon with '
                "`ray start ... --resources='{\"docker\": 1}'` (a local Ray registers it when the daemon answers)"
            )
        self.sandbox_cfg = sandbox_cfg
        self.chunk_size = chunk_size
        actor_cls = ray.remote(SandboxActor)
        # two batches at once per actor (a Sandbox is thread-safe): while one batch waits on its
        # slowest job (a timeout), the next one keeps the warm containers busy
        options = {"num_cpus": 0, "resources": {DOCKER_RESOURCE: 1}, "max_concurrency": 2}
        self._pool: ActorPool[Job, Result] = ActorPool(
            lambda: actor_cls.options(**options).remote(sandbox_cfg),
            actors or slots,
            "run",
            what="sandbox pool",
            max_chunk_retries=max_chunk_retries,
            ready_timeout_s=ready_timeout_s,
            task_timeout_s=task_timeout_s,
        )
        digests = set(self._pool.call_all("image_digest"))
        if len(digests) > 1:
            self._pool.close()
            raise UserError(
                f"sandbox nodes run different images ({', '.join(sorted(map(str, digests)))}): "
                "build the same image on every node (`selfinstruct sandbox build`)"
            )
        self.image_digest: str | None = digests.pop()

    def run(self, jobs: Sequence[Job]) -> list[Result]:
        return self._pool.map(list(jobs), self.chunk_size)

