"""Pipeline overhead: problems/s through every stage with an instant LLM vs the sandbox alone on the same jobs.

    .venv/bin/python bench/pipeline.py [--problems 200] [--n 10] [--workers 2] [--repeats 2]

The LLM stages cost nothing here (an instant backend answers from the prompt), so what is measured is
what the driver adds around the sandbox: parsing, the database queue (SQLite), batching, selection.
Both sides use the same warm sandbox (started once, outside the timings) and the same jobs: the
baseline runs, in one `Sandbox.run` call, exactly the jobs the pipeline executed (read back from its
database). Each side runs `--repeats` times, alternating; the best of each is compared. Prints one
JSON line; the target is a ratio >= 0.8. Other work on the machine moves single runs by tens of
percent: compare the best runs, and look at `pair_ratios` (each pipeline run vs the sandbox run after it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from db.engine import make_engine  # noqa: E402
from executor.config import SandboxConfig  # noqa: E402
from executor.jobs import Job  # noqa: E402
from executor.sandbox import Sandbox  # noqa: E402
from generator.backends.base import Completion, GenerationRequest  # noqa: E402
from generator.config import validate_config  # noqa: E402
from generator.pipeline import Pipeline  # noqa: E402

_PROBLEM = re.compile(r"Problem: Write a function (\w+)\(x\) that returns x plus (\d+)")


class InstantBackend:
    """Answers the three prompts at once: distinct problems, five tests, n solutions (one in four correct)."""

    model_name = "instant"

    def _answer(self, request: GenerationRequest, sample: int) -> str:
        prompt = request.prompt
        if "programming interview questions" in prompt and "Problem:" not in prompt:
            count = int(re.search(r"Write (\d+) programming", prompt).group(1))  # type: ignore[union-attr]
            base = request.seed or 0
            return "\n".join(
                f"{i + 1}. Write a function fn_{base}_{i}(x) that returns x plus {(base * 31 + i) % 997}."
                for i in range(count)
            )
        match = _PROBLEM.findall(prompt)[-1]
        name, constant = match[0], int(match[1])
        if "tests to check the correctness" in prompt:
            asserts = "\n".join(f"# Test case {k + 1}:\nassert {name}({k}) == {k + constant}" for k in range(5))
            return f"\n[TESTS]\n{asserts}\n"
        body = f"return x + {constant}" if sample % 4 == 3 else f"return x + {constant + 1}"
        code = f"def {name}(x):\n    total = 0\n    for _ in range(100):\n        total += 1\n    {body}\n"
        return f"\n[PYTHON]\n{code}[/PYTHON]"

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        return [
            [
                Completion(
                    text=self._answer(r, i), finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_s=0.0
                )
                for i in range(r.n)
            ]
            for r in requests
        ]

    def close(self) -> None:
        pass


def _config(db: Path, problems: int, n: int, workers: int, batch: int) -> dict:
    plugin = {"kind": "plugin", "factory": "bench.pipeline:InstantBackend"}  # unused: backends are injected
    return {
        "run": "bench",
        "db": f"sqlite:///{db}",
        "problems": {"target": problems, "per_call": 50, "max_calls": problems, "backend": plugin},
        "tests": {"backend": plugin},
        "solutions": {"n": n, "backend": plugin},
        "sandbox": {"workers": workers, "timeout_s": 10},
        "execution": {"batch_size": batch},
        "ray": {"enabled": False},
    }


def _executed_jobs(db_url: str, imports: str) -> list[Job]:
    """The jobs the pipeline ran, rebuilt from its database (solution code + every test of its problem)."""
    import sqlalchemy as sa

    engine = make_engine(db_url, must_exist=True)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.id, s.code, s.problem_id FROM solutions s "
                "JOIN executions e ON e.solution_id = s.id ORDER BY s.id"
            )
        ).all()
        tests: dict[int, list[str]] = {}
        for problem_id, code in conn.execute(
            sa.text('SELECT problem_id, code FROM tests ORDER BY problem_id, "index"')
        ):
            tests.setdefault(problem_id, []).append(code)
    engine.dispose()
    return [Job(id=str(sid), solution=code, tests=tests[pid], imports=imports) for sid, code, pid in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=10, help="solutions per problem")
    parser.add_argument("--workers", type=int, default=2, help="sandbox containers")
    parser.add_argument("--batch", type=int, default=256, help="solutions per sandbox call in the pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; the best counts")
    args = parser.parse_args(argv)

    backend = InstantBackend()
    pipeline_s: list[float] = []
    sandbox_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, Sandbox(SandboxConfig(workers=args.workers, timeout_s=10)) as sandbox:
        sandbox.run([Job(id=f"warm{i}", solution="x = 1", tests=["assert x == 1"]) for i in range(20)])
        jobs: list[Job] = []
        report = None
        for repeat in range(args.repeats):
            cfg = validate_config(
                _config(Path(tmp) / f"bench{repeat}.db", args.problems, args.n, args.workers, args.batch)
            )
            started = time.perf_counter()
            report = Pipeline(
                cfg,
                backends={s: backend for s in ("problems", "tests", "solutions")},
                sandbox=sandbox,
                progress=False,
                plot=False,
            ).run()
            pipeline_s.append(time.perf_counter() - started)
            if not jobs:
                jobs = _executed_jobs(cfg.db, cfg.execution.imports)
            started = time.perf_counter()
            results = sandbox.run(jobs)
            sandbox_s.append(time.perf_counter() - started)
            assert len(results) == len(jobs)
        assert report is not None
        accepted = report.funnel["problems"]["accepted"]
        executed = report.funnel["executions"]["executed"]
        passed = report.funnel["executions"]["outcomes"].get("passed", 0)
        baseline_passed = sum(r.outcome == "passed" for r in results)

    best_pipeline, best_sandbox = min(pipeline_s), min(sandbox_s)
    out = {
        "bench": "pipeline",
        "problems": accepted,
        "executions": executed,
        "solutions_per_problem": args.n,
        "sandbox_workers": args.workers,
        "pipeline_s": round(best_pipeline, 3),
        "sandbox_alone_s": round(best_sandbox, 3),
        "pipeline_problems_per_s": round(accepted / best_pipeline, 2),
        "sandbox_problems_per_s": round(accepted / best_sandbox, 2),
        "pipeline_executions_per_s": round(executed / best_pipeline, 1),
        "sandbox_executions_per_s": round(len(jobs) / best_sandbox, 1),
        "ratio": round(best_sandbox / best_pipeline, 3),
        "target_ratio": 0.8,
        "passed_pipeline": passed,
        "passed_sandbox_alone": baseline_passed,
        "triples": report.triples,
        "pair_ratios": [round(b / a, 3) for a, b in zip(pipeline_s, sandbox_s, strict=True)],
        "all_runs_s": {"pipeline": [round(s, 3) for s in pipeline_s], "sandbox": [round(s, 3) for s in sandbox_s]},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
