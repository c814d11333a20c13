"""Random-weight checkpoints with a freshly trained tokenizer: for tests, demos and the quickstart.

`init_checkpoint("tiny", dir)` takes well under a second; the result loads with `model.load` and with
`transformers.LlamaForCausalLM.from_pretrained`, and vLLM can serve it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.args import MAX_TRAINED_VOCAB, TINY_VOCAB, ModelArgs
from model.checkpoint import TOKENIZER_FILE, save_hf, save_meta
from model.tokenizer_train import train_tokenizer
from model.transformer import Transformer
from selfinstruct.errors import UserError


def init_checkpoint(preset: str | ModelArgs, out_dir: str | Path, seed: int = 0, fmt: str = "hf",
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write random weights (seeded) for `preset` plus a tiny trained tokenizer to `out_dir` (HF by default).

    The tokenizer has the preset's vocabulary size when that is small enough to train from the offline text
    (the tiny and demo presets), else 512 pieces; either way every id it produces is a valid embedding row.
    """
    args = preset if isinstance(preset, ModelArgs) else ModelArgs.from_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = args.vocab_size if args.vocab_size <= MAX_TRAINED_VOCAB else TINY_VOCAB
    tokenizer = train_tokenizer(out / TOKENIZER_FILE, vocab_size=vocab)
    torch.manual_seed(seed)
    model = Transformer(args).init_weights(seed=seed).to(dtype)
    if fmt == "hf":
        return save_hf(model, out, tokenizer_path=tokenizer)
    if fmt == "meta":
        return save_meta(model, out, tokenizer_path=tokenizer)
    raise UserError(f"unknown checkpoint format {fmt!r}; use 'hf' or 'meta'")
