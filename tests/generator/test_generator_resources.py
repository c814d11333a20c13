"""The run's backends: one per model, whatever batching each stage asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.config import validate_config
from generator.pipeline import Resources
from tests.generator.pipeline_helpers import config_dict


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.args import ModelArgs
    from model.init import init_checkpoint

    return Path(init_checkpoint(ModelArgs.from_preset("tiny"), tmp_path_factory.mktemp("tiny"), seed=0))


@pytest.mark.timeout(120)
def test_stages_naming_one_model_with_different_batching_share_one_backend(tmp_path, tiny_checkpoint):
    """Three stages, one checkpoint, batch sizes 8/16/40: one backend (on Ray: one actor, not three, which a
    2-CPU cluster could not place), built with the largest batch; another checkpoint gets its own."""
    data = config_dict(tmp_path / "r.db")
    for stage, batch in (("problems", 8), ("tests", 16), ("solutions", 40)):
        data[stage]["backend"] = {"kind": "torch", "checkpoint": str(tiny_checkpoint), "batch_size": batch}
    resources = Resources(validate_config(data))
    try:
        shared = {id(resources.backend(stage)) for stage in ("problems", "tests", "solutions")}
        assert len(shared) == 1
        assert resources.backend("solutions").backend.cfg.batch_size == 40
    finally:
        resources.close()

    data["tests"]["backend"] = {"kind": "torch", "checkpoint": str(tiny_checkpoint), "dtype": "bfloat16"}
    resources = Resources(validate_config(data))
    try:
        assert resources.backend("problems") is resources.backend("solutions")
        assert resources.backend("tests") is not resources.backend("problems")  # another dtype: another model
        assert resources.backend("tests").backend.cfg.batch_size == 8  # the default, alone in its pool
    finally:
        resources.close()
