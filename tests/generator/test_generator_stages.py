"""The problems and tests stages on a real SQLite database: target, near-duplicates, seeds, resume."""

from __future__ import annotations

import random

import sqlalchemy as sa

from db import queries
from db.engine import init_db, make_engine
from generator.backends.base import Completion, GenerationRequest
from generator.config import validate_config
from generator.seeds import derive_seed
from generator.stages import ProblemsStage, StageContext, TestsStage

SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "de"]


def _words(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(4)) for _ in range(count)]


class SeededProblems:
    """Answers a problems prompt with 4 new problems chosen by the request's seed, plus a near paraphrase."""

    model_name = "seeded"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        self.requests += requests
        out = []
        for request in requests:
            if "Problem:" in request.prompt:  # a tests prompt
                text = "[TESTS]\n# Test case 1:\nassert f(1) == 1\n# Test case 2:\nassert f(2) == 2\nassert f(3) == 3\n"
            else:
                rng = random.Random(request.seed)
                items = [
                    "Write a function {} that returns the {} {} {} of {} {} {} values.".format(*_words(rng, 7))
                    for _ in range(4)
                ]
                items.append(items[0].replace(" values.", " items."))  # a near duplicate of the first
                text = "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
            out.append(
                [Completion(text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=5, latency_s=0.0)]
            )
        return out

    def close(self) -> None:
        pass


def _context(tmp_path, name: str, **problems) -> StageContext:
    plugin = {"kind": "plugin", "factory": "x:y"}
    cfg = validate_config(
        {
            "run": "stages",
            "db": f"sqlite:///{tmp_path / name}",
            "seed": 5,
            "problems": {
                "target": 7,
                "per_call": 5,
                "max_calls": 10,
                "near_dup": {"enabled": True, "threshold": 0.6},
                "backend": plugin,
                **problems,
            },
            "tests": {"backend": plugin},
            "solutions": {"backend": plugin},
            "ray": {"enabled": False},
        }
    )
    engine = make_engine(cfg.db)
    init_db(engine)
    run_id = queries.start_run(engine, cfg.run, cfg.model_dump(mode="json"), cfg.fingerprint(), "test")
    return StageContext(engine=engine, run_id=run_id, cfg=cfg)


def _problems(ctx: StageContext) -> list[tuple[str, str, str | None]]:
    with ctx.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT text, status, reason FROM problems ORDER BY id"))]


def _drain(stage) -> int:
    steps = 0
    while stage.step():
        steps += 1
    return steps


def test_problems_stop_after_the_call_that_reaches_the_target_whatever_the_batch_size(tmp_path):
    backend = SeededProblems()
    ctx = _context(tmp_path, "a.db", batch_size=8)
    stage = ProblemsStage(ctx, lambda: backend)
    _drain(stage)
    rows = _problems(ctx)
    # 4 accepted per call: the second call crosses 7 and is kept whole; its batch-mates are not recorded.
    assert queries.problem_calls_done(ctx.engine, ctx.run_id) == {"call-0", "call-1"}
    assert [status for _, status, _ in rows].count("accepted") == 8
    near = [(text, reason) for text, status, reason in rows if status == "near_duplicate"]
    assert len(near) == 2
    assert all(reason == "near duplicate of: " + text.replace(" items.", " values.") for text, reason in near)
    assert [r.seed for r in backend.requests[:2]] == [derive_seed(5, "problems", 0), derive_seed(5, "problems", 1)]

    one_by_one = _context(tmp_path, "b.db", batch_size=1)
    _drain(ProblemsStage(one_by_one, lambda: SeededProblems()))
    assert _problems(one_by_one) == rows


def test_a_restarted_problems_stage_rebuilds_its_state_from_the_database(tmp_path):
    ctx = _context(tmp_path, "c.db", batch_size=1, target=12)
    first = ProblemsStage(ctx, lambda: SeededProblems())
    first.step()  # one call, then the process "dies"
    resumed = ProblemsStage(ctx, lambda: SeededProblems())
    assert resumed.accepted == 4 and resumed.done == {0}
    _drain(resumed)
    reference = _context(tmp_path, "d.db", batch_size=1, target=12)
    _drain(ProblemsStage(reference, lambda: SeededProblems()))
    assert _problems(ctx) == _problems(reference)


def test_tests_stage_records_asserts_and_a_seeded_shown_test(tmp_path):
    ctx = _context(tmp_path, "e.db")
    backend = SeededProblems()
    _drain(ProblemsStage(ctx, lambda: backend))
    _drain(TestsStage(ctx, lambda: backend))
    with ctx.engine.connect() as conn:
        per_problem = conn.execute(
            sa.text("SELECT problem_id, count(*), sum(shown) FROM tests GROUP BY problem_id")
        ).all()
    assert len(per_problem) == 8 and all(n == 3 and shown == 1 for _, n, shown in per_problem)
    tests_requests = [r for r in backend.requests if "Problem:" in r.prompt]
    assert all(r.stop == ["[/TESTS]"] and r.temperature == 0.2 for r in tests_requests)
    assert len({r.seed for r in tests_requests}) == 8
