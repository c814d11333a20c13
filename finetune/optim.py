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
    """AdamW over the model's parameters (works on FSDP2's sharded DTensor parameters as well).

    The fused kernel (one pass over parameters, gradients and both moments) on CUDA and on CPU, where it is
    6x the default multi-tensor one (58M fp32 parameters, 2 threads: 30 vs 186 ms per step); it is also
    transformers' Trainer default (`adamw_torch_fused`).
    """
    devices = {p.device.type for p in model.parameters()}
    fused = (len(devices) == 1 and devices <= {"cuda", "cpu"}) or None
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
                             eps=config.eps, fused=fused)
