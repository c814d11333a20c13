"""`selfinstruct sandbox ...` as a user runs it: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker]


def _selfinstruct(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfinstruct.cli", "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _write_jobs(path: Path) -> None:
    good = [
        {"id": "ok", "solution": "def f():\n    return 1\n", "tests": ["assert f() == 1"]},
        {"id": "wrong", "solution": "def f():\n    return 2\n", "tests": ["assert f() == 1"]},
        {"id": "exits", "solution": "import sys\nsys.exit(0)\n", "tests": ["assert f() == 1"]},
    ]
    lines = [
        json.dumps(good[0]).encode(),
        b"{not json",
        json.dumps({"id": "no-tests-field", "solution": ""}).encode(),
        json.dumps(good[1]).encode(),
        b"\xff\xfe\xfd",
        b"",
        json.dumps(good[2]).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.timeout(180)
def test_run_writes_every_good_line_and_reports_bad_ones(sandbox_image, tmp_path):
    jobs, results_path = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
    _write_jobs(jobs)
    proc = _selfinstruct("run", str(jobs), "-o", str(results_path), "--workers", "2", "--timeout", "5")
    assert proc.returncode == 1, proc.stderr
    results = {row["id"]: row for row in map(json.loads, results_path.read_text().splitlines())}
    assert {k: v["outcome"] for k, v in results.items()} == {"ok": "passed", "wrong": "failed", "exits": "error"}
    assert set(results["ok"]) >= {"id", "outcome", "tests", "duration_ms", "stdout", "stderr"}
    assert results["ok"]["tests"] == [{"passed": True, "error": None}]
    assert f"{jobs}:2:" in proc.stderr and f"{jobs}:3: tests" in proc.stderr and f"{jobs}:5:" in proc.stderr
    assert "3 malformed line(s) skipped" in proc.stderr and "Traceback" not in proc.stderr

    again = _selfinstruct("run", str(jobs), "-o", str(results_path), "--resume")
    assert "3 already done" in again.stderr
    assert len(results_path.read_text().splitlines()) == 3


def test_no_daemon_is_one_line(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "solution": "", "tests": ["assert True"]}) + "\n")
    proc = _selfinstruct("run", str(jobs), env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Docker daemon")
    assert "Traceback" not in proc.stderr


def test_missing_image_and_missing_file_are_one_line(sandbox_image, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "solution": "", "tests": ["assert True"]}) + "\n")
    proc = _selfinstruct("run", str(jobs), "--image", "selfinstruct-sandbox:nope", timeout=60)
    assert proc.returncode == 2 and "selfinstruct sandbox build" in proc.stderr and "Traceback" not in proc.stderr
    proc = _selfinstruct("run", str(tmp_path / "absent.jsonl"), timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: jobs file not found")


@pytest.mark.timeout(60)
def test_build_is_quick_when_the_image_exists(sandbox_image):
    proc = _selfinstruct("build", timeout=60)
    assert proc.returncode == 0 and "sandbox image present" in proc.stderr


@pytest.mark.timeout(120)
def test_build_from_an_existing_image_and_from_one_that_cannot_be_had(sandbox_image, docker_client):
    image = docker_client.images.get(sandbox_image)
    docker_client.api.tag(image.id, "selfinstruct-test-base", "v1")
    adopted_tag = f"selfinstruct-sandbox:{image.id.split(':')[1][:12]}"
    try:
        proc = _selfinstruct("build", "--from-image", "selfinstruct-test-base:v1")
        assert proc.returncode == 0 and f"sandbox image ready: {adopted_tag}" in proc.stderr
        assert docker_client.images.get("selfinstruct-sandbox:latest").id == image.id
    finally:
        docker_client.images.remove("selfinstruct-test-base:v1")
        if adopted_tag not in image.tags:
            docker_client.images.remove(adopted_tag)
    proc = _selfinstruct("build", "--from-image", "registry.invalid/none:1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: cannot get image")


@pytest.mark.timeout(120)
def test_clean_stale_removes_orphaned_containers_only(sandbox_image, docker_client):
    import socket

    from executor.config import CONTAINER_LABEL
    from executor.container import OWNER_LABEL

    # `clean` without --stale would also remove the pools other tests (and other people) are using.
    orphan = docker_client.containers.run(
        sandbox_image,
        ["sleep", "infinity"],
        detach=True,
        labels={CONTAINER_LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}:999999999:1"},
    )
    alive = docker_client.containers.run(
        sandbox_image,
        ["sleep", "infinity"],
        detach=True,
        labels={CONTAINER_LABEL: "1", OWNER_LABEL: f"{socket.gethostname()}:1:{_start_time(1)}"},
    )
    try:
        proc = _selfinstruct("clean", "--stale")
        assert proc.returncode == 0 and proc.stderr.startswith("removed ")
        remaining = {c["Id"] for c in docker_client.api.containers(all=True)}
        assert orphan.id not in remaining and alive.id in remaining
    finally:
        for container in (orphan, alive):
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001, S110 - already gone is the expected case for the orphan
                pass


def _start_time(pid: int) -> str:
    from executor.container import process_start_time

    return process_start_time(pid)


@pytest.mark.timeout(120)
def test_resume_reruns_jobs_that_hit_a_sandbox_error(sandbox_image, tmp_path):
    jobs, results_path = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
    rows = [{"id": name, "solution": "def f():\n    return 1\n", "tests": ["assert f() == 1"]} for name in ("a", "b")]
    jobs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    earlier = {
        "id": "a",
        "outcome": "passed",
        "tests": [{"passed": True, "error": None}],
        "duration_ms": 1.0,
        "stdout": "",
        "stderr": "",
    }
    results_path.write_text(
        json.dumps(earlier) + "\n" + json.dumps({**earlier, "id": "b", "outcome": "sandbox_error"}) + "\n"
    )
    proc = _selfinstruct("run", str(jobs), "-o", str(results_path), "--resume", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert [(row["id"], row["outcome"]) for row in lines] == [("a", "passed"), ("b", "sandbox_error"), ("b", "passed")]


@pytest.mark.timeout(180)
def test_run_under_gvisor_gives_the_same_verdicts_and_names_its_runtime(sandbox_image, docker_client, tmp_path):
    from tests.conftest import require_docker_runtime

    require_docker_runtime(docker_client, "runsc")
    jobs, results_path = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
    _write_jobs(jobs)
    proc = _selfinstruct("run", str(jobs), "-o", str(results_path), "--workers", "1", "--runtime", "runsc")
    assert proc.returncode == 1, proc.stderr  # the malformed lines
    results = {row["id"]: row for row in map(json.loads, results_path.read_text().splitlines())}
    assert {k: v["outcome"] for k, v in results.items()} == {"ok": "passed", "wrong": "failed", "exits": "error"}
    assert {v["runtime"] for v in results.values()} == {"runsc"}


def test_a_runtime_the_daemon_does_not_know_is_one_line_naming_the_fix():
    from executor.sandbox import check_runtime
    from selfinstruct.errors import UserError

    class DaemonWithoutGvisor:  # what `docker info` answers on a daemon where runsc was never registered
        def info(self) -> dict:
            return {"Runtimes": {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}}

    with pytest.raises(UserError) as caught:
        check_runtime(DaemonWithoutGvisor(), "runsc")
    message = str(caught.value)
    assert "\n" not in message and "'runsc' is not registered" in message
    assert "scripts/setup.sh" in message and "io.containerd.runc.v2, runc" in message
    check_runtime(DaemonWithoutGvisor(), "runc")  # known: no error
