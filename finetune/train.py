"""The fine-tuning recipe: one training function for a single process, torchrun (FSDP2) and Ray Train.

nanoGPT-style: the loop is plain PyTorch and reads top to bottom. Each optimizer step takes
`grad_accum` micro-batches; every micro-batch's summed cross-entropy is divided by the number of trained
(answer) tokens in the WHOLE step, over all processes, so the gradient is exactly that of the mean loss
over the step's answer tokens however the step is split (micro-batches, processes, packing). FSDP2
averages gradients over processes, so the loss is multiplied by the world size to turn that average
back into the sum.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel
from torch import nn

from finetune.checkpointing import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint, save_final_model
from finetune.config import FinetuneConfig
from finetune.data import check_unique_ids, read_exports, split_validation, tokenize_examples
from finetune.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown
from finetune.loader import DataPosition, StepData, TrainingStream, eval_batches
from finetune.loss import sequence_loss_sum
from finetune.metrics import MetricsLog, plot_loss_curve
from finetune.model_setup import build_model, check_tokenizer, load_starting_point
from finetune.optim import build_optimizer
from finetune.packing import Batch
from finetune.recipe_warmup import recipe_documents
from finetune.rehearsal import RehearsalMixer
from finetune.schedule import apply_lr, lr_at
from model.tokenizer import Tokenizer
from selfinstruct.errors import UserError


class TrainSummary(BaseModel):
    """What a run did, returned by `train` and written to `summary.json`."""

    steps: int
    start_step: int
    first_loss: float | None
    final_loss: float | None
    eval_loss: float | None
    train_examples: int
    val_examples: int
    tokens: int  # non-padding tokens processed (prompt and answer)
    trained_tokens: int  # answer (target) tokens
    seconds: float
    tokens_per_s: float
    world_size: int
    device: str
    out_dir: str
    metrics: str
    loss_plot: str | None = None
    hf_dir: str | None = None
    meta_dir: str | None = None
    checkpoint: str | None = None
    stopped_early: bool = False


def _autocast(config: FinetuneConfig, device: torch.device) -> contextlib.AbstractContextManager:
    enabled = config.train.bf16 == "on" or (config.train.bf16 == "auto" and device.type == "cuda")
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], counted: int, info: DistInfo,
             autocast: contextlib.AbstractContextManager) -> float | None:
    """Mean loss per trained token of the validation set (all processes together)."""
    if not batches:
        return None
    model.eval()
    loss, count = 0.0, 0
    for i, batch in enumerate(batches):
        batch_loss = sequence_loss_sum(model, batch.to(info.device), autocast)
        if i < counted:  # surplus batches only keep the processes in step
            loss += float(batch_loss)
            count += batch.n_targets
    model.train()
    loss, count = all_reduce_sum([loss, count], info)
    return loss / count if count else None


def _grad_norm(model: nn.Module, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, data: StepData, info: DistInfo,
                   autocast: contextlib.AbstractContextManager, grad_clip: float) -> tuple[float, float]:
    """One update over the step's micro-batches: (summed loss of the whole step over all processes, grad norm).

    Each micro-batch's loss is divided by the trained tokens of the whole step (known from the data plan),
    so accumulation gives the gradient of the step's mean loss per answer token.
    """
    loss_sum = torch.zeros((), device=info.device)
    for batch in data.micro_batches:
        batch_loss = sequence_loss_sum(model, batch.to(info.device), autocast)
        (batch_loss * (info.world_size / data.n_targets)).backward()
        loss_sum += batch_loss.detach()
    grad_norm = _grad_norm(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    (loss_total,) = all_reduce_sum([float(loss_sum)], info)
    return loss_total, grad_norm


class _LineProgress:
    """Progress for logs (stderr not a terminal): one plain line every tenth of the run, no carriage returns.

    A step's line is written when the next step starts (or at the end), so it carries everything
    reported for that step: its loss and, on evaluation steps, the fresh validation loss.
    """

    def __init__(self, total: int, initial: int) -> None:
        self.total, self.n, self.every = total, initial, max(1, total // 10)
        self.postfix: dict[str, str] = {}
        self.pending = False
        self.started = time.perf_counter()

    def update(self, steps: int) -> None:
        self._flush()
        self.n += steps
        self.pending = self.n % self.every == 0 or self.n == self.total

    def set_postfix(self, **values: str) -> None:
        self.postfix.update(values)

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.pending:
            fields = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            print(f"finetune: step {self.n}/{self.total} {fields} ({time.perf_counter() - self.started:.0f} s)",
                  file=sys.stderr, flush=True)
            self.pending = False


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return _LineProgress(total, initial)
    return tqdm(total=total, initial=initial, disable=not enabled, desc="finetune", unit="step", dynamic_ncols=True)


def train(config: FinetuneConfig, stop_after: int | None = None) -> TrainSummary:
    """Run (or resume) a fine-tuning run; every process of a distributed run calls this.

    `stop_after` ends the run after that many optimizer steps with a checkpoint (as if interrupted), so a
    later `resume=True` run continues it; the learning-rate schedule still spans `train.max_steps`.
    """
    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = init_distributed(config.train.device)
    try:
        return _train(config, info, stop_after)
    finally:
        shutdown(info, created_group)


def _train(config: FinetuneConfig, info: DistInfo, stop_after: int | None) -> TrainSummary:
    tc, dc = config.train, config.data
    out = Path(config.out_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    torch.manual_seed(tc.seed)
    resumed_from = latest_checkpoint(out) if tc.resume else None
    if tc.resume and resumed_from is None:
        raise UserError(f"nothing to resume: no checkpoint in {out / 'checkpoints'} (drop --resume to start afresh)")

    # -- model and data ---------------------------------------------------------------------------
    use_recipe = dc.recipe.warmup or dc.recipe.instruct
    if not dc.paths and not use_recipe:
        raise UserError("no training data: pass --data EXPORT.jsonl (or set data.paths in the config), "
                        "or --recipe warmup|instruct for the bundled recipe corpus")
    examples = read_exports(dc.paths, dc.format, dc.answer_format, dc.system) if dc.paths else []
    start = load_starting_point(config.model, dc.seq_len, out, tc.seed, info)
    seq_len = dc.seq_len or start.args.max_seq_len  # unset: the model's own context
    tokenizer = Tokenizer(start.tokenizer_path)
    check_tokenizer(tokenizer, start.args)
    if dc.val_paths:
        train_examples = examples
        val_examples = read_exports(dc.val_paths, dc.format, dc.answer_format, dc.system)
        check_unique_ids(train_examples + val_examples)
    else:
        train_examples, val_examples = split_validation(examples, dc.val_fraction)
    train_docs = tokenize_examples(tokenizer, train_examples, seq_len)
    val_docs = tokenize_examples(tokenizer, val_examples, seq_len)
    if use_recipe:
        recipe = recipe_documents(dc.recipe, tokenizer, seq_len, dc.answer_format, dc.system, tc.seed)
        train_docs += recipe.train
        val_docs += recipe.val if not dc.val_paths else []
    mixer = RehearsalMixer(tokenizer, list(dc.rehearsal), seq_len, dc.infilling) if dc.rehearsal else None
    stream = TrainingStream(train_docs, seq_len, dc.packing, tc.batch_size, tc.grad_accum, tc.seed,
                            info.world_size, info.rank, mixer, dc.share_prefixes)
    stream.epoch(0)  # fail now, not mid-run, if one step does not fit the data
    val_batches, val_counted = eval_batches(val_docs, seq_len, dc.packing, tc.batch_size, tc.eval_batches,
                                            info.world_size, info.rank)

    model = build_model(start, config.model.activation_checkpointing, info)
    start.state = None  # the model holds the weights now
    optimizer = build_optimizer(model, config.optim)
    autocast = _autocast(config, info.device)
    fingerprint = config.fingerprint()
    model_args = json.loads(json.dumps(start.args.to_dict()))

    # -- resume -----------------------------------------------------------------------------------
    step, position, tokens_seen, targets_seen = 0, DataPosition(), 0, 0
    if resumed_from is not None:
        state = load_checkpoint(resumed_from, model, optimizer, info, fingerprint, model_args)
        step, position = state.step, state.position
        tokens_seen, targets_seen = state.tokens_seen, state.targets_seen
    start_step = step
    metrics = MetricsLog(out / "metrics.jsonl", enabled=info.is_main,
                         resume_step=step if resumed_from is not None else None)

    if resumed_from is None:
        first_epoch = stream.epoch(0)
        fill = stream.fill()
        metrics.write("data", train_examples=len(train_docs), val_examples=len(val_docs),
                      rehearsal_docs=first_epoch.n_rehearsal, rows_per_epoch=len(first_epoch.rows),
                      steps_per_epoch=stream.steps_per_epoch(),
                      instruct_trained_tokens=sum(d.n_trained for d in train_docs),
                      packed_fill=fill)

    def trainer_state() -> TrainerState:
        return TrainerState(step=step, data_position=position.to_dict(), tokens_seen=tokens_seen,
                            targets_seen=targets_seen, fingerprint=fingerprint, model_args=model_args,
                            world_size=info.world_size)

    # -- loop -------------------------------------------------------------------------------------
    first_loss: float | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    window = {"loss": 0.0, "targets": 0, "tokens": 0, "seconds": 0.0}
    last_checkpoint: Path | None = resumed_from
    stopped_early = False
    run_start = time.perf_counter()
    run_tokens = 0
    bar = _progress(tc.max_steps, step, tc.progress and info.is_main)
    model.train()
    while step < tc.max_steps:
        t0 = time.perf_counter()
        data, next_position = stream.next_step(position)
        lr = lr_at(step, config.optim.lr, config.warmup_steps, tc.max_steps, config.optim.final_lr_ratio)
        apply_lr(optimizer, lr)
        loss_total, grad_norm = optimizer_step(model, optimizer, data, info, autocast, config.optim.grad_clip)
        loss = loss_total / data.n_targets
        if not math.isfinite(loss):
            raise UserError(f"training diverged at step {step + 1} (loss {loss}); lower optim.lr")
        step += 1
        position = next_position
        tokens_seen += data.n_tokens
        targets_seen += data.n_targets
        run_tokens += data.n_tokens
        first_loss = loss if first_loss is None else first_loss
        final_loss = loss
        elapsed = time.perf_counter() - t0
        window["loss"] += loss_total
        window["targets"] += data.n_targets
        window["tokens"] += data.n_tokens
        window["seconds"] += elapsed
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

        if step % tc.log_every == 0 or step == tc.max_steps:
            metrics.write("train", step=step, epoch=data.epoch, loss=window["loss"] / window["targets"], lr=lr,
                          grad_norm=grad_norm, tokens=tokens_seen, trained_tokens=targets_seen,
                          tokens_per_s=window["tokens"] / window["seconds"],
                          trained_tokens_per_s=window["targets"] / window["seconds"])
            window = {"loss": 0.0, "targets": 0, "tokens": 0, "seconds": 0.0}
        if val_batches and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps):
            eval_loss = evaluate(model, val_batches, val_counted, info, autocast)
            metrics.write("eval", step=step, eval_loss=eval_loss)
            bar.set_postfix(loss=f"{loss:.4f}", eval=f"{eval_loss:.4f}")
        stopping = stop_after is not None and step - start_step >= stop_after and step < tc.max_steps
        if (tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.max_steps) or stopping:
            last_checkpoint = save_checkpoint(out, model, optimizer, trainer_state(), info, tc.keep_checkpoints)
        if stopping:
            stopped_early = True
            break
    bar.close()
    seconds = time.perf_counter() - run_start

    # -- results ----------------------------------------------------------------------------------
    summary = TrainSummary(
        steps=step, start_step=start_step, first_loss=first_loss, final_loss=final_loss, eval_loss=eval_loss,
        train_examples=len(train_docs), val_examples=len(val_docs), tokens=tokens_seen,
        trained_tokens=targets_seen, seconds=seconds, tokens_per_s=run_tokens / seconds if seconds else 0.0,
        world_size=info.world_size, device=str(info.device), out_dir=str(out), metrics=str(out / "metrics.jsonl"),
        checkpoint=str(last_checkpoint) if last_checkpoint else None, stopped_early=stopped_early,
    )
    if not stopped_early:
        paths = save_final_model(model, start.args, start.tokenizer_path, out, info)
        summary.hf_dir, summary.meta_dir = paths["hf"], paths["meta"]
    if info.is_main:
        if (out / "metrics.jsonl").stat().st_size:
            summary.loss_plot = str(plot_loss_curve(out / "metrics.jsonl", out / "loss.png"))
        metrics.write("summary", **summary.model_dump(mode="json"))
        (out / "summary.json").write_text(summary.model_dump_json(indent=2))
    return summary


def summary_table(summary: TrainSummary) -> Any:
    """A rich table of the run, printed by the CLI."""
    from rich.table import Table

    table = Table(title="fine-tuning run", show_header=False)
    rows = [
        ("steps", f"{summary.start_step} -> {summary.steps}" + (" (stopped early)" if summary.stopped_early else "")),
        ("examples", f"{summary.train_examples} train, {summary.val_examples} validation"),
        ("loss", f"{summary.first_loss:.4f} -> {summary.final_loss:.4f}" if summary.final_loss is not None else "-"),
        ("validation loss", f"{summary.eval_loss:.4f}" if summary.eval_loss is not None else "-"),
        ("tokens", f"{summary.tokens:,} ({summary.trained_tokens:,} trained)"),
        ("time", f"{summary.seconds:.1f} s, {summary.tokens_per_s:,.0f} tokens/s on {summary.world_size} x {summary.device}"),
        ("metrics", summary.metrics),
        ("loss curve", summary.loss_plot or "-"),
        ("model (HF)", summary.hf_dir or "-"),
        ("checkpoint", summary.checkpoint or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
