"""The learning-rate schedule of Code Llama: linear warm-up to the peak, cosine decay to peak * final_ratio.

A plain function of the step (nanoGPT style), so the scheduler's whole state is the step counter that
the checkpoint already holds; `apply_lr` writes it into the optimizer before each update.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, peak: float, warmup_steps: int, max_steps: int, final_ratio: float = 1.0 / 30.0) -> float:
    """Learning rate of update `step` (0-based): warm-up over `warmup_steps` updates, then a cosine from
    `peak` down to `peak * final_ratio` reached at the last update (`max_steps - 1`)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    final = peak * final_ratio
    decay_steps = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
