"""The training loss: summed cross-entropy over trained (answer) tokens, with the output head computed only
where there is a target.

In instruct data about half the tokens are prompt, and packing leaves some padding; their logits would be
computed and thrown away. A forward pre-hook on the model's output head (`model.output`) keeps only the
hidden states of trained positions, so the vocabulary projection, the fp32 upcast and the softmax run on
those rows alone (with Code Llama's 32,016-token vocabulary the head is a large share of the FLOPs of a
small model, and of the activation memory of any model). Parameter names and sharding are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from finetune.packing import IGNORE_INDEX, Batch


@contextlib.contextmanager
def head_only_at(model: nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """While active, `model(...)` returns logits [n, vocab] for the n True entries of `positions` [b, s]."""
    handle = model.output.register_forward_pre_hook(lambda _module, args: (args[0][positions],))
    try:
        yield
    finally:
        handle.remove()


def sequence_loss_sum(model: nn.Module, batch: Batch, autocast: contextlib.AbstractContextManager) -> torch.Tensor:
    """Summed cross-entropy over the batch's trained targets (fp32 logits for a stable softmax)."""
    trained = batch.targets != IGNORE_INDEX
    with autocast, head_only_at(model, trained):
        logits = model(batch.tokens, positions=batch.positions, doc_ids=batch.doc_ids, shared=batch.shared)
    return F.cross_entropy(logits.float(), batch.targets[trained], reduction="sum")
