"""LLM stages on a pool of Ray actors (a small local Ray): same answers as a local backend, and an
actor killed mid-batch is replaced without losing or duplicating a result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from completion_server import CompletionServer, ServerState, deterministic_text

from generator.backends import (
    BackendError,
    GenerationRequest,
    OpenAIBackendConfig,
    TorchBackendConfig,
    VLLMBackendConfig,
    make_backend,
)
from generator.scale import LLMPool, SandboxPool
from selfinstruct.errors import UserError

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # no "docker" resource on purpose: SandboxPool must refuse with a clear line
    ray.init(num_cpus=2, num_gpus=0, object_store_memory=200 * 1024**2, include_dashboard=False,
             logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture
def server():
    with CompletionServer(ServerState(model="tiny")) as srv:
        yield srv


def _cfg(server, **overrides) -> OpenAIBackendConfig:
    values = dict(base_url=server.base_url, model="tiny", backoff_s=0.01, max_backoff_s=0.05, concurrency=2)
    values.update(overrides)
    return OpenAIBackendConfig(**values)


def _requests(count: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"problem {i}", n=2, max_tokens=5, seed=i) for i in range(count)]


def _texts(results) -> list[list[str]]:
    return [[c.text for c in cs] for cs in results]


def test_pool_answers_like_the_local_backend(local_ray, server):
    requests = _requests(10)
    with make_backend(_cfg(server)) as local:
        expected = _texts(local.generate(requests))
    with LLMPool(_cfg(server), replicas=2, chunk_size=3) as pool:
        assert pool.replicas == 2
        assert _texts(pool.generate(requests)) == expected
        assert pool.generate([]) == []
        pids = local_ray.get([a.ready.remote() for a in pool.actors])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert expected[4] == [deterministic_text("problem 4", j, 4, 5) for j in range(2)]


def test_an_actor_killed_mid_batch_is_replaced_and_nothing_is_lost(local_ray, server):
    server.state.delay_s = 0.1  # each request takes a while, so the kill lands inside a batch
    requests = _requests(24)
    pool = LLMPool(_cfg(server, concurrency=1), replicas=2, chunk_size=3)
    victim_pid = local_ray.get(pool.actors[0].ready.remote())
    killed = threading.Event()

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 30
        while len(server.state.bodies) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim_pid, signal.SIGKILL)
        killed.set()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        results = pool.generate(requests)
    finally:
        killer.join()
        stats = pool.stats
        pool.close()
    assert killed.is_set()
    assert _texts(results) == [[deterministic_text(r.prompt, j, r.seed, 5) for j in range(2)] for r in requests]
    assert stats.actors_replaced == 1 and stats.actors_started == 3
    assert stats.chunks_resubmitted >= 1
    assert stats.chunks_done == 8  # every chunk finished exactly once
    # every prompt was answered; the lost chunk's prompts were asked again, nothing else was
    asked = [b["prompt"] for b in server.state.bodies]
    assert set(asked) == {r.prompt for r in requests}
    assert len(asked) - len(requests) <= 3 * stats.chunks_resubmitted


def test_a_backend_error_inside_an_actor_is_one_backend_error_line(local_ray, server):
    with LLMPool(_cfg(server, model="no-such-model"), replicas=1) as pool:
        with pytest.raises(BackendError) as info:
            pool.generate(_requests(2))
    assert "\n" not in str(info.value)
    assert "The model `no-such-model` does not exist" in str(info.value)


def test_torch_pool_matches_the_local_backend(local_ray, tiny_checkpoint):
    cfg = TorchBackendConfig(checkpoint=str(tiny_checkpoint), batch_size=4)
    requests = [GenerationRequest(prompt=f"[INST] task {i} [/INST]", n=2, temperature=0.7, max_tokens=4, seed=i)
                for i in range(3)]
    local = make_backend(cfg)
    try:
        expected = _texts(local.generate(requests))
    finally:
        local.close()
    with LLMPool(cfg) as pool:
        assert pool.replicas == 1
        assert _texts(pool.generate(requests)) == expected


def test_a_failing_actor_constructor_is_a_user_error(local_ray, tmp_path):
    with pytest.raises(UserError, match="not found|neither"):
        LLMPool(TorchBackendConfig(checkpoint=str(tmp_path / "missing")))


def test_vllm_without_gpus_is_a_user_error(local_ray):
    with pytest.raises(UserError, match=r"needs 1 GPU\(s\) per replica and the Ray cluster has 0"):
        LLMPool(VLLMBackendConfig(model="/models/codellama-7b-instruct"))


def test_sandbox_pool_needs_a_docker_node(local_ray):
    with pytest.raises(UserError, match='no Ray node offers the resource "docker"'):
        SandboxPool(sandbox_cfg=None)


_ENSURE_RAY_SCRIPT = """
import json, ray
from generator.ray_cluster import ensure_ray
ensure_ray(address="local", num_cpus=1, docker_slots=2)
ensure_ray()  # idempotent
print(json.dumps({"docker": ray.cluster_resources().get("docker", 0)}))
ray.shutdown()
"""


@pytest.mark.timeout(120)
def test_ensure_ray_starts_a_local_ray_with_docker_slots():
    out = subprocess.run([sys.executable, "-c", _ENSURE_RAY_SCRIPT], capture_output=True, text=True, timeout=100,
                         env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == '{"docker": 2.0}'


@pytest.mark.timeout(120)
def test_ensure_ray_with_an_unreachable_address_is_one_clear_line():
    script = "from generator.ray_cluster import ensure_ray\nensure_ray('127.0.0.1:1')"
    wrapped = (
        "import sys\nfrom selfinstruct.errors import cli_entry\n"
        f"@cli_entry\ndef main():\n    exec({script!r})\n    return 0\nsys.exit(main())"
    )
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=100)
    assert out.returncode == 2
    assert "error: cannot connect to the Ray cluster at '127.0.0.1:1'" in out.stderr


@pytest.mark.timeout(120)
def test_ensure_ray_ignores_a_dead_cluster_left_on_this_machine():
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a killed `ray start --head`
        script = _ENSURE_RAY_SCRIPT.replace('address="local", ', "")
        env = {**os.environ, "RAY_TMPDIR": str(tmp)}
        env.pop("RAY_ADDRESS", None)
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == '{"docker": 2.0}'
        assert "does not answer" in out.stderr
        assert time.monotonic() - started < 60
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_an_actor_past_its_task_timeout_is_replaced(local_ray, server):
    from completion_server import Fault

    server.state.faults.append(Fault(stall_s=20))  # the first request hangs far past the pool's deadline
    requests = _requests(4)
    with LLMPool(_cfg(server, timeout_s=60), replicas=1, chunk_size=4, task_timeout_s=1.5) as pool:
        started = time.monotonic()
        results = pool.generate(requests)
        elapsed = time.monotonic() - started
        stats = pool.stats
    assert _texts(results) == [[deterministic_text(r.prompt, j, r.seed, 5) for j in range(2)] for r in requests]
    assert stats.timeouts == 1 and stats.actors_replaced == 1
    assert elapsed < 15


def test_a_replacement_that_cannot_start_reports_why(local_ray, tiny_checkpoint, tmp_path):
    import shutil

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    pool = LLMPool(TorchBackendConfig(checkpoint=str(checkpoint)))
    try:
        pid = local_ray.get(pool.actors[0].ready.remote())
        shutil.rmtree(checkpoint)  # the node lost its model files, then the actor died
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(UserError, match="checkpoint not found"):
            pool.generate([GenerationRequest(prompt="[INST] x [/INST]", max_tokens=2)])
        assert pool.stats.actors_replaced == 1
    finally:
        pool.close()
