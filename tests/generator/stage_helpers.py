"""Stage-test plumbing: a seeded problems/tests backend, a fresh run on SQLite, draining a stage."""

from __future__ import annotations

import random

from db import queries
from db.engine import init_db, make_engine
from generator.backends.base import Completion, GenerationRequest
from generator.config import validate_config
from generator.stages import StageContext

SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "de"]


def words(rng: random.Random, count: int) -> list[str]:
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
                    "Write a function {} that returns the {} {} {} of {} {} {} values.".format(*words(rng, 7))
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


def stage_context(tmp_path, name: str, **problems) -> StageContext:
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


def drain(stage) -> int:
    """Step `stage` until it has nothing pending; returns the number of productive steps."""
    steps = 0
    while stage.step():
        steps += 1
    return steps
