"""The model a run starts from: a checkpoint directory or a preset, with the Code Llama options applied.

`--model DIR` reads a Meta or Hugging Face checkpoint (model/ loads either) and its tokenizer.model;
`--model PRESET` starts from random weights and model/'s tiny in-process tokenizer (tests, smoke runs).
Long-context fine-tuning changes `rope_theta` and `max_seq_len` (Code Llama: 1e4 -> 1e6, 16,384 tokens);
both are plain fields because rotary angles are computed from positions on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from finetune.config import ModelConfig
from finetune.distributed import DistInfo, barrier, broadcast_object, shard_model
from model.args import PRESETS, ModelArgs
from model.checkpoint import TOKENIZER_FILE, load_state_dict
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from selfinstruct.errors import UserError


@dataclass
class StartingPoint:
    args: ModelArgs
    state: dict[str, torch.Tensor] | None  # the full weights, on rank 0 only in a distributed run
    tokenizer_path: Path


def resolve_checkpoint(source: str, out_dir: Path, seed: int, info: DistInfo) -> Path:
    """A checkpoint directory for `source`: itself if it is one, else a fresh random one of that preset."""
    path = Path(source)
    if path.exists():
        return path
    if source.lower() not in PRESETS:
        raise UserError(f"--model {source!r} is neither a checkpoint directory nor a preset "
                        f"({', '.join(sorted(PRESETS))})")
    from model.init import init_checkpoint

    target = out_dir / "init" / source.lower()
    if info.is_main and not (target / "config.json").is_file():
        init_checkpoint(source.lower(), target, seed=seed)
    barrier(info)
    return target


def load_starting_point(config: ModelConfig, seq_len: int | None, out_dir: Path, seed: int, info: DistInfo) -> StartingPoint:
    if not config.source:
        raise UserError("no model: pass --model CHECKPOINT_DIR (or a preset such as tiny) or set model.source")
    path = resolve_checkpoint(config.source, out_dir, seed, info)
    state = None
    if info.is_main:  # only rank 0 reads the weights; the other processes get the shapes
        try:
            args, state = load_state_dict(path)
            shapes: ModelArgs | UserError = args
        except UserError as exc:
            shapes = exc
    else:
        shapes = None  # type: ignore[assignment]
    shapes = broadcast_object(shapes, info)  # type: ignore[assignment]
    if isinstance(shapes, UserError):
        raise shapes
    args = shapes
    tokenizer_path = path / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise UserError(f"{path}: no {TOKENIZER_FILE} next to the weights; copy the model's tokenizer there")
    overrides: dict[str, float | int] = {}
    if config.rope_theta is not None:
        overrides["rope_theta"] = config.rope_theta
    if config.max_seq_len is not None:
        overrides["max_seq_len"] = config.max_seq_len
    args = args.replace(**overrides) if overrides else args
    if seq_len is not None and seq_len > args.max_seq_len:
        raise UserError(f"data.seq_len={seq_len} is longer than the model's max_seq_len={args.max_seq_len}; "
                        f"for long-context fine-tuning set model.max_seq_len (and model.rope_theta, e.g. 1e6)")
    return StartingPoint(args, state, tokenizer_path)


def build_model(start: StartingPoint, activation_checkpointing: bool, info: DistInfo) -> Transformer:
    """The starting model in float32 on this process's device, sharded with FSDP2 in a distributed run.

    One process: load the weights into a meta-initialised model and move it. Several: every process
    builds the model on the meta device and shards it, then rank 0's full weights are broadcast into the
    shards, so no process other than rank 0 ever holds the whole model.
    """
    with torch.device("meta"):
        model = Transformer(start.args, activation_checkpointing=activation_checkpointing)
    if not info.distributed:
        assert start.state is not None
        model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in start.state.items()}, assign=True)
        return model.to(info.device).train()
    shard_model(model)
    model.to_empty(device=info.device)
    full = {k: v.to(torch.float32) for k, v in start.state.items()} if start.state is not None else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model.train()


def check_tokenizer(tokenizer: Tokenizer, args: ModelArgs) -> None:
    if tokenizer.vocab_size > args.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} pieces but the model only {args.vocab_size} "
                        f"embeddings: the checkpoint does not match its tokenizer")
