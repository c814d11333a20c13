"""A deterministic pipeline run driven through the real stage queries, with no LLM and no sandbox.

Every "LLM output" and "sandbox verdict" is a pure function of the item it is for (problem text,
sample index), never of database ids or timing. So any way of getting to the end (one process, a
process killed and restarted, two processes at once) must leave the same content, which
`snapshot` captures in an id-free form for comparison.

Used in-process by the tests and as a subprocess by db_writer.py.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from db import queries
from db.models import Execution, LLMCall, Problem, Run, Solution, Test, Triple
from db.records import (
    LLMCallRecord,
    NewProblem,
    SolutionSample,
    SolutionsOutcome,
    TestsOutcome,
    problem_call_key,
    text_hash,
)
from executor.jobs import Result, TestResult

CONFIG = {"problems": {"calls": 6, "per_call": 8}, "solutions": {"n": 4}}
FINGERPRINT = "fp-test-workload"


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:4], "big")


def _call(item_key: str, completion: str, sample_index: int = 0, stage_model: str = "tiny-llm") -> LLMCallRecord:
    return LLMCallRecord(
        item_key=item_key,
        sample_index=sample_index,
        model=stage_model,
        prompt=f"[INST] prompt for {item_key} [/INST]",
        completion=completion,
        params={"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "stop": ["[/TESTS]"], "n": 1},
        seed=1234,
        prompt_tokens=10 + len(item_key),
        completion_tokens=len(completion) // 4 + 1,
        latency_s=0.01,
        finish_reason="stop",
    )


def problem_texts(call_index: int, per_call: int) -> list[str]:
    """Questions of one problem-writing call; calls overlap, so exact duplicates occur."""
    return [
        f"Write a function f{(call_index * 5 + j) % 23} that returns its argument plus {(call_index * 5 + j) % 23}."
        for j in range(per_call)
    ]


def new_problems(call_index: int, per_call: int) -> list[NewProblem]:
    out = []
    for text in problem_texts(call_index, per_call):
        k = _h("status", text) % 10
        status, reason = ("contaminated", "HumanEval/0: 13-gram overlap") if k == 0 else ("accepted", None)
        out.append(NewProblem(text=text, norm_hash=text_hash(text.lower()), status=status, reason=reason))
    return out


def tests_outcome(problem_id: int, text: str) -> TestsOutcome:
    fname = text.split()[3]
    k = int(fname[1:])
    if _h("tests", text) % 7 == 0:
        return TestsOutcome(problem_id=problem_id, call=_call("", "garbage"), failure="no_tests_tags")
    tests = [f"assert {fname}({x}) == {x + k}" for x in range(3)]
    return TestsOutcome(
        problem_id=problem_id, call=_call("", "\n".join(tests)), tests=tests, shown_index=_h("shown", text) % 3
    )


def solutions_outcome(problem_id: int, text: str, shown_test_id: int, n: int) -> SolutionsOutcome:
    fname = text.split()[3]
    k = int(fname[1:])
    samples = []
    for i in range(n):
        v = _h("solution", text, i) % 4
        if v == 0:
            samples.append(
                SolutionSample(
                    call=_call("", "no tags here", i), code=None, parse_status="no_tags", parse_error="no [PYTHON]"
                )
            )
            continue
        code = f"def {fname}(x):\n    return x + {k if v != 1 else k + 1}\n"
        samples.append(SolutionSample(call=_call("", f"[PYTHON]\n{code}[/PYTHON]", i), code=code, parse_status="ok"))
    return SolutionsOutcome(problem_id=problem_id, shown_test_id=shown_test_id, samples=samples)


def execute(code: str, tests: list[str]) -> Result:
    """What the sandbox would say: run the asserts for real (they are trivial and trusted here)."""
    env: dict[str, Any] = {}
    exec(code, env)  # noqa: S102 - the workload's own generated code
    results = []
    for t in tests:
        try:
            exec(t, env)  # noqa: S102
            results.append(TestResult(passed=True))
        except AssertionError:
            results.append(TestResult(passed=False, error="AssertionError"))
    outcome = "passed" if all(r.passed for r in results) else "failed"
    return Result(
        id="", outcome=outcome, tests=results, duration_ms=1.0, stdout="", stderr="", image_digest="sha256:test"
    )


def run_pipeline(
    engine: sa.Engine, run_name: str, batch: int = 5, on_batch=lambda stage: None, rule: str = "first"
) -> int:
    """Drive every stage to the end (resuming whatever is already recorded); returns the run id."""
    calls, per_call, n = CONFIG["problems"]["calls"], CONFIG["problems"]["per_call"], CONFIG["solutions"]["n"]
    run_id = queries.start_run(engine, run_name, CONFIG, FINGERPRINT, "test")
    done = queries.problem_calls_done(engine, run_id)
    for c in range(calls):
        key = problem_call_key(c)
        if key in done:
            continue
        queries.record_problem_call(
            engine, run_id, _call(key, "1. ...", stage_model="big-llm"), new_problems(c, per_call)
        )
        on_batch("problems")
    while pending := queries.pending_tests(engine, run_id, batch):
        queries.record_tests(engine, run_id, [tests_outcome(p.id, p.text) for p in pending])
        on_batch("tests")
    while pending_s := queries.pending_solutions(engine, run_id, batch):
        queries.record_solutions(
            engine, run_id, [solutions_outcome(p.id, p.text, p.shown_test.id, n) for p in pending_s]
        )
        on_batch("solutions")
    while jobs := queries.pending_executions(engine, run_id, batch * 2):
        queries.record_executions(engine, [(j.solution_id, execute(j.code, j.tests)) for j in jobs])
        on_batch("executions")
    queries.select_triples(engine, run_id, rule=rule)  # type: ignore[arg-type]
    queries.finish_run(engine, run_id)
    return run_id


def snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every table, without ids (ids differ between runs that were interrupted)."""
    with engine.connect() as conn:
        problem_text = dict(conn.execute(sa.select(Problem.id, Problem.text)).all())
        key_text = {f"problem-{pid}": text for pid, text in problem_text.items()}
        test_code = dict(conn.execute(sa.select(Test.id, Test.code)).all())
        sol = {
            sid: (problem_text[pid], idx)
            for sid, pid, idx in conn.execute(sa.select(Solution.id, Solution.problem_id, Solution.sample_index))
        }
        run_name = dict(conn.execute(sa.select(Run.id, Run.name)).all())
        out: dict[str, list[tuple]] = defaultdict(list)
        for r in conn.execute(sa.select(Run.name, Run.config_fingerprint, Run.status)):
            out["runs"].append(tuple(r))
        for r in conn.execute(
            sa.select(
                LLMCall.run_id,
                LLMCall.stage,
                LLMCall.item_key,
                LLMCall.sample_index,
                LLMCall.completion,
                LLMCall.items_parsed,
                LLMCall.items_inserted,
                LLMCall.items_duplicate,
            )
        ):
            out["llm_calls"].append((run_name[r[0]], r[1], key_text.get(r[2], r[2]), *r[3:]))
        for r in conn.execute(
            sa.select(
                Problem.run_id,
                Problem.text,
                Problem.norm_hash,
                Problem.status,
                Problem.reason,
                Problem.tests_status,
                Problem.tests_reason,
                Problem.solutions_status,
            )
        ):
            out["problems"].append((run_name[r[0]], *r[1:]))
        for r in conn.execute(sa.select(Test.problem_id, Test.index, Test.code, Test.shown)):
            out["tests"].append((problem_text[r[0]], *r[1:]))
        for r in conn.execute(
            sa.select(Solution.id, Solution.code, Solution.parse_status, Solution.parse_error, Solution.shown_test_id)
        ):
            out["solutions"].append((*sol[r[0]], *r[1:4], test_code.get(r[4])))
        for r in conn.execute(
            sa.select(
                Execution.solution_id, Execution.outcome, Execution.tests, Execution.tests_passed, Execution.tests_total
            )
        ):
            out["executions"].append(
                (*sol[r[0]], r[1], json.dumps(r[2], sort_keys=True), r[3], r[4])
            )  # JSONB reorders keys
        for r in conn.execute(sa.select(Triple.run_id, Triple.problem_id, Triple.solution_id, Triple.selection_rule)):
            out["triples"].append((run_name[r[0]], problem_text[r[1]], *sol[r[2]], r[3]))
    return {k: sorted(v, key=repr) for k, v in out.items()}
