"""The pipeline end to end through the built-in model backend (a tiny random Llama on CPU, no Ray).

A random model writes no usable problems, tests or code: every stage must still run, record each
call with its tokens, and record the parse failures instead of failing the run. The second test
gives the tiny model real work by taking problems and tests from the scripted server: it then writes
(unusable) solutions for real problems, and those are recorded as parse failures too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from scripted_server import openai_backend, scripted_server

from db.engine import make_engine
from generator.config import validate_config
from generator.pipeline import Pipeline
from tests.generator.pipeline_helpers import config_dict, duplicate_rows

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def long_context_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with room for the paper's one-shot prompts (byte-level tokens: ~700 each)."""
    from model.args import ModelArgs
    from model.init import init_checkpoint

    args = ModelArgs.from_preset("tiny", max_seq_len=2048)
    return Path(init_checkpoint(args, tmp_path_factory.mktemp("tiny-2k"), seed=0))


def _torch_backend(checkpoint: Path) -> dict:
    return {"kind": "torch", "checkpoint": str(checkpoint), "batch_size": 8}


def _calls(db_url: str) -> list[tuple[str, int, int, str]]:
    engine = make_engine(db_url, must_exist=True)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT stage, prompt_tokens, completion_tokens, model FROM llm_calls ORDER BY id")).all()
        return [tuple(r) for r in rows]
    finally:
        engine.dispose()


def test_every_stage_runs_on_a_random_model_and_records_its_failures(tmp_path, long_context_checkpoint, docker_client):
    cfg = config_dict(tmp_path / "random.db", run="random-model")
    backend = _torch_backend(long_context_checkpoint)
    cfg["problems"].update(backend=backend, target=3, max_calls=2, batch_size=2, max_tokens=48)
    cfg["tests"].update(backend=backend, max_tokens=32)
    cfg["solutions"].update(backend=backend, n=2, max_tokens=32)
    cfg = validate_config(cfg)
    report = Pipeline(cfg, progress=False, plot=False).run()

    assert report.status == "finished"
    assert report.funnel["problems"]["calls"] == 2
    calls = _calls(cfg.db)
    assert [stage for stage, *_ in calls] == ["problems", "problems"]
    assert all(p > 0 and 0 < c <= 48 and model == str(long_context_checkpoint) for _, p, c, model in calls)
    # the random text was parsed and the outcome recorded with each call, not raised
    engine = make_engine(cfg.db, must_exist=True)
    try:
        with engine.connect() as conn:
            parsed = conn.execute(sa.text("SELECT items_parsed, items_inserted FROM llm_calls")).all()
    finally:
        engine.dispose()
    assert all(p is not None and i is not None for p, i in parsed)
    assert report.funnel["problems"]["accepted"] == sum(i for _, i in parsed)
    assert report.triples == 0


def test_the_built_in_model_writes_solutions_for_real_problems(tmp_path, long_context_checkpoint, docker_client):
    with scripted_server() as server:
        cfg = config_dict(tmp_path / "mixed.db", run="mixed")
        cfg["problems"]["backend"] = cfg["tests"]["backend"] = openai_backend(server)
        cfg["solutions"].update(backend=_torch_backend(long_context_checkpoint), n=2, max_tokens=24)
        cfg = validate_config(cfg)
        report = Pipeline(cfg, progress=False, plot=False).run()

    assert report.status == "finished"
    solutions = report.funnel["solutions"]
    assert solutions["samples"] == 4 * 2  # four problems got tests; two samples each from the tiny model
    assert sum(solutions["parse"].values()) == 8 and solutions["parse"].get("ok", 0) == 0
    sampled = [c for c in _calls(cfg.db) if c[0] == "solutions"]
    assert len(sampled) == 8
    assert all(p > 0 and 0 < c <= 24 for _, p, c, _ in sampled)
    # a request's prompt-token shares add up to its prompt's length (with one BOS)
    from model.checkpoint import load_tokenizer

    tokenizer = load_tokenizer(long_context_checkpoint)
    engine = make_engine(cfg.db, must_exist=True)
    try:
        with engine.connect() as conn:
            per_item = conn.execute(sa.text(
                "SELECT min(prompt), sum(prompt_tokens) FROM llm_calls WHERE stage = 'solutions' GROUP BY item_key")).all()
    finally:
        engine.dispose()
    assert len(per_item) == 4
    assert all(total == len(tokenizer.encode(prompt, bos=True)) for prompt, total in per_item)
    assert report.triples == 0
    assert duplicate_rows(cfg.db) == dict.fromkeys(duplicate_rows(cfg.db), 0)
