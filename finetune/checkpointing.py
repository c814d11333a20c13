"""Training checkpoints with exact resume, and the final model in Hugging Face (and Meta) format.

A training checkpoint is a directory `checkpoints/step_NNNNNNN/` holding
- `state/`: model and optimizer state through `torch.distributed.checkpoint` (each process writes its own
  shards under FSDP2; one process writes everything otherwise; it reloads at any world size),
- `trainer.json`: step, data position, tokens seen, the config fingerprint and model shapes,
- `rng/rank_R.pt`: each process's torch/CUDA/Python RNG states.
The learning-rate schedule is a function of the step, so the step is the scheduler's state. A directory
is written under a temporary name and renamed when complete: a crash mid-save never leaves a checkpoint
that looks whole.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from pydantic import BaseModel
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from finetune.distributed import DistInfo, barrier, broadcast_object
from finetune.loader import DataPosition
from selfinstruct.errors import UserError

CHECKPOINTS = "checkpoints"
_PREFIX = "step_"


class TrainerState(BaseModel):
    """What besides tensors a resumed run needs to continue exactly where it stopped."""

    step: int  # optimizer updates done
    data_position: dict[str, int]
    tokens_seen: int
    targets_seen: int
    fingerprint: str
    model_args: dict[str, Any]
    world_size: int

    @property
    def position(self) -> DataPosition:
        return DataPosition.from_dict(self.data_position)


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"{_PREFIX}{step:07d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "trainer.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix(_PREFIX)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def _single_process_quiet(info: DistInfo) -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group; here that is intended."""
    with warnings.catch_warnings():
        if not info.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(out_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState,
                    info: DistInfo, keep: int) -> Path:
    """Write a complete checkpoint for `state.step` (all processes call this) and prune old ones."""
    final = checkpoint_dir(out_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_quiet(info):
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "state"))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{info.rank}.pt")
    barrier(info)
    if info.is_main:
        (tmp / "trainer.json").write_text(state.model_dump_json(indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def read_trainer_state(path: Path) -> TrainerState:
    try:
        return TrainerState.model_validate_json((path / "trainer.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path / 'trainer.json'}: unreadable checkpoint ({exc.__class__.__name__})") from None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo,
                    fingerprint: str, model_args: dict[str, Any]) -> TrainerState:
    """Restore model, optimizer and RNG from `path` into an already built (and sharded) model/optimizer.

    A checkpoint made with a different config (other data, optimizer or shapes) is a `UserError`: resuming it
    would silently train something else.
    """
    state = read_trainer_state(path)
    if state.model_args != model_args:
        raise UserError(f"{path}: checkpoint model shapes {state.model_args} do not match the config's {model_args}")
    if state.fingerprint != fingerprint:
        raise UserError(f"{path}: checkpoint was made with a different config (fingerprint {state.fingerprint}, "
                        f"now {fingerprint}); use a new --out directory or the original config")
    model_state, optim_state = get_state_dict(model, optimizer)
    bundle = {"model": model_state, "optim": optim_state}
    try:
        with _single_process_quiet(info):
            dcp.load(bundle, checkpoint_id=str(path / "state"))
    except Exception as exc:  # noqa: BLE001 - DCP wraps shape and key errors in several exception types
        raise UserError(f"{path / 'state'}: cannot restore model/optimizer ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    set_state_dict(model, optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"])
    rng_file = path / "rng" / f"rank_{info.rank}.pt"
    if rng_file.is_file() and state.world_size == info.world_size:
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return state


def full_model_state(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The whole (unsharded) model state on CPU, on rank 0; None on other ranks."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return state if info.is_main else None


def save_final_model(model: nn.Module, args: Any, tokenizer_path: Path, out_dir: str | Path,
                     info: DistInfo, dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """The trained model as a Hugging Face directory (`hf/`, for transformers and vLLM) and a Meta directory
    (`meta/`, for this project's own loader), both with the tokenizer."""
    from model.checkpoint import save_hf, save_meta

    state = full_model_state(model, info)
    paths = {"hf": str(Path(out_dir) / "hf"), "meta": str(Path(out_dir) / "meta")}
    if info.is_main:
        assert state is not None
        state = {k: v.to(dtype) for k, v in state.items()}
        save_hf(state, paths["hf"], args, tokenizer_path)
        save_meta(state, paths["meta"], args, tokenizer_path)
    barrier(info)
    return broadcast_object(paths, info)  # type: ignore[return-value]
