"""The sandbox pool: warm hardened containers, one job at a time each, safe to share between threads.

    from executor.sandbox import Sandbox, SandboxConfig
    with Sandbox(SandboxConfig(workers=2, timeout_s=10)) as sandbox:
        results = sandbox.run(jobs)          # same order as jobs; every job gets a Result

A container is replaced after `recycle_after` jobs and after any anomaly (escaped processes, forged
records, memory exhaustion, a runner that died or missed the host deadline). Containers left behind by
a process that no longer runs are removed at start; this pool's own containers at exit.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Self

import docker

from executor import image as sandbox_image
from executor.config import CONTAINER_LABEL, SandboxConfig
from executor.container import (
    CHANNEL_LABEL,
    CHANNEL_PREFIX,
    OWNER_LABEL,
    ForgedReply,
    RunnerGone,
    SandboxContainer,
    daemon_is_local,
    owner_is_alive,
    owner_label,
    remove_channel_dir,
)
from executor.jobs import Job, Result, TestResult
from executor.probes import Probe, judge, split_test
from selfinstruct.errors import UserError

__all__ = ["Sandbox", "SandboxConfig", "check_runtime", "remove_containers"]

log = logging.getLogger(__name__)


def remove_containers(client: docker.DockerClient, *, stale_only: bool) -> int:
    """Remove labeled sandbox containers (all of them, or only those whose owner process has exited)."""
    removed = 0
    # The low-level listing: `containers.list()` inspects each container and fails when one disappears
    # meanwhile, which other pools recycling containers on the same daemon make routine.
    live_channels = set()
    for summary in client.api.containers(all=True, filters={"label": CONTAINER_LABEL}):
        labels = summary.get("Labels") or {}
        if stale_only and owner_is_alive(labels.get(OWNER_LABEL, "")):
            live_channels.add(labels.get(CHANNEL_LABEL))
            continue
        try:
            client.api.remove_container(summary["Id"], force=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
        remove_channel_dir(labels.get(CHANNEL_LABEL))
    _remove_orphaned_channel_dirs(live_channels)
    return removed


def _remove_orphaned_channel_dirs(in_use: set[str | None], min_age_s: float = 120.0) -> None:
    """Channel directories no live container uses (their owner was killed before it could clean up).
    Young ones are left alone: a pool starting right now may not have labeled its container yet."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        if not name.startswith(CHANNEL_PREFIX) or path in in_use:
            continue
        try:
            if time.time() - os.stat(path).st_mtime > min_age_s:
                remove_channel_dir(path)
        except OSError:
            continue


def check_runtime(client: docker.DockerClient, runtime: str) -> None:
    """Raise UserError (one line naming the fix) when the Docker daemon does not know `runtime`."""
    try:
        known = set((client.info().get("Runtimes") or {}).keys())
    except docker.errors.DockerException as exc:
        raise UserError(f"cannot ask the Docker daemon for its runtimes: {exc}") from exc
    if runtime not in known:
        fix = (
            "run scripts/setup.sh (installs Debian's runsc and registers it in /etc/docker/daemon.json)"
            if runtime == "runsc"
            else "register it in /etc/docker/daemon.json"
        )
        raise UserError(
            f"sandbox runtime {runtime!r} is not registered with the Docker daemon (it knows: "
            f"{', '.join(sorted(known)) or 'none'}): {fix}"
        )


def _destroy_all(containers: list[SandboxContainer]) -> None:
    """Remove containers in parallel (each removal is a few hundred ms of daemon work)."""

    def destroy(container: SandboxContainer) -> None:
        try:
            container.destroy()
        except Exception:  # noqa: BLE001, S110 - best effort, also at interpreter exit
            pass

    doomed = list(containers)
    containers.clear()
    if not doomed:
        return
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(doomed))) as pool:
            list(pool.map(destroy, doomed))
    except RuntimeError:  # at interpreter exit no new threads can start: one by one
        for container in doomed:
            destroy(container)


