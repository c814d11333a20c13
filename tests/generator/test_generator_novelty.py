"""The report's novelty counts on a real scripted run (real sandbox) against a corpus made for the test.

The scripted run keeps three triples: add_numbers (a + b), reverse_words and sum_of_squares (see
tests/generator/scripted_backend.py). The corpus below holds add_numbers with the same solution written
differently (same code after parsing), reverse_words with another solution, and a problem the run never
saw; sum_of_squares is new to it.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from db.engine import make_engine
from generator.corpus import CorpusProblem, load_corpus
from db.selection import normalize_code
from generator.novelty import novelty
from generator.report import build_report
from tests.generator.pipeline_helpers import config_dict

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


def _corpus_problem(pid: str, problem: str, solution: str) -> CorpusProblem:
    return CorpusProblem(id=pid, problem=problem, entry_point="f", tests=["assert True"] * 5, solution=solution,
                         split="train", difficulty="easy", topic="test")


def test_novelty_counts_new_problems_and_solutions_unlike_the_reference(tmp_path, docker_client) -> None:
    from generator.config import validate_config
    from generator.pipeline import Pipeline

    cfg = validate_config(config_dict(tmp_path / "run.db"))
    Pipeline(cfg, progress=False).run()
    engine = make_engine(cfg.db, must_exist=True)
    with engine.connect() as conn:
        run_id = conn.execute(sa.text("SELECT id FROM runs WHERE name = 'e2e'")).scalar_one()
        accepted = conn.execute(sa.text("SELECT text FROM problems WHERE status = 'accepted'")).scalars().all()
    add = next(t for t in accepted if "add_numbers" in t)
    reverse = next(t for t in accepted if "reverse_words" in t)
    corpus = [
        # upper case and extra spaces: the pipeline's normalization makes it the same problem
        _corpus_problem("c-1", "  " + add.upper() + "  ", "def add_numbers(a, b):\n    # the sum\n    return (a + b)\n"),
        _corpus_problem("c-2", reverse, "def reverse_words(sentence):\n    return ' '.join(sentence.split()[::-1])\n"),
        _corpus_problem("c-3", "Write a function that the scripted run never asks for.", "def f():\n    pass\n"),
    ]
    counts = novelty(engine, run_id, corpus)
    assert counts.accepted == len(accepted) and counts.new_problems == len(accepted) - 2
    assert (counts.triples, counts.triples_new_problem, counts.triples_other_solution) == (3, 1, 1)
    assert counts.triples_unlike_reference == 2
    # the report carries the same counts against the bundled corpus, where every scripted problem is new
    report = build_report(engine, run_id)
    assert report.novelty is not None and report.novelty.new_problems == report.novelty.accepted == len(accepted)
    engine.dispose()


def test_solutions_compare_as_normalized_code_ignoring_formatting_and_comments_but_not_code() -> None:
    assert normalize_code("def f(x):\n    return x+1  # one more\n") == normalize_code("def f(x):\n\n    return (x + 1)\n")
    assert normalize_code("def f(x):\n    return x + 1\n") != normalize_code("def f(x):\n    return 1 + x\n")
    assert normalize_code("def f(:\n") == "def f(:"
    assert len(load_corpus()) >= 200
