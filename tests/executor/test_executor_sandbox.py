"""The pool's contract: ordering, thread safety, limits, output handling, container lifecycle, errors."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from executor.config import CONTAINER_LABEL, SandboxConfig
from executor.container import OWNER_LABEL
from executor.jobs import Job, Result
from executor.sandbox import Sandbox
from selfinstruct.errors import UserError

pytestmark = [pytest.mark.docker]


def _identity_job(index: int) -> Job:
    return Job(
        id=f"job-{index}",
        solution=f"def value():\n    return {index}\n",
        tests=[f"assert value() == {index}", f"assert value() != {index}"],
    )


@pytest.mark.timeout(120)
def test_results_keep_job_order_across_threads(sandbox):
    outputs: dict[int, list] = {}

    def worker(offset: int) -> None:
        outputs[offset] = sandbox.run([_identity_job(offset + i) for i in range(15)])

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for offset, results in outputs.items():
        assert [r.id for r in results] == [f"job-{offset + i}" for i in range(15)]
        assert all(r.outcome == "failed" and [t.passed for t in r.tests] == [True, False] for r in results)
        assert results[0].tests[1].error == f"AssertionError: {offset} != {offset} is false"


@pytest.mark.timeout(60)
def test_per_job_timeout_override_and_streaming_results(sandbox):
    slow = Job(id="slow", solution="import time\ntime.sleep(30)", tests=["assert True"], timeout_s=0.5)
    fast = Job(id="fast", solution="", tests=["assert 1 + 1 == 2"])
    started = time.monotonic()
    results = {r.id: r for r in sandbox.iter_results([slow, fast])}
    assert results["slow"].outcome == "timeout" and results["fast"].outcome == "passed"
    assert results["slow"].duration_ms < 2000  # its own 0.5 s limit, not the sandbox's 5 s
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_output_is_truncated_and_non_utf8_is_replaced(sandbox):
    job = Job(
        id="noisy",
        solution="import os, sys\nprint('a' * 20000)\nsys.stdout.flush()\nos.write(2, b'\\xff\\xfe bad')\n",
        tests=["assert True"],
    )
    (result,) = sandbox.run([job])
    assert result.outcome == "passed"
    assert result.stdout.startswith("a" * 4096) and "more bytes not kept" in result.stdout
    assert len(result.stdout) < 4200
    assert "\ufffd\ufffd bad" in result.stderr
    assert Result.model_validate_json(result.model_dump_json()) == result  # JSON-safe despite the bad bytes


@pytest.mark.timeout(60)
def test_a_job_without_tests_cannot_pass(sandbox):
    (result,) = sandbox.run([Job(id="empty", solution="x = 1", tests=[])])
    assert result.outcome == "error"


@pytest.mark.timeout(120)
def test_containers_are_recycled_after_k_jobs(sandbox_image, docker_client):
    with Sandbox(SandboxConfig(workers=1, recycle_after=2), client=docker_client) as pool:
        results = pool.run([_identity_job(i) for i in range(5)])
        assert [r.outcome for r in results] == ["failed"] * 5
        assert pool.replaced == 2


@pytest.mark.timeout(120)
def test_stale_containers_are_removed_at_start_and_own_ones_at_exit(sandbox_image, docker_client):
    dead_owner = f"{socket.gethostname()}:999999999:1"
    foreign_owner = "some-other-host:1:1"
    stale = docker_client.containers.run(
        sandbox_image, ["sleep", "infinity"], detach=True, labels={CONTAINER_LABEL: "1", OWNER_LABEL: dead_owner}
    )
    foreign = docker_client.containers.run(
        sandbox_image, ["sleep", "infinity"], detach=True, labels={CONTAINER_LABEL: "1", OWNER_LABEL: foreign_owner}
    )
    try:
        with Sandbox(SandboxConfig(workers=1), client=docker_client) as pool:
            own_names = [c.name for c in pool._live]
            labeled = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": CONTAINER_LABEL})}
            assert stale.id not in labeled and foreign.id in labeled
        remaining = {
            name.lstrip("/")
            for c in docker_client.api.containers(all=True, filters={"label": CONTAINER_LABEL})
            for name in c["Names"]
        }
        assert not remaining & set(own_names)
    finally:
        foreign.remove(force=True)


def test_missing_image_is_a_user_error(docker_client):
    with pytest.raises(UserError, match="selfinstruct sandbox build"):
        Sandbox(SandboxConfig(image="selfinstruct-sandbox:does-not-exist"), client=docker_client).start()


def test_missing_daemon_is_a_user_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(UserError, match="cannot reach the Docker daemon"):
        Sandbox(SandboxConfig(workers=1)).start()


@pytest.mark.timeout(120)
def test_the_exec_stream_transport_gives_the_same_verdicts(sandbox_image, docker_client, sandbox):
    assert sandbox.transport == "socket"  # the default on a local daemon
    jobs = [
        _identity_job(1),
        Job(id="exits", solution="import os\nos._exit(0)", tests=["assert True"]),
        Job(id="kills", solution="import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", tests=["assert True"]),
        Job(id="ok", solution="print('hi')", tests=["assert 1 == 1"]),
    ]
    with Sandbox(SandboxConfig(workers=1, transport="exec"), client=docker_client) as pool:
        assert pool.transport == "exec"
        results = pool.run(jobs)
    assert [r.outcome for r in results] == ["failed", "error", "error", "passed"]
    assert results[3].stdout == "hi\n"
    assert [r.outcome for r in sandbox.run(jobs)] == ["failed", "error", "error", "passed"]


def test_a_host_process_cannot_pose_as_the_runner(sandbox):
    import socket as socket_module

    from executor.container import SandboxContainer

    container = sandbox._live[0]
    ours, theirs = socket_module.socketpair(socket_module.AF_UNIX)
    try:
        assert isinstance(container, SandboxContainer)
        assert container._is_our_runner(ours) is False  # peer: this test process, uid 0, outside the container
    finally:
        ours.close()
        theirs.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["socket", "exec"])
def test_a_container_killed_from_outside_is_replaced_without_blaming_the_next_job(
    sandbox_image, docker_client, transport
):
    with Sandbox(SandboxConfig(workers=1, transport=transport), client=docker_client) as pool:
        (first,) = pool.run([_identity_job(1)])
        docker_client.api.kill(pool._live[0].container.id)
        time.sleep(0.5)
        (second,) = pool.run([_identity_job(2)])
        assert (first.outcome, second.outcome) == ("failed", "failed")
        assert [t.passed for t in second.tests] == [True, False]
        assert pool.replaced == 1


@pytest.mark.timeout(60)
def test_probes_and_statements_share_one_namespace(sandbox):
    job = Job(
        id="mixed",
        solution="def sorted_copy(values):\n    return sorted(values)\n",
        tests=[
            "data = [3, 1, 2]",
            "assert sorted_copy(data) == [1, 2, 3]",
            "assert data == [3, 1, 2]",
            "assert sorted_copy(data)",
            "assert not sorted_copy([])",
            "assert sorted_copy(data) == (1, 2, 3)",
            "for n in range(3):\n    assert sorted_copy([n]) == [n]",
        ],
    )
    (result,) = sandbox.run([job])
    assert [t.passed for t in result.tests] == [True, True, True, True, True, False, True]
    assert result.tests[5].error == "AssertionError: [1, 2, 3] == (1, 2, 3) is false"
    assert result.outcome == "failed"


@pytest.mark.timeout(60)
def test_oversized_sources_are_compiled_in_the_child(sandbox):
    padding = "# " + "x" * 300_000 + "\n"  # over the runner's pre-compile limit
    job = Job(id="big", solution=padding + "def f():\n    return 1\n", tests=["assert f() == 1", "assert f() == 2"])
    (result,) = sandbox.run([job])
    assert [t.passed for t in result.tests] == [True, False] and result.outcome == "failed"


@pytest.mark.timeout(60)
def test_a_probe_value_too_large_to_check_fails_its_test(sandbox):
    job = Job(id="huge", solution="def f():\n    return list(range(400_000))\n", tests=["assert f() == [0]"])
    (result,) = sandbox.run([job])
    assert result.outcome == "failed" and "value too large to check" in result.tests[0].error


@pytest.mark.timeout(120)
def test_channel_directories_of_vanished_pools_are_removed(sandbox_image, docker_client):
    import os
    import tempfile

    from executor.container import CHANNEL_LABEL, CHANNEL_PREFIX

    labeled = tempfile.mkdtemp(prefix=CHANNEL_PREFIX)  # a stale container's directory
    orphan = tempfile.mkdtemp(prefix=CHANNEL_PREFIX)  # a directory whose container is already gone
    os.utime(orphan, (0, 0))
    dead_owner = f"{socket.gethostname()}:999999999:1"
    docker_client.containers.run(
        sandbox_image,
        ["sleep", "infinity"],
        detach=True,
        labels={CONTAINER_LABEL: "1", OWNER_LABEL: dead_owner, CHANNEL_LABEL: labeled},
    )
    with Sandbox(SandboxConfig(workers=1), client=docker_client) as pool:
        channel = pool._live[0]._channel_dir
        assert not os.path.exists(labeled) and not os.path.exists(orphan)
        assert os.path.isdir(channel)  # a live pool's directory stays
    assert not os.path.exists(channel)
