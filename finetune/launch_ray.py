"""Ray Train launcher: `TorchTrainer` with N workers, each running the very same `train()` as torchrun.

Ray Train creates the process group (gloo on CPU, NCCL on GPU) before calling the worker function, and
`finetune.distributed.init_distributed` picks it up, so FSDP2 sharding, checkpoints and metrics behave
exactly as under torchrun. Rank 0 writes `summary.json` in the output directory; the driver returns it.
Paths in the config must be absolute (workers may run elsewhere, or in another directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig, config_from_dict
from finetune.data import read_exports
from finetune.train import TrainSummary, train
from selfinstruct.errors import UserError


def _worker(loop_config: dict[str, Any]) -> None:
    import ray.train

    summary = train(config_from_dict(loop_config["config"]), stop_after=loop_config.get("stop_after"))
    ray.train.report({"steps": summary.steps, "final_loss": summary.final_loss})


def launch_ray(config: FinetuneConfig, stop_after: int | None = None) -> TrainSummary:
    """Run `train(config)` on `launch.num_workers` Ray Train workers and return rank 0's summary."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from generator.ray_cluster import ensure_ray

    launch = config.launch
    out = Path(config.out_dir)
    if not out.is_absolute():
        raise UserError(f"out_dir must be an absolute path under the Ray launcher, got {config.out_dir!r}")
    # The data's own errors (missing, empty, malformed files) show here in one line, before any worker starts.
    read_exports(config.data.paths, config.data.format, config.data.answer_format, config.data.system)
    if config.data.val_paths:
        read_exports(config.data.val_paths, config.data.format, config.data.answer_format, config.data.system)
    ensure_ray(launch.ray_address, num_cpus=None if launch.ray_address else max(launch.num_workers, 1),
               docker_slots=0)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config.model_dump(mode="json"), "stop_after": stop_after},
        scaling_config=ScalingConfig(num_workers=launch.num_workers, use_gpu=launch.use_gpu),
        torch_config=TorchConfig(backend="nccl" if launch.use_gpu else "gloo"),
        run_config=RunConfig(name="finetune", storage_path=str(out / "ray")),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps worker errors: surface a worker's UserError as its one line
        message = str(exc)
        for line in reversed(message.splitlines()):
            if "UserError" in line:
                raise UserError(line.split("UserError:", 1)[-1].strip()) from None
        raise
    summary_file = out / "summary.json"
    if not summary_file.is_file():
        raise UserError(f"the Ray Train run ended without writing {summary_file}")
    return TrainSummary.model_validate_json(summary_file.read_text())
