"""Random-weight checkpoints with a freshly trained tokenizer: for tests, demos and the quickstart.

`init_checkpoint("tiny", dir)` takes well under a second; the result loads with `model.load` and with
`transformers.LlamaForCausalLM.from_pretrained`, and vLLM can serve it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.args import TINY_VOCAB, ModelArgs
from model.checkpoint import TOKENIZER_FILE, save_hf, save_meta
from model.tokenizer_train import train_tokenizer
from model.transformer import Transformer
from selfinstruct.errors import UserError


def init_checkpoint(preset: str | ModelArgs, out_dir: str | Path, seed: int = 0, fmt: str = "hf",
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write random weights (seeded) for `preset` plus a tiny trained tokenizer to `out_dir` (HF by default).

    The tokenizer has min(vocab_size, 512) pieces, so every id it produces is a valid embedding row; the
    tiny presets' vocabulary equals it exactly.
    """
    args = preset if isinstance(preset, ModelArgs) else ModelArgs.from_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(out / TOKENIZER_FILE, vocab_size=min(args.vocab_size, TINY_VOCAB))
    torch.manual_seed(seed)
    model = Transformer(args).init_weights(seed=seed).to(dtype)
    if fmt == "hf":
        return save_hf(model, out, tokenizer_path=tokenizer)
    if fmt == "meta":
        return save_meta(model, out, tokenizer_path=tokenizer)
    raise UserError(f"unknown checkpoint format {fmt!r}; use 'hf' or 'meta'")
