"""Fixtures for the backend tests: a tiny random checkpoint of the project's own model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (HF layout) with a freshly trained SentencePiece tokenizer."""
    from model.init import init_checkpoint

    return Path(init_checkpoint("tiny", tmp_path_factory.mktemp("tiny-llama"), seed=0))
