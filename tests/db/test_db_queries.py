"""Stage queries: hand out pending work, record batches idempotently, select triples, count the funnel."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from db import queries as q
from db.models import Execution, LLMCall, Problem, Solution, Test, Triple
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
from selfinstruct.errors import UserError


def call(key: str = "", completion: str = "out", **kw) -> LLMCallRecord:
    return LLMCallRecord(
        item_key=key,
        model="m",
        prompt="p",
        completion=completion,
        params={"temperature": 0.8, "n": 1},
        seed=7,
        prompt_tokens=3,
        completion_tokens=4,
        latency_s=0.5,
        **kw,
    )


def problem(text: str, **kw) -> NewProblem:
    return NewProblem(text=text, norm_hash=text_hash(text.lower()), **kw)


def count(engine: sa.Engine, model) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(model)))


def setup_problems(engine: sa.Engine, texts: list[str]) -> int:
    run_id = q.start_run(engine, "r", {"k": 1}, "fp", "v1")
    q.record_problem_call(engine, run_id, call(problem_call_key(0)), [problem(t) for t in texts])
    return run_id


def add_tests(engine: sa.Engine, run_id: int, n_tests: int = 3, shown: int = 1) -> None:
    items = [
        TestsOutcome(
            problem_id=p.id, call=call(), tests=[f"assert f({i}) == {i}" for i in range(n_tests)], shown_index=shown
        )
        for p in q.pending_tests(engine, run_id, 100)
    ]
    q.record_tests(engine, run_id, items)


def add_solutions(engine: sa.Engine, run_id: int, codes: list[str | None]) -> None:
    items = [
        SolutionsOutcome(
            problem_id=p.id,
            shown_test_id=p.shown_test.id,
            samples=[
                SolutionSample(call=call(), code=c, parse_status="ok" if c is not None else "no_tags") for c in codes
            ],
        )
        for p in q.pending_solutions(engine, run_id, 100)
    ]
    q.record_solutions(engine, run_id, items)


def result(outcome: str, passed: list[bool]) -> Result:
    return Result(
        id="x",
        outcome=outcome,
        tests=[TestResult(passed=p) for p in passed],
        duration_ms=2.5,
        image_digest="sha256:abc",
    )


def test_start_run_creates_resumes_and_guards_the_config(engine: sa.Engine) -> None:
    run_id = q.start_run(engine, "r", {"a": 1}, "fp1", "v1")
    q.finish_run(engine, run_id, "failed")
    assert q.start_run(engine, "r", {"a": 1}, "fp1", "v2") == run_id  # resume
    with pytest.raises(UserError, match="config fingerprint"):
        q.start_run(engine, "r", {"a": 2}, "fp2", "v2")
    assert q.start_run(engine, "r", {"a": 2}, "fp2", "v2", allow_config_change=True) == run_id
    f = q.funnel(engine, run_id)
    assert f["run"]["status"] == "running" and f["run"]["code_version"] == "v2"
    assert q.get_run_id(engine, "r") == run_id
    with pytest.raises(UserError, match="no run named 'nope'.*runs: r"):
        q.get_run_id(engine, "nope")


def test_problem_call_drops_exact_duplicates_and_counts_them(engine: sa.Engine) -> None:
    run_id = q.start_run(engine, "r", {}, "fp", "v")
    first = q.record_problem_call(engine, run_id, call("call-0"), [problem("A"), problem("B"), problem("a")])
    assert (first.parsed, first.inserted, first.duplicates, first.already_recorded) == (3, 2, 1, False)
    second = q.record_problem_call(
        engine,
        run_id,
        call("call-1"),
        [problem("B"), problem("C", status="contaminated", reason="HumanEval/3: overlap")],
    )
    assert (second.inserted, second.duplicates) == (1, 1)
    again = q.record_problem_call(engine, run_id, call("call-1"), [problem("D")])  # a rerun of call-1
    assert again.already_recorded and again.inserted == 1 and again.call_id == second.call_id
    assert count(engine, Problem) == 3 and count(engine, LLMCall) == 2
    assert q.problem_calls_done(engine, run_id) == {"call-0", "call-1"}
    assert q.count_problems(engine, run_id) == 2
    assert q.count_problems(engine, run_id, "contaminated") == 1
    assert q.count_problems(engine, run_id, None) == 3
    assert [t for _, t in q.existing_problem_texts(engine, run_id)] == ["A", "B"]
    # the same question in another run is not a duplicate
    other = q.start_run(engine, "other", {}, "fp", "v")
    assert q.record_problem_call(engine, other, call("call-0"), [problem("A")]).inserted == 1


def test_problem_call_needs_an_item_key(engine: sa.Engine) -> None:
    run_id = q.start_run(engine, "r", {}, "fp", "v")
    with pytest.raises(ValueError, match="item_key"):
        q.record_problem_call(engine, run_id, call(""), [problem("A")])


def test_tests_stage_records_asserts_shown_test_and_failures_once(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2", "P3"])
    pending = q.pending_tests(engine, run_id, 10)
    assert [p.text for p in pending] == ["P1", "P2", "P3"]
    assert [p.text for p in q.pending_tests(engine, run_id, 2)] == ["P1", "P2"]
    items = [
        TestsOutcome(
            problem_id=pending[0].id, call=call(), tests=["assert f(1) == 1", "assert f(2) == 2"], shown_index=1
        ),
        TestsOutcome(problem_id=pending[1].id, call=call(completion="junk"), failure="no_valid_asserts"),
    ]
    assert q.record_tests(engine, run_id, items) == 2
    assert q.record_tests(engine, run_id, items) == 0  # rerun: nothing new
    assert [p.text for p in q.pending_tests(engine, run_id, 10)] == ["P3"]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Test.index, Test.code, Test.shown).order_by(Test.index)).all()
        assert rows == [(0, "assert f(1) == 1", False), (1, "assert f(2) == 2", True)]
        status = dict(conn.execute(sa.select(Problem.text, Problem.tests_status)).all())
        assert status == {"P1": "done", "P2": "failed", "P3": "pending"}
        assert conn.scalar(sa.select(Problem.tests_reason).where(Problem.text == "P2")) == "no_valid_asserts"
        keys = set(conn.scalars(sa.select(LLMCall.item_key).where(LLMCall.stage == "tests")))
    assert keys == {f"problem-{pending[0].id}", f"problem-{pending[1].id}"}
    f = q.funnel(engine, run_id)["tests"]
    assert (f["done"], f["failed"], f["pending"], f["failures"], f["tests"]) == (1, 1, 1, {"no_valid_asserts": 1}, 2)


def test_tests_outcome_validation() -> None:
    with pytest.raises(ValueError, match="at least one test"):
        TestsOutcome(problem_id=1, call=call(), tests=[])
    with pytest.raises(ValueError, match="shown_index"):
        TestsOutcome(problem_id=1, call=call(), tests=["assert 1"], shown_index=3)


def test_recording_for_a_problem_of_another_run_is_refused(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1"])
    other = q.start_run(engine, "other", {}, "fp", "v")
    (p,) = q.pending_tests(engine, run_id, 10)
    with pytest.raises(ValueError, match="not problems of run"):
        q.record_tests(engine, other, [TestsOutcome(problem_id=p.id, call=call(), failure="x")])
    assert count(engine, LLMCall) == 1  # the batch's transaction rolled back


def test_solutions_stage_records_n_samples_with_parse_status(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2"])
    add_tests(engine, run_id, n_tests=3, shown=2)
    pending = q.pending_solutions(engine, run_id, 10)
    assert len(pending) == 2
    assert [t.code for t in pending[0].tests] == ["assert f(0) == 0", "assert f(1) == 1", "assert f(2) == 2"]
    assert pending[0].shown_test.index == 2 and pending[0].shown_test.shown
    items = [
        SolutionsOutcome(
            problem_id=pending[0].id,
            shown_test_id=pending[0].shown_test.id,
            samples=[
                SolutionSample(call=call(), code="def f(x): return x", parse_status="ok"),
                SolutionSample(call=call(), code=None, parse_status="syntax_error", parse_error="line 1"),
                SolutionSample(call=call(), code=None, parse_status="no_tags"),
            ],
        )
    ]
    assert q.record_solutions(engine, run_id, items) == 1
    assert q.record_solutions(engine, run_id, items) == 0
    assert [p.id for p in q.pending_solutions(engine, run_id, 10)] == [pending[1].id]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                Solution.sample_index,
                Solution.parse_status,
                Solution.parse_error,
                Solution.shown_test_id,
                LLMCall.sample_index,
            )
            .join(LLMCall, LLMCall.id == Solution.call_id)
            .order_by(Solution.sample_index)
        ).all()
    assert rows == [
        (0, "ok", None, pending[0].shown_test.id, 0),
        (1, "syntax_error", "line 1", pending[0].shown_test.id, 1),
        (2, "no_tags", None, pending[0].shown_test.id, 2),
    ]
    f = q.funnel(engine, run_id)["solutions"]
    assert (
        f["parse"] == {"ok": 1, "syntax_error": 1, "no_tags": 1}
        and f["problems_done"] == 1
        and f["problems_pending"] == 1
    )


def test_solution_sample_validation() -> None:
    with pytest.raises(ValueError):
        SolutionSample(call=call(), code=None, parse_status="ok")
    with pytest.raises(ValueError):
        SolutionSample(call=call(), code="x = 1", parse_status="no_tags")


def test_executions_cover_parsed_solutions_once_with_all_tests(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1"])
    add_tests(engine, run_id, n_tests=4)
    add_solutions(engine, run_id, ["def f(x): return x", None, "def f(x): return 0"])
    jobs = q.pending_executions(engine, run_id, 10)
    assert [j.code for j in jobs] == ["def f(x): return x", "def f(x): return 0"]
    assert jobs[0].tests == [f"assert f({i}) == {i}" for i in range(4)]
    assert jobs[0].job().id == str(jobs[0].solution_id)
    assert [j.solution_id for j in q.pending_executions(engine, run_id, 10, after_solution_id=jobs[0].solution_id)] == [
        jobs[1].solution_id
    ]
    long_output = "x" * 100_000
    timed_out = Result(id="t", outcome="timeout", tests=[TestResult(passed=True)], stdout=long_output)
    assert q.record_executions(engine, [(jobs[0].solution_id, result("passed", [True] * 4))]) == 1
    assert (
        q.record_executions(
            engine, [(jobs[0].solution_id, result("failed", [False] * 4)), (jobs[1].solution_id, timed_out)]
        )
        == 1
    )
    assert q.pending_executions(engine, run_id, 10) == []
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.select(Execution.outcome, Execution.tests_passed)).all())
        assert rows == {"passed": 4, "timeout": 1}  # the rerun did not overwrite "passed"
        t = conn.execute(sa.select(Execution.tests_total, Execution.stdout).where(Execution.outcome == "timeout")).one()
    assert t.tests_total == 4  # the problem has 4 tests, the timed-out run reported 1
    assert len(t.stdout) < 9000 and "truncated" in t.stdout
    with pytest.raises(ValueError, match="no solutions"):
        q.record_executions(engine, [(10_000, result("passed", [True]))])


def test_select_first_and_random_passing(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, [f"P{i}" for i in range(40)])
    add_tests(engine, run_id, n_tests=1, shown=0)
    add_solutions(engine, run_id, ["a = 0", "a = 1", "a = 2", None, "a = 4"])
    jobs = q.pending_executions(engine, run_id, 1000)
    # sample 0 fails everywhere, samples 1, 2 and 4 pass
    q.record_executions(
        engine,
        [(j.solution_id, result("failed" if j.code == "a = 0" else "passed", [j.code != "a = 0"])) for j in jobs],
    )
    assert q.select_triples(engine, run_id, "first") == 40
    assert q.select_triples(engine, run_id, "first") == 0
    with engine.connect() as conn:
        firsts = (
            conn.execute(sa.select(Solution.sample_index).join(Triple, Triple.solution_id == Solution.id))
            .scalars()
            .all()
        )
    assert set(firsts) == {1}
    with engine.begin() as conn:
        conn.execute(sa.delete(Triple))
    assert q.select_triples(engine, run_id, "random", seed=3) == 0  # every problem is final: not queued
    assert q.select_triples(engine, run_id, "random", seed=3, rescan=True) == 40

    def chosen() -> dict[int, int]:
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(Triple.problem_id, Solution.sample_index).join(
                        Solution, Solution.id == Triple.solution_id
                    )
                ).all()
            )

    picks = chosen()
    assert set(picks.values()) == {1, 2, 4}  # only passing samples, and not always the first
    with engine.begin() as conn:
        conn.execute(sa.delete(Triple))
    q.select_triples(engine, run_id, "random", seed=3, rescan=True)
    assert chosen() == picks  # deterministic from the seed
    with engine.begin() as conn:
        conn.execute(sa.delete(Triple))
    q.select_triples(engine, run_id, "random", seed=4, rescan=True)
    assert chosen() != picks


def test_selection_waits_for_every_execution_and_needs_a_pass(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2"])
    add_tests(engine, run_id, n_tests=1, shown=0)
    add_solutions(engine, run_id, ["a = 0", "a = 1"])
    jobs = q.pending_executions(engine, run_id, 10)
    by_problem: dict[int, list] = {}
    for j in jobs:
        by_problem.setdefault(j.problem_id, []).append(j)
    p1, p2 = sorted(by_problem)
    q.record_executions(engine, [(by_problem[p1][1].solution_id, result("passed", [True]))])
    q.record_executions(engine, [(j.solution_id, result("failed", [False])) for j in by_problem[p2]])
    assert q.select_triples(engine, run_id) == 0  # P1's sample 0 has not run yet; P2 has no pass
    q.record_executions(engine, [(by_problem[p1][0].solution_id, result("error", []))])
    assert q.select_triples(engine, run_id) == 1
    f = q.funnel(engine, run_id)
    assert f["executions"]["outcomes"] == {"passed": 1, "failed": 2, "error": 1}
    assert f["executions"]["pass_rate"] == pytest.approx(0.25)
    assert f["executions"]["problems_with_pass"] == 1 and f["triples"]["count"] == 1


def test_funnel_counts_tokens_per_stage(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2"])
    add_tests(engine, run_id)
    add_solutions(engine, run_id, ["x = 1"] * 3)
    tokens = q.funnel(engine, run_id)["tokens"]
    assert tokens["problems"] == {"calls": 1, "prompt_tokens": 3, "completion_tokens": 4, "latency_s": 0.5}
    assert tokens["tests"]["calls"] == 2 and tokens["solutions"]["calls"] == 6
    assert tokens["solutions"]["completion_tokens"] == 24
    p = q.funnel(engine, run_id)["problems"]
    assert (p["calls"], p["parsed"], p["accepted"]) == (1, 2, 2)


def test_select_triples_for_given_problems_only(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2", "P3"])
    add_tests(engine, run_id, n_tests=1, shown=0)
    add_solutions(engine, run_id, ["a = 1"])
    jobs = q.pending_executions(engine, run_id, 10)
    q.record_executions(engine, [(j.solution_id, result("passed", [True])) for j in jobs])
    assert q.select_triples(engine, run_id, problem_ids=[]) == 0
    assert q.select_triples(engine, run_id, problem_ids=[jobs[0].problem_id, jobs[1].problem_id]) == 2
    assert q.select_triples(engine, run_id, problem_ids=[jobs[0].problem_id]) == 0
    assert q.select_triples(engine, run_id) == 1


def test_problem_calls_in_one_batch(engine: sa.Engine) -> None:
    run_id = q.start_run(engine, "r", {}, "fp", "v")
    q.record_problem_call(engine, run_id, call("call-0"), [problem("A")])
    stats = q.record_problem_calls(
        engine,
        run_id,
        [
            (call("call-1"), [problem("B"), problem("C"), problem("A")]),
            (call("call-0"), [problem("Z")]),  # recorded before
            (call("call-2"), [problem("C"), problem("D")]),  # C is a duplicate of call-1's
        ],
    )
    assert [(s.already_recorded, s.parsed, s.inserted, s.duplicates) for s in stats] == [
        (False, 3, 2, 1),
        (True, 1, 1, 0),
        (False, 2, 1, 1),
    ]
    assert [t for _, t in q.existing_problem_texts(engine, run_id)] == ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="own key"):
        q.record_problem_calls(engine, run_id, [(call("call-9", sample_index=1), [problem("E")])])


@pytest.mark.postgres
def test_postgres_statistics_follow_bulk_loads(pg_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage queries ANALYZE once a process has written enough rows (autovacuum lags a bulk load)."""
    from db_workload import run_pipeline

    from db import planner_stats
    from db.engine import init_db, make_engine

    monkeypatch.setattr(planner_stats, "FIRST_ANALYZE_AFTER_ROWS", 50)
    monkeypatch.setattr(planner_stats, "_written", {})
    engine = make_engine(pg_schema_url)
    init_db(engine)

    def analyzed() -> set[str]:
        with engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.text(
                        "SELECT relname FROM pg_stat_user_tables "
                        "WHERE schemaname = current_schema() AND last_analyze IS NOT NULL"
                    )
                )
            )

    assert "solutions" not in analyzed()
    run_pipeline(engine, "run")
    assert {"problems", "solutions", "executions", "llm_calls"} <= analyzed()
    engine.dispose()


