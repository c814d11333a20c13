"""Llama 2 / Code Llama in plain PyTorch: shapes, transformer, tokenizer, generation, checkpoint I/O.

`import model` stays light (no torch import) so that `model.chat` can be used by packages that only
format text; the heavy names below are imported on first use:

    model.ModelArgs, model.Transformer, model.Tokenizer,
    model.load(path, device="cpu", dtype=torch.float32) -> Transformer   (Meta or HF directory)
    model.load_tokenizer(path) -> Tokenizer
    model.init_checkpoint(preset, out_dir, seed=0) -> Path               (random weights + tiny tokenizer)
    model.generate(model, tokenizer, prompts, ...) / model.infill(...)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ModelArgs": "model.args",
    "PRESETS": "model.args",
    "Transformer": "model.transformer",
    "Tokenizer": "model.tokenizer",
    "load": "model.checkpoint",
    "load_tokenizer": "model.checkpoint",
    "save_hf": "model.checkpoint",
    "save_meta": "model.checkpoint",
    "init_checkpoint": "model.init",
    "generate": "model.generate",
    "infill": "model.generate",
    "GenerationOutput": "model.generate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
