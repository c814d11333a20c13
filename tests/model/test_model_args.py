from __future__ import annotations

import pytest

from model.args import PRESETS, TINY_VOCAB, ModelArgs
from selfinstruct.errors import UserError


@pytest.mark.parametrize(
    ("preset", "billions", "hidden"),
    [("llama2-7b", 6.738, 11008), ("llama2-13b", 13.016, 13824), ("codellama-34b", 33.744, 22016),
     ("llama2-70b", 68.977, 28672)],
)
def test_published_parameter_counts_and_ffn_widths(preset: str, billions: float, hidden: int) -> None:
    args = ModelArgs.from_preset(preset)
    assert round(args.num_params() / 1e9, 3) == billions
    assert args.hidden_dim == hidden


def test_code_llama_presets_have_long_rope_and_infilling_vocab() -> None:
    for name in ("codellama-7b", "codellama-13b", "codellama-70b"):
        args = ModelArgs.from_preset(name)
        assert (args.vocab_size, args.rope_theta, args.max_seq_len) == (32016, 1e6, 16384)
    assert ModelArgs.from_preset("codellama-34b").vocab_size == 32000
    assert ModelArgs.from_preset("llama2-7b").rope_theta == 1e4


def test_variants_share_base_shapes() -> None:
    assert ModelArgs.from_preset("codellama-7b-instruct") == ModelArgs.from_preset("codellama-7b")
    assert ModelArgs.from_preset("CodeLlama-13B-Python") == ModelArgs.from_preset("codellama-13b")


def test_tiny_and_small_presets() -> None:
    tiny = ModelArgs.from_preset("tiny")
    assert (tiny.dim, tiny.n_layers, tiny.n_heads, tiny.kv_heads, tiny.vocab_size) == (64, 2, 4, 2, TINY_VOCAB)
    assert 55e6 < ModelArgs.from_preset("small").num_params() < 60e6


def test_overrides_and_frozen() -> None:
    args = ModelArgs.from_preset("tiny", n_layers=3, rope_theta=1e6)
    assert (args.n_layers, args.rope_theta) == (3, 1e6)
    with pytest.raises(AttributeError):
        args.dim = 1  # type: ignore[misc]


def test_bad_presets_and_shapes_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown model preset 'llama9'.*codellama-7b.*tiny"):
        ModelArgs.from_preset("llama9")
    with pytest.raises(UserError, match="unknown ModelArgs field"):
        ModelArgs.from_preset("tiny", width=3)
    with pytest.raises(UserError, match="not divisible"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    assert all(isinstance(v, ModelArgs) for v in PRESETS.values())
