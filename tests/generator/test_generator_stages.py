"""The problems and tests stages on a real SQLite database: target, near-duplicates, seeds, resume."""

from __future__ import annotations

import sqlalchemy as sa

from db import queries
from generator.seeds import derive_seed
from generator.stages import ProblemsStage, StageContext, TestsStage
from tests.generator.stage_helpers import SeededProblems, drain, stage_context


def _problems(ctx: StageContext) -> list[tuple[str, str, str | None]]:
    with ctx.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT text, status, reason FROM problems ORDER BY id"))]


def test_problems_stop_after_the_call_that_reaches_the_target_whatever_the_batch_size(tmp_path):
    backend = SeededProblems()
    ctx = stage_context(tmp_path, "a.db", batch_size=8)
    stage = ProblemsStage(ctx, lambda: backend)
    drain(stage)
    rows = _problems(ctx)
    # 4 accepted per call: the second call crosses 7 and is kept whole; its batch-mates are not recorded.
    assert queries.problem_calls_done(ctx.engine, ctx.run_id) == {"call-0", "call-1"}
    assert [status for _, status, _ in rows].count("accepted") == 8
    near = [(text, reason) for text, status, reason in rows if status == "near_duplicate"]
    assert len(near) == 2
    assert all(reason == "near duplicate of: " + text.replace(" items.", " values.") for text, reason in near)
    assert [r.seed for r in backend.requests[:2]] == [derive_seed(5, "problems", 0), derive_seed(5, "problems", 1)]

    one_by_one = stage_context(tmp_path, "b.db", batch_size=1)
    drain(ProblemsStage(one_by_one, lambda: SeededProblems()))
    assert _problems(one_by_one) == rows


def test_a_restarted_problems_stage_rebuilds_its_state_from_the_database(tmp_path):
    ctx = stage_context(tmp_path, "c.db", batch_size=1, target=12)
    first = ProblemsStage(ctx, lambda: SeededProblems())
    first.step()  # one call, then the process "dies"
    resumed = ProblemsStage(ctx, lambda: SeededProblems())
    assert resumed.accepted == 4 and resumed.done == {0}
    drain(resumed)
    reference = stage_context(tmp_path, "d.db", batch_size=1, target=12)
    drain(ProblemsStage(reference, lambda: SeededProblems()))
    assert _problems(ctx) == _problems(reference)


def test_tests_stage_records_asserts_and_a_seeded_shown_test(tmp_path):
    ctx = stage_context(tmp_path, "e.db")
    backend = SeededProblems()
    drain(ProblemsStage(ctx, lambda: backend))
    drain(TestsStage(ctx, lambda: backend))
    with ctx.engine.connect() as conn:
        per_problem = conn.execute(
            sa.text("SELECT problem_id, count(*), sum(shown) FROM tests GROUP BY problem_id")
        ).all()
    assert len(per_problem) == 8 and all(n == 3 and shown == 1 for _, n, shown in per_problem)
    tests_requests = [r for r in backend.requests if "Problem:" in r.prompt]
    assert all(r.stop == ["[/TESTS]"] and r.temperature == 0.2 for r in tests_requests)
    assert len({r.seed for r in tests_requests}) == 8
