"""The whole pipeline on Ray: LLM stages through the OpenAI backend in actors, execution on sandbox actors.

1. In-process driver on a local Ray, with the sandbox actor SIGKILLed while it runs a batch: the run
   still finishes with exactly the expected triples and no lost or duplicated rows.
2. A real cluster (`ray start --head`) and `ray job submit --working-dir . -- <venv python> -m generator
   run --config FILE`: the job succeeds and the database holds the expected triples.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from scripted_server import openai_backend, scripted_server

from generator.config import validate_config
from generator.pipeline import Pipeline
from tests.generator.pipeline_helpers import config_dict, duplicate_rows, table_counts, triples, write_config
from tests.generator.scripted_backend import EXPECTED_SAMPLE_INDEX, EXPECTED_TRIPLES

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = Path(sys.executable)
RAY = VENV_PYTHON.parent / "ray"

pytestmark = [pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]


def _config(db_path: Path, server, run: str) -> dict:
    cfg = config_dict(db_path, run=run)
    backend = openai_backend(server)
    for stage in ("problems", "tests", "solutions"):
        cfg[stage]["backend"] = backend
    cfg["ray"] = {"enabled": True, "llm_replicas": 2}
    return cfg


def _kill_first_busy_sandbox_actor(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker (of this test's Ray) seen running SandboxActor.run."""
    me = psutil.Process()
    while not stop.is_set():
        for proc in me.children(recursive=True):
            try:
                if "SandboxActor.run" in " ".join(proc.cmdline()):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    return
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.01)


@pytest.mark.timeout(300)
def test_a_sandbox_actor_killed_mid_run_loses_and_duplicates_nothing(tmp_path, docker_client):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, resources={"docker": 1}, object_store_memory=200 * 1024**2, include_dashboard=False,
             logging_level="warning")
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_busy_sandbox_actor, args=(stop, killed))
    try:
        with scripted_server() as server:
            cfg = validate_config(_config(tmp_path / "run.db", server, run="ray-kill"))
            killer.start()
            report = Pipeline(cfg, progress=False, plot=False).run()
    finally:
        stop.set()
        killer.join()
        ray.shutdown()
    assert killed, "no sandbox actor was seen running a batch"
    assert report.status == "finished"
    got = triples(cfg.db, "ray-kill")
    assert {(text, code) for text, code, _ in got} == EXPECTED_TRIPLES
    assert {text: index for text, _, index in got} == EXPECTED_SAMPLE_INDEX
    assert duplicate_rows(cfg.db) == dict.fromkeys(duplicate_rows(cfg.db), 0)
    counts = table_counts(cfg.db)
    assert report.funnel["executions"]["pending"] == 0
    assert counts["executions"] == report.funnel["executions"]["executed"] == 38


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAY), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.timeout(420)
def test_ray_job_submit_runs_the_pipeline_on_a_cluster(tmp_path, docker_client):
    # every port this head listens on is a free one: other clusters may run on this machine
    gcs_port, dashboard_port, client_port, agent_port = (_free_port() for _ in range(4))
    temp_dir = Path("/tmp") / f"ray-si-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    # token authentication, with this test's own token, given to the head and to the job client alike
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        started = _ray("start", "--head", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                       "--dashboard-host=127.0.0.1", f"--ray-client-server-port={client_port}",
                       f"--dashboard-agent-listen-port={agent_port}", "--num-cpus=2", "--num-gpus=0",
                       f"--temp-dir={temp_dir}", "--object-store-memory=200000000",
                       "--resources", json.dumps({"docker": 1}), "--disable-usage-stats", env=env)
        assert started.returncode == 0, started.stderr[-3000:]
        with scripted_server() as server:
            db_path = tmp_path / "cluster.db"
            config = write_config(tmp_path / "run.yaml", _config(db_path, server, run="ray-job"))
            submitted = _ray(
                "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
                "--", str(VENV_PYTHON), "-m", "generator", "run", "--config", str(config), "--no-progress",
                env=env, timeout=360,
            )
        output = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, output[-4000:]
        assert "succeeded" in output
        got = triples(f"sqlite:///{db_path}", "ray-job")
        assert {(text, code) for text, code, _ in got} == EXPECTED_TRIPLES
        assert duplicate_rows(f"sqlite:///{db_path}") == dict.fromkeys(duplicate_rows(f"sqlite:///{db_path}"), 0)
    finally:
        # `ray stop` would end every Ray on this machine; end only this cluster's processes
        _stop_cluster([str(temp_dir), f":{gcs_port}", f"--port={dashboard_port}"])
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(marks: list[str]) -> None:
    """Terminate the processes whose command line names this cluster (its temp dir or ports), and their children."""
    me = os.getpid()
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.pid != me and any(mark in cmdline for mark in marks):
            roots.append(proc)
    procs: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        except psutil.NoSuchProcess:
            continue
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.timeout(180)
def test_sandbox_pool_answers_like_a_local_sandbox(docker_client):
    import ray

    from executor.config import SandboxConfig
    from executor.jobs import Job
    from executor.sandbox import Sandbox
    from generator.scale import SandboxPool

    jobs = [
        Job(id="pass", solution="def f(x):\n    return x + 1\n", tests=["assert f(1) == 2", "assert f(2) == 3"]),
        Job(id="fail", solution="def f(x):\n    return x\n", tests=["assert f(1) == 2"]),
        Job(id="exit", solution="import sys\nsys.exit(0)\n", tests=["assert False"]),
        Job(id="error", solution="def f(x):\n    return 1 / 0\n", tests=["assert f(1) == 1"]),
    ]
    cfg = SandboxConfig(workers=1, timeout_s=5, memory_mb=256)
    with Sandbox(cfg) as local:
        expected = [(r.id, r.outcome, [t.passed for t in r.tests]) for r in local.run(jobs)]
        local_digest = local.image_digest
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, resources={"docker": 1}, object_store_memory=200 * 1024**2, include_dashboard=False,
             logging_level="warning")
    try:
        with SandboxPool(cfg, chunk_size=2) as pool:
            got = [(r.id, r.outcome, [t.passed for t in r.tests]) for r in pool.run(jobs)]
            assert pool.image_digest == local_digest
            assert pool.run([]) == []
    finally:
        ray.shutdown()
    assert got == expected
    assert got[0] == ("pass", "passed", [True, True])
    assert got[1][1] != "passed" and got[2][1] != "passed"  # a wrong answer; an early exit is no pass
