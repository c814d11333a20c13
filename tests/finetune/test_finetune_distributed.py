"""FSDP2 across 2 processes (torchrun, gloo on CPU) and the Ray Train launcher (2 CPU workers) train like one
process: the same rows per step, the same loss curve, the same final weights within float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from finetune.metrics import read_metrics
from finetune.train import train

STEPS = 5


def _losses(metrics_path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(metrics_path) if r["kind"] == "train"]


def _single_process_reference(make_config):
    """One process with batch 4 sees exactly the rows that 2 processes with batch 2 see together."""
    return train(make_config(f"train.max_steps={STEPS}", "train.batch_size=4", "train.grad_accum=2", out="single"))


def _assert_same_run(reference, other_metrics, other_meta_dir):
    from model.checkpoint import load_state_dict

    ours, theirs = _losses(reference.metrics), _losses(other_metrics)
    assert [s for s, _ in ours] == [s for s, _ in theirs] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(ours, theirs):
        assert a == pytest.approx(b, rel=1e-4)
    _, single = load_state_dict(reference.meta_dir)
    _, sharded = load_state_dict(other_meta_dir)
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp2_two_processes_match_one_across_an_interruption(make_config, tmp_path):
    """Two gloo processes under torchrun, stopped after 3 steps (sharded checkpoint) and resumed, end where
    one uninterrupted process ends."""
    import yaml

    config = make_config(f"train.max_steps={STEPS}", "train.batch_size=2", "train.grad_accum=2", out="fsdp")
    config_file = tmp_path / "fsdp.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "finetune", "--config", str(config_file)]
    first = subprocess.run(torchrun + ["--stop-after", "3"], capture_output=True, text=True, check=False, timeout=150, env=env,
                           cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "fsdp"
    # the FSDP2 checkpoint holds each process's shards and the trainer state
    assert len(list((out / "checkpoints" / "step_0000003" / "state").glob("*.distcp"))) == 2
    assert not (out / "hf").exists()
    second = subprocess.run(torchrun + ["--resume"], capture_output=True, text=True, check=False, timeout=150, env=env,
                            cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = read_metrics(out / "metrics.jsonl")[-1]
    assert summary["kind"] == "summary" and summary["world_size"] == 2 and summary["start_step"] == 3
    _assert_same_run(_single_process_reference(make_config), out / "metrics.jsonl", out / "meta")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_train_launcher_two_cpu_workers(make_config, tmp_path):
    import ray

    from finetune.launch_ray import launch_ray

    config = make_config(f"train.max_steps={STEPS}", "train.batch_size=2", "train.grad_accum=2",
                         "launch.launcher=ray", "launch.num_workers=2", "launch.ray_address=local", out="ray")
    try:
        summary = launch_ray(config)
    finally:
        ray.shutdown()
    assert summary.world_size == 2 and summary.steps == STEPS and summary.hf_dir is not None
    _assert_same_run(_single_process_reference(make_config), summary.metrics, summary.meta_dir)


def test_ray_launcher_reports_bad_data_before_starting_workers(make_config, tmp_path):
    from finetune.launch_ray import launch_ray
    from selfinstruct.errors import UserError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.jsonl is empty"):
        launch_ray(make_config(f"data.paths=[{empty}]", "launch.launcher=ray", "launch.ray_address=local"))
