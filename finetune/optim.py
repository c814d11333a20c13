"""AdamW as the Llama recipes use it: betas (0.9, 0.95), weight decay on matrices only.

Norm weights (and any bias) are not decayed: decay pulls RMSNorm gains towards zero, which only hurts.
Embeddings and the output head are matrices and are decayed, as in Llama and nanoGPT.
"""

from __future__ import annotations

import torch
from torch import nn

from finetune.config import OptimConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameters (works on FSDP2's sharded DTensor parameters as well)."""
    fused = all(p.is_cuda for p in model.parameters()) or None
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
                             eps=config.eps, fused=fused)
