"""The pipeline driver: runs (or resumes) a self-instruct run from its configuration.

    from generator.config import load_config
    from generator.pipeline import Pipeline
    report = Pipeline(load_config("run.yaml")).run()

Each stage (generator/stages.py) runs in its own thread, looping over batches of pending work in the
database, so tests are written for early problems while later problems are still being asked for, and
the sandbox runs while the LLMs generate. A stage ends when its upstream stages have ended and nothing
is pending. The database is the only state: rerunning the same command resumes.

Backends are built lazily, on the first batch that needs them, so a resumed run whose problems are done
never loads the problem model. Stages whose configured backends are equal share one backend, and a
backend is called by one stage at a time (vLLM engines and the built-in model are not reentrant). With
`ray.enabled` the backends are `LLMPool`s and the sandbox a `SandboxPool` (generator/scale.py); without,
they are built in this process. Tests and embedding code can inject backends and a sandbox.

A backend that keeps failing (`BackendError`, raised after its own retries) stops the run after the
other stages commit their batch in flight; the run is marked failed and the error is one line.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from db import lease, queries
from db.engine import init_db, make_engine
from generator.backends.base import Backend, BackendError, Completion, GenerationRequest
from generator.config import PipelineConfig, PluginBackendConfig
from generator.report import RunReport, build_report, default_plot_path, plot_funnel
from generator.stages import (
    ExecutionsStage,
    ProblemsStage,
    SandboxLike,
    SolutionsStage,
    StageContext,
    TestsStage,
)
from selfinstruct.errors import UserError

log = logging.getLogger(__name__)

LLM_STAGES = ("problems", "tests", "solutions")
STAGE_ORDER = ("problems", "tests", "solutions", "executions")
_IDLE_WAIT_S = 0.5
_MONITOR_S = 1.0


def code_version() -> str:
    """The package version and, in a git checkout, the commit (with "+dirty" for local changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("selfinstruct")
    except PackageNotFoundError:
        base = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+{commit}"[:100] if commit else base


class _Serialized:
    """One stage at a time through a backend that is shared between stages."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.model_name = backend.model_name
        self._lock = threading.Lock()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        with self._lock:
            return self.backend.generate(requests)

    def close(self) -> None:
        self.backend.close()


def build_plugin_backend(cfg: PluginBackendConfig) -> Backend:
    """Import `module:callable` and call it with the configured options."""
    module_name, _, attr = cfg.factory.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"plugin backend {cfg.factory!r} cannot be imported: {exc}") from None
    backend = target(**cfg.options)
    if not hasattr(backend, "generate") or not hasattr(backend, "model_name"):
        raise UserError(f"plugin backend {cfg.factory!r} returned {type(backend).__name__}, which is not a Backend")
    return backend


_THROUGHPUT_FIELDS = ("batch_size", "concurrency")  # backend settings that set throughput, not which model answers


def _model_key(backend_cfg: Any) -> str:
    """What identifies a backend's model and its outputs: its whole config minus the throughput settings."""
    data = backend_cfg.model_dump(mode="json")
    for field in _THROUGHPUT_FIELDS:
        data.pop(field, None)  # a plugin's have none at this level (its options are its own)
    return json.dumps(data, sort_keys=True)


class Resources:
    """The run's backends and sandbox, built on first use and closed at the end."""

    def __init__(
        self,
        cfg: PipelineConfig,
        backends: Mapping[str, Backend] | None = None,
        sandbox: SandboxLike | None = None,
    ) -> None:
        self.cfg = cfg
        self._injected = dict(backends or {})
        self._sandbox: SandboxLike | None = sandbox
        self._owned_sandbox: contextlib.ExitStack | None = None
        self._by_config: dict[str, _Serialized] = {}
        self._lock = threading.Lock()

    def uses_ray(self) -> bool:
        """Whether anything will run on Ray: an LLM stage neither injected nor a plugin, or the sandbox."""
        if not self.cfg.ray.enabled:
            return False
        in_driver = set(self._injected) | {
            stage for stage in LLM_STAGES if isinstance(getattr(self.cfg, stage).backend, PluginBackendConfig)
        }
        return not in_driver >= set(LLM_STAGES) or self._sandbox is None

    def backend(self, stage: str) -> Backend:
        with self._lock:
            if stage in self._injected:
                injected = self._injected[stage]
                key = f"injected:{id(injected)}"
                if key not in self._by_config:
                    self._by_config[key] = _Serialized(injected)
                return self._by_config[key]
            stage_cfg = getattr(self.cfg, stage).backend
            key = _model_key(stage_cfg)
            if key not in self._by_config:
                self._by_config[key] = _Serialized(self._build_backend(self._merged(key, stage_cfg)))
            return self._by_config[key]

    def _merged(self, key: str, stage_cfg: Any) -> Any:
        """One backend per model: the stages that name the same model with different batching settings
        share it, built with the largest of each (three pools of one model would need three times the
        CPUs or GPUs: on a 2-CPU Ray cluster the third was never placed)."""
        siblings = [
            getattr(self.cfg, name).backend
            for name in LLM_STAGES
            if name not in self._injected and _model_key(getattr(self.cfg, name).backend) == key
        ]
        update = {
            field: max(getattr(sibling, field) for sibling in siblings)
            for field in _THROUGHPUT_FIELDS
            if hasattr(stage_cfg, field)
        }
        return stage_cfg.model_copy(update=update)

    def _build_backend(self, stage_cfg: Any) -> Backend:
        if isinstance(stage_cfg, PluginBackendConfig):
            return build_plugin_backend(stage_cfg)
        if self.cfg.ray.enabled:
            from generator.scale import LLMPool

            return LLMPool(stage_cfg, self.cfg.ray.llm_replicas)
        from generator.backends.factory import make_backend

        return make_backend(stage_cfg)

    def sandbox(self) -> SandboxLike:
        with self._lock:
            if self._sandbox is None:
                stack = contextlib.ExitStack()
                if self.cfg.ray.enabled:
                    from generator.scale import SandboxPool

                    self._sandbox = stack.enter_context(SandboxPool(self.cfg.sandbox))
                else:
                    from executor.sandbox import Sandbox

                    self._sandbox = stack.enter_context(Sandbox(self.cfg.sandbox))
                self._owned_sandbox = stack
            return self._sandbox

    def close(self) -> None:
        with self._lock:
            for backend in self._by_config.values():
                if backend.backend not in self._injected.values():
                    with contextlib.suppress(Exception):
                        backend.close()
            self._by_config.clear()
            if self._owned_sandbox is not None:
                self._owned_sandbox.close()
                self._owned_sandbox = None
                self._sandbox = None


class StageFailed(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


class Pipeline:
    """Runs the configured run to completion (or resumes it) and returns its report."""

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        backends: Mapping[str, Backend] | None = None,
        sandbox: SandboxLike | None = None,
        console: Console | None = None,
        progress: bool | None = None,
        allow_config_change: bool = False,
        take_over: bool = False,
        plot: bool = True,
    ) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        # Bars on a terminal; elsewhere (a Ray job's log) a progress line every 30 s; False: neither.
        self.show_progress = self.console.is_terminal if progress is None else progress
        self.progress_lines = progress is None and not self.console.is_terminal
        self.allow_config_change = allow_config_change
        self.take_over = take_over
        self.plot = plot
        self._resources = Resources(cfg, backends, sandbox)
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._errors: list[StageFailed] = []

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> RunReport:
        started = time.monotonic()
        engine = make_engine(self.cfg.db)
        init_db(engine)
        if self._resources.uses_ray():
            from generator.ray_cluster import ensure_ray

            ensure_ray(self.cfg.ray.address)
        driver = lease.new_driver_id()
        run_id = queries.start_run(
            engine,
            self.cfg.run,
            self.cfg.model_dump(mode="json"),
            self.cfg.fingerprint(),
            code_version(),
            allow_config_change=self.allow_config_change,
            driver=driver,
            take_over=self.take_over,
        )
        ctx = StageContext(engine=engine, run_id=run_id, cfg=self.cfg)
        executions = ExecutionsStage(ctx, self._resources.sandbox)
        stages = {
            "problems": ProblemsStage(ctx, lambda: self._resources.backend("problems")),
            "tests": TestsStage(ctx, lambda: self._resources.backend("tests")),
            "solutions": SolutionsStage(ctx, lambda: self._resources.backend("solutions")),
            "executions": executions,
        }
        status = "failed"
        try:
            with lease.Heartbeat(engine, run_id, driver, self._lease_lost):
                with self._progress(engine, run_id):
                    self._run_stages(stages)
                # the lease is renewed through the final selection too
                queries.select_triples(engine, run_id, self.cfg.selection, self.cfg.seed)
            status = "finished"
        finally:
            with contextlib.suppress(Exception):
                executions.close()
            self._resources.close()
            queries.finish_run(engine, run_id, status, driver=driver)
        report = build_report(
            engine,
            run_id,
            wall_s=time.monotonic() - started,
            executed_now=executions.executed,
            execution_busy_s=executions.busy_s,
        )
        if self.plot:
            report.plot_path = str(plot_funnel(report, default_plot_path(self.cfg.db, self.cfg.run)))
        engine.dispose()
        return report

    def _lease_lost(self, holder: str | None) -> None:
        """Another driver took the run over: stop after the batches in flight (their rows are kept)."""
        error = lease.LeaseLost(
            f"run {self.cfg.run!r} was taken over by {holder or 'another driver'}; this driver stopped "
            "(everything it recorded is kept)"
        )
        self._errors.append(StageFailed("driver", error))
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def _run_stages(self, stages: dict[str, Any]) -> None:
        done = {name: threading.Event() for name in stages}
        threads = []
        for position, name in enumerate(STAGE_ORDER):
            upstream = [done[up] for up in STAGE_ORDER[:position]]
            thread = threading.Thread(
                target=self._work, args=(name, stages[name], upstream, done[name]), name=f"stage-{name}", daemon=True
            )
            threads.append(thread)
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(timeout=0.2)
        except KeyboardInterrupt:
            # Let every stage commit the batch it holds (a second Ctrl-C abandons them: still safe).
            self._stop.set()
            self.console.print("interrupted: finishing the batches in flight (Ctrl-C again to drop them)")
            for thread in threads:
                thread.join()
            raise
        if self._errors:
            failure = self._errors[0]
            error = failure.error
            if isinstance(error, lease.LeaseLost):
                raise error
            if isinstance(error, UserError) and not isinstance(error, BackendError):
                raise UserError(f"{failure.stage} stage: {error}") from None
            if isinstance(error, BackendError):
                raise UserError(
                    f"{failure.stage} stage failed: {' '.join(str(error).split())[:400]} "
                    "(work already recorded is kept; rerun the same command to resume)"
                ) from None
            raise error

    def _work(self, name: str, stage: Any, upstream: list[threading.Event], done: threading.Event) -> None:
        try:
            while not self._stop.is_set():
                upstream_done = all(event.is_set() for event in upstream)
                if stage.step():
                    with self._changed:
                        self._changed.notify_all()
                    continue
                if upstream_done:
                    break
                with self._changed:
                    self._changed.wait(_IDLE_WAIT_S)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self._errors.append(StageFailed(name, exc))
            self._stop.set()
        finally:
            done.set()
            with self._changed:
                self._changed.notify_all()

    # -- progress -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _progress(self, engine: Any, run_id: int) -> Iterator[None]:
        """Live bars per stage, refreshed from the database's funnel (the truth, also after a resume)."""
        stop = threading.Event()
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.show_progress,
            transient=False,
        )
        tasks = {name: progress.add_task(name, total=None, note="") for name in (*STAGE_ORDER, "triples")}

        def refresh() -> None:
            f = queries.funnel(engine, run_id)
            p, t, s, e = f["problems"], f["tests"], f["solutions"], f["executions"]
            progress.update(
                tasks["problems"],
                completed=p["accepted"],
                total=self.cfg.problems.target,
                note=f"calls {p['calls']}/{self.cfg.problems.max_calls}",
            )
            progress.update(
                tasks["tests"], completed=t["done"] + t["failed"], total=p["accepted"], note=f"failed {t['failed']}"
            )
            progress.update(
                tasks["solutions"],
                completed=s["problems_done"] + s["problems_failed"],
                total=t["done"],
                note=f"samples {s['samples']}",
            )
            progress.update(
                tasks["executions"],
                completed=e["executed"],
                total=e["executed"] + max(e["pending"], 0),
                note=f"pass {e['pass_rate']:.1%}",
            )
            progress.update(tasks["triples"], completed=f["triples"]["count"], total=p["accepted"] or None, note="")

        def monitor() -> None:
            last_line, wait_s = 0.0, _MONITOR_S
            while not stop.wait(wait_s):
                with contextlib.suppress(Exception):
                    started = time.monotonic()
                    refresh()
                    # On a big run the funnel's counts take a while: never spend over ~10% of a core on them.
                    wait_s = max(_MONITOR_S, 10 * (time.monotonic() - started))
                    if self.progress_lines and time.monotonic() - last_line > 30:
                        last_line = time.monotonic()
                        self.console.print(
                            "progress: "
                            + ", ".join(f"{name} {int(progress.tasks[i].completed)}" for name, i in tasks.items())
                        )

        thread = threading.Thread(target=monitor, name="progress", daemon=True)
        with progress:
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
                with contextlib.suppress(Exception):
                    refresh()


def run_pipeline(
    cfg: PipelineConfig,
    *,
    backends: Mapping[str, Backend] | None = None,
    sandbox: SandboxLike | None = None,
    **kwargs: Any,
) -> RunReport:
    """Convenience: `Pipeline(cfg, ...).run()`."""
    return Pipeline(cfg, backends=backends, sandbox=sandbox, **kwargs).run()