def test_selection_queue_looks_only_at_problems_with_new_executions(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1", "P2", "P3"])
    add_tests(engine, run_id, n_tests=1, shown=0)
    add_solutions(engine, run_id, ["a = 1", "a = 2"])
    jobs = q.pending_executions(engine, run_id, 10)
    first, second = jobs[0], jobs[1]  # the two samples of P1

    def queued() -> set[str]:
        with engine.connect() as conn:
            return set(conn.scalars(sa.select(Problem.text).where(Problem.selection_check.is_(True))))

    assert queued() == set()
    q.record_executions(engine, [(first.solution_id, result("passed", [True]))])
    assert queued() == {"P1"}
    assert q.select_triples(engine, run_id) == 0  # P1 still has a solution to run: stays queued
    assert queued() == {"P1"}
    q.record_executions(engine, [(second.solution_id, result("failed", [False]))])
    assert q.select_triples(engine, run_id) == 1
    assert queued() == set()  # final: never looked at again
    rest = [(j.solution_id, result("failed", [False])) for j in jobs[2:]]
    q.record_executions(engine, rest)
    assert queued() == {"P2", "P3"}
    assert q.select_triples(engine, run_id) == 0  # final without a pass
    assert queued() == set()


def test_core_statements_for_other_dialects_leave_the_same_rows(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dialects without the DB-API fast path (neither SQLite nor PostgreSQL) go through SQLAlchemy Core;
    with the fast path switched off, SQLite must end with exactly the fast path's rows."""
    from db_workload import run_pipeline, snapshot

    from db import dbapi
    from db.engine import init_db, make_engine

    snapshots = []
    for fast in (True, False):
        monkeypatch.setattr(dbapi, "FAST_DIALECTS", dbapi.FAST_DIALECTS if fast else ())
        engine = make_engine(f"sqlite:///{tmp_path / f'fast-{fast}.db'}")
        init_db(engine)
        run_pipeline(engine, "run")
        run_pipeline(engine, "run")  # and a rerun adds nothing
        snapshots.append(snapshot(engine))
        engine.dispose()
    assert snapshots[0] == snapshots[1]
    assert len(snapshots[0]["executions"]) > 20 and snapshots[0]["triples"]


def test_stored_per_test_results_are_passed_and_error_only(engine: sa.Engine) -> None:
    run_id = setup_problems(engine, ["P1"])
    add_tests(engine, run_id, n_tests=2)
    add_solutions(engine, run_id, ["def f(x): return x"])
    (job,) = q.pending_executions(engine, run_id, 10)
    tests = [TestResult(passed=True), TestResult(passed=False, error="AssertionError: 1 != 2")]
    q.record_executions(engine, [(job.solution_id, Result(id="x", outcome="failed", tests=tests))])
    with engine.connect() as conn:
        stored = conn.scalar(sa.select(Execution.tests))
    assert stored == [{"passed": True, "error": None}, {"passed": False, "error": "AssertionError: 1 != 2"}]
