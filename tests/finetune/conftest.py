"""Fixtures for the fine-tuning tests: a tiny random checkpoint with its in-process tokenizer, small
exports in both formats, and a config for runs of a few seconds on CPU."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from finetune.config import FinetuneConfig, load_config

NAMES = ("scale", "grow", "boost", "stretch", "amplify", "enlarge", "expand", "magnify", "raise", "lift",
         "pump", "swell")


def instruct_rows(n: int, seed: int = 0) -> list[dict]:
    """`jsonl` export rows: small problems, distinct from their first words on, with one-line solutions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(2, 97)
        name = NAMES[i % len(NAMES)] + (f"_{i // len(NAMES)}" if i >= len(NAMES) else "")
        rows.append({
            "id": f"t{i}",
            "problem": f"Write a function {name}(x) that returns x times {k}.",
            "tests": [f"assert {name}(1) == {k}"],
            "solution": f"def {name}(x):\n    return x * {k}",
            "provenance": {"run": "test", "sample": 0},
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from model.init import init_checkpoint

    return init_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint):
    from model.checkpoint import load_tokenizer

    return load_tokenizer(tiny_checkpoint)


@pytest.fixture
def export_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "export.jsonl", instruct_rows(24))


@pytest.fixture
def make_config(tmp_path, tiny_checkpoint, export_file):
    """A config factory: tiny model, short sequences, no rehearsal, no progress bar; `--set`-style overrides."""

    def make(*overrides: str, out: str = "run") -> FinetuneConfig:
        base = [
            f"out_dir={tmp_path / out}", f"model.source={tiny_checkpoint}", f"data.paths=[{export_file}]",
            "data.seq_len=256", "data.rehearsal=[]", "data.val_fraction=0.1", "optim.lr=3e-3",
            "optim.warmup_steps=2", "train.max_steps=6", "train.batch_size=2", "train.log_every=1",
            "train.eval_every=0", "train.checkpoint_every=0", "train.progress=false", "train.device=cpu",
        ]
        return load_config(None, base + list(overrides))

    return make
