"""Process-group setup and FSDP2 sharding, the same for torchrun, Ray Train and a single process.

- torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and the rendezvous; we create the process group (NCCL on CUDA,
  gloo on CPU).
- Ray Train (`TorchTrainer`) creates the process group itself before calling the training function; we
  find it initialized and use it.
- A plain `python -m finetune` is one process: no process group, no sharding.

Sharding is FSDP2: `fully_shard` on every TransformerBlock, then on the root (embeddings, final norm and
output head), so parameters are gathered one block at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from selfinstruct.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device={preference} but no CUDA GPU is visible; use train.device=cpu")
        device = torch.device(preference if ":" in preference else f"cuda:{local_rank % torch.cuda.device_count()}")
        torch.cuda.set_device(device)
        return device
    return torch.device(preference)


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join (or create) the process group if this process is one of several; pick this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():  # Ray Train, or a caller that set it up
        device = _pick_device(device_preference, local_rank)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = _pick_device(device_preference, local_rank)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        return DistInfo(dist.get_rank(), world_size, local_rank, device)
    return DistInfo(0, 1, 0, device)


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2: shard every transformer block, then the root."""
    from torch.distributed.fsdp import fully_shard

    for block in model.layers:  # type: ignore[attr-defined]
        fully_shard(block)
    fully_shard(model)
    return model


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over all processes (identity in one process)."""
    if not info.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(value: object, info: DistInfo) -> object:
    """Rank 0's value on every process."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo, created_here: bool) -> None:
    if created_here and info.distributed and dist.is_initialized():
        dist.destroy_process_group()
