"""Model shapes: one frozen `ModelArgs` dataclass and named presets (Llama 2, Code Llama, tiny test configs).

Shapes follow Meta's `params.json` fields; the FFN width follows Meta's rule (2/3 of 4*dim, optionally
scaled by `ffn_dim_multiplier`, rounded up to `multiple_of`). `num_params()` counts weights from the shapes
alone, so a 70B preset can be inspected on a laptop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from selfinstruct.errors import UserError


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: multi-head attention (n_kv_heads == n_heads)
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise UserError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise UserError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width, Meta's rule (llama/model.py FeedForward)."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of weights, from the shapes alone (untied embeddings, no biases)."""
        kv_dim = self.kv_heads * self.head_dim
        attention = 2 * self.dim * self.dim + 2 * self.dim * kv_dim
        feed_forward = 3 * self.dim * self.hidden_dim
        norms = 2 * self.dim
        total = self.n_layers * (attention + feed_forward + norms) + self.dim
        if include_embeddings:
            total += 2 * self.vocab_size * self.dim
        return total

    def replace(self, **overrides: Any) -> ModelArgs:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown ModelArgs field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelArgs:
        """From a Meta `params.json`-style dict; unknown keys are ignored (Meta files carry a few)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelArgs:
        key = name.lower()
        if key not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


_LLAMA2_7B = ModelArgs(dim=4096, n_layers=32, n_heads=32)
_LLAMA2_13B = ModelArgs(dim=5120, n_layers=40, n_heads=40)
_LLAMA2_70B = ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3)
_CODE = dict(vocab_size=32016, rope_theta=1e6, max_seq_len=16384)

# Tiny presets for tests and demos: the vocabulary equals the in-process tokenizer's (model/tokenizer_train.py).
TINY_VOCAB = 512
DEMO_VOCAB = 2048
# The largest vocabulary an in-process tokenizer is trained to (model/tokenizer_train.py): a bigger preset
# vocabulary (Llama's 32000) gets a TINY_VOCAB tokenizer, whose ids are all valid rows of its embedding.
MAX_TRAINED_VOCAB = 4096

PRESETS: dict[str, ModelArgs] = {
    "llama2-7b": _LLAMA2_7B,
    "llama2-13b": _LLAMA2_13B,
    "llama2-70b": _LLAMA2_70B,
    "codellama-7b": _LLAMA2_7B.replace(**_CODE),
    "codellama-13b": _LLAMA2_13B.replace(**_CODE),
    # 34B has no infilling tokens: vocabulary 32000.
    "codellama-34b": ModelArgs(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.0,
                               vocab_size=32000, rope_theta=1e6, max_seq_len=16384),
    "codellama-70b": _LLAMA2_70B.replace(**_CODE),
    # Test configs: GQA (tiny) and multi-head (tiny-mha), Code Llama's rope_theta (tiny-code).
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TINY_VOCAB, multiple_of=32,
                      max_seq_len=512),
    "tiny-mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=TINY_VOCAB, multiple_of=32, max_seq_len=512),
    "tiny-code": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TINY_VOCAB, multiple_of=32,
                           rope_theta=1e6, max_seq_len=1024),
    # ~1.3M parameters, a 2048-piece tokenizer trained in-process: the quickstart's demo model. Small enough
    # that the recipe warm-up (finetune/configs/recipe-warmup-demo.yaml) teaches it the recipe's three formats
    # and most of 40 corpus problems in about 5 minutes on 2 CPU cores (measured: 6k tokens/s for training).
    "demo": ModelArgs(dim=128, n_layers=4, n_heads=4, vocab_size=DEMO_VOCAB, multiple_of=32, max_seq_len=1024),
    # ~58M parameters with the full 32000 vocabulary: benchmarks on CPU.
    "small": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, multiple_of=32, max_seq_len=2048),
}
for _base in ("codellama-7b", "codellama-13b", "codellama-34b", "codellama-70b"):
    # The -python and -instruct variants share their base model's shapes.
    PRESETS[_base + "-python"] = PRESETS[_base]
    PRESETS[_base + "-instruct"] = PRESETS[_base]