class Sandbox:
    """A pool of `cfg.workers` warm containers. `run` is thread-safe; use as a context manager."""

    def __init__(self, cfg: SandboxConfig | None = None, *, client: docker.DockerClient | None = None) -> None:
        self.cfg = cfg or SandboxConfig()
        self._client = client
        self._owner = owner_label()
        self._idle: queue.Queue[SandboxContainer | None] = queue.Queue()
        self._live: list[SandboxContainer] = []
        self._live_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self.image_digest: str | None = None
        self.transport: str = self.cfg.transport  # resolved at start: "socket" or "exec"
        self.replaced = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Connect, check the image, remove stale containers, start the warm pool (in parallel)."""
        if self._pool is not None:
            return
        if self._client is None:
            self._client = sandbox_image.connect(pool_size=self.cfg.workers * 2 + 4)
        image = sandbox_image.resolve_image(self._client, self.cfg.image_name)
        check_runtime(self._client, self.cfg.runtime)
        if self.cfg.transport == "auto":
            # gVisor does not let a sandboxed process connect to a host unix socket: runsc uses the exec stream
            local = daemon_is_local(self._client) and self.cfg.runtime == "runc"
            self.transport = "socket" if local else "exec"
        else:
            self.transport = self.cfg.transport
        self.image_digest = image.id
        removed = remove_containers(self._client, stale_only=True)
        if removed:
            log.info("removed %d stale sandbox container(s)", removed)
        self._finalizer = weakref.finalize(self, _destroy_all, self._live)
        self._pool = ThreadPoolExecutor(max_workers=self.cfg.workers, thread_name_prefix="sandbox")
        try:
            for container in self._pool.map(lambda _: self._new_container(), range(self.cfg.workers)):
                self._idle.put(container)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Stop accepting work, wait for running jobs, remove this pool's containers."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._live_lock:
            _destroy_all(self._live)
        if self._client is not None:
            try:
                remove_containers(self._client, stale_only=True)
            except docker.errors.DockerException as exc:
                log.warning("could not remove stale sandbox containers: %s", exc)

    def _new_container(self) -> SandboxContainer:
        try:
            try:
                container = SandboxContainer(self._client, self.cfg, self.image_digest, self._owner, self.transport)
            except RunnerGone as exc:
                if not (self.transport == "socket" and self.cfg.transport == "auto"):
                    raise
                log.warning("socket transport failed (%s); using the docker exec stream from now on", exc)
                self.transport = "exec"
                container = SandboxContainer(self._client, self.cfg, self.image_digest, self._owner, self.transport)
        except docker.errors.ImageNotFound as exc:
            raise UserError(
                f"sandbox image {self.cfg.image_name!r} disappeared: run `selfinstruct sandbox build`"
            ) from exc
        except docker.errors.APIError as exc:
            raise UserError(
                f"the Docker daemon refused to start a sandbox container: {exc.explanation or exc}"
            ) from exc
        with self._live_lock:
            self._live.append(container)
        return container

    def _retire(self, container: SandboxContainer) -> None:
        with self._live_lock:
            if container in self._live:
                self._live.remove(container)
            self.replaced += 1
        try:
            container.destroy()
        except docker.errors.DockerException as exc:
            log.warning("could not remove sandbox container %s: %s", container.name, exc)

    # -- running jobs ------------------------------------------------------------------------------

    def run(self, jobs: Iterable[Job | dict], on_result: Callable[[Result], None] | None = None) -> list[Result]:
        """Run every job; results come back in the order of `jobs`. Blocks until all are done."""
        pool = self._require_pool()
        futures = [pool.submit(self._run_one, _as_job(job)) for job in jobs]
        if on_result is not None:
            for future in futures:
                future.add_done_callback(lambda f: on_result(f.result()))
        return [future.result() for future in futures]

    def iter_results(self, jobs: Iterable[Job | dict], window: int | None = None) -> Iterator[Result]:
        """Yield results as jobs finish (completion order), keeping at most `window` jobs in flight."""
        pool = self._require_pool()
        window = window or self.cfg.workers * 4
        pending: set[Future[Result]] = set()
        try:
            for job in jobs:
                pending.add(pool.submit(self._run_one, _as_job(job)))
                if len(pending) >= window:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        finally:
            for future in pending:
                future.cancel()

    def _require_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            raise RuntimeError("Sandbox is not started: use `with Sandbox(cfg) as sandbox:` or call start()")
        return self._pool

    def _limits(self) -> dict:
        cfg = self.cfg
        return {
            "timeout_s": cfg.timeout_s,
            "memory_mb": cfg.memory_mb,
            "fsize_mb": cfg.tmpfs_mb,
            "max_files": cfg.max_files,
            "output_limit": cfg.output_limit_bytes,
            "keep": cfg.output_keep_bytes,
            # runsc: gVisor counts processes per sandbox, so RLIMIT_NPROC bounds the job (the host cgroup holds
            # the sentry too); runc: the container's pids cgroup does (RLIMIT_NPROC would count the uid host-wide)
            "max_procs": cfg.pids_limit if cfg.runtime == "runsc" else None,
        }

    def _run_one(self, job: Job) -> Result:
        if not job.tests:
            return self._result(job, "error", stderr="[sandbox] the job has no tests, so it cannot pass\n")
        container = self._idle.get()
        try:
            for attempt in (1, 2):
                if container is None:
                    container = self._new_container()
                result, healthy, started = self._execute(container, job)
                if not healthy:
                    self._retire(container)
                    container = None
                if started or attempt == 2:
                    return result
            return result
        except Exception as exc:
            log.exception("sandbox failure on job %s", job.id)
            if container is not None:
                self._retire(container)
                container = None
            return self._result(job, "sandbox_error", stderr=f"[sandbox] {type(exc).__name__}: {exc}\n")
        finally:
            if container is not None and container.jobs_done >= self.cfg.recycle_after:
                self._retire(container)
                container = None
            self._idle.put(container)

    def _execute(self, container: SandboxContainer, job: Job) -> tuple[Result, bool, bool]:
        """Returns (result, container still healthy, job reached the runner)."""
        timeout_s = job.timeout_s or self.cfg.timeout_s
        payload, probes = runner_payload(job, timeout_s)
        try:
            reply = container.run(payload, self._limits(), timeout_s)
        except ForgedReply as exc:
            why = f"{exc}: a job wrote into the runner's stream; verdict discarded, container replaced"
            tests = [TestResult(passed=False, error="not judged (forged reply)") for _ in job.tests]
            return self._result(job, "error", tests=tests, stderr=f"[sandbox] {why}\n"), False, True
        except RunnerGone as exc:
            if exc.sent is False:
                return self._result(job, "sandbox_error", stderr=f"[sandbox] {exc}\n"), False, False
            if exc.deadline:
                outcome, why = "timeout", "the sandbox did not answer before the host deadline; container replaced"
            elif container.oom_killed():
                outcome, why = "memory", "the container ran out of memory; container replaced"
            else:
                outcome, why = "error", f"the sandbox runner died during this job ({exc}); container replaced"
            tests = [TestResult(passed=False, error=f"not run ({outcome})") for _ in job.tests]
            return self._result(job, outcome, tests=tests, stderr=f"[sandbox] {why}\n"), False, True
        tests = []
        for probe, record in zip(probes, reply.get("tests", [])):
            if probe is not None and "value" in record:
                tests.append(judge(probe, record["value"]))  # the expected value never left the host
            else:
                tests.append(TestResult(passed=record.get("passed") is True, error=record.get("error")))
        outcome = reply["outcome"]
        if outcome == "passed" and not all(test.passed for test in tests):
            outcome = "failed"
        result = self._result(
            job,
            outcome,
            tests=tests,
            duration_ms=reply.get("duration_ms", 0.0),
            stdout=reply.get("stdout", ""),
            stderr=reply.get("stderr", ""),
        )
        if reply.get("anomaly"):
            log.info("recycling container %s after job %s: %s", container.name, job.id, reply["anomaly"])
        return result, not reply.get("anomaly") and reply["outcome"] != "sandbox_error", True

    def _result(self, job: Job, outcome: str, **fields: object) -> Result:
        return Result(id=job.id, outcome=outcome, image_digest=self.image_digest, runtime=self.runtime, **fields)

    @property
    def runtime(self) -> str:
        """The container runtime every job of this pool runs under (`runc` or `runsc`)."""
        return self.cfg.runtime


def runner_payload(job: Job, timeout_s: float) -> tuple[dict, list[Probe | None]]:
    """What the runner receives for `job`: probe tests travel as their expression only (see probes.py)."""
    probes = [split_test(test) for test in job.tests]
    payload = {
        "solution": job.solution,
        "tests": [test if probe is None else {"probe": probe.expression} for test, probe in zip(job.tests, probes)],
        "imports": job.imports,
        "setup": job.setup,
        "timeout_s": timeout_s,
    }
    return payload, probes


def _as_job(job: Job | dict) -> Job:
    return job if isinstance(job, Job) else Job.model_validate(job)
