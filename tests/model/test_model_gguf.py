"""GGUF export read back with gguf's own reader: metadata, tensor names/shapes/types, the tokenizer, errors.

No llama.cpp needed here; tests/llamacpp/ loads the same files in llama.cpp and compares logits and ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.args import ModelArgs
from model.chat import LLAMA2_CHAT_TEMPLATE, chat_text
from model.checkpoint import TOKENIZER_FILE, load_state_dict, load_tokenizer, save_hf, save_meta
from model.cli import main as model_cli
from model.gguf_export import export_gguf, gguf_tensor_name
from model.transformer import Transformer
from selfinstruct.errors import UserError

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.timeout(120)


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(path: Path) -> dict[str, object]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_metadata_says_what_llama_cpp_needs(tiny_dir: Path, tmp_path: Path) -> None:
    args, _ = load_state_dict(tiny_dir)
    fields = _fields(export_gguf(tiny_dir, tmp_path / "tiny.gguf"))
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    expected = {
        "llama.context_length": args.max_seq_len, "llama.embedding_length": args.dim,
        "llama.block_count": args.n_layers, "llama.feed_forward_length": args.hidden_dim,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": args.head_dim, "llama.vocab_size": args.vocab_size,
    }
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(1e4)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert fields["tokenizer.chat_template"] == LLAMA2_CHAT_TEMPLATE


def test_tensors_are_meta_layout_under_llama_cpp_names(tiny_dir: Path, tmp_path: Path) -> None:
    """tiny_dir is an HF checkpoint: q/k rows must come out permuted back to Meta's adjacent pairs, which is
    the layout llama.cpp's rope expects; GQA's k/v have n_kv_heads * head_dim rows."""
    _, state = load_state_dict(tiny_dir)
    tensors = _tensors(export_gguf(tiny_dir, tmp_path / "tiny.gguf"))
    assert set(tensors) == {gguf_tensor_name(n) for n in state}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.attn_q.weight",
            "blk.1.ffn_gate.weight", "blk.1.ffn_norm.weight"} <= set(tensors)
    for name, value in state.items():
        tensor = tensors[gguf_tensor_name(name)]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(int(d) for d in tensor.shape) == tuple(reversed(value.shape))  # GGML lists dims innermost first
        np.testing.assert_array_equal(tensor.data.reshape(value.shape), value.numpy())
    assert tuple(int(d) for d in tensors["blk.0.attn_k.weight"].shape) == (64, 2 * 16)


@pytest.mark.parametrize(("dtype", "ggml_type", "file_type", "atol"), [
    ("f16", "F16", "MOSTLY_F16", 1e-3),
    ("bf16", "BF16", "MOSTLY_BF16", 1e-2),
])
def test_half_precision_keeps_norms_in_f32(tiny_dir: Path, tmp_path: Path, dtype: str, ggml_type: str,
                                           file_type: str, atol: float) -> None:
    _, state = load_state_dict(tiny_dir)
    path = export_gguf(tiny_dir, tmp_path / f"tiny-{dtype}.gguf", dtype=dtype)  # type: ignore[arg-type]
    assert _fields(path)["general.file_type"] == gguf.LlamaFileType[file_type]
    tensors = _tensors(path)
    for name, value in state.items():
        tensor = tensors[gguf_tensor_name(name)]
        if value.ndim == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        assert tensor.tensor_type == gguf.GGMLQuantizationType[ggml_type]
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(value.shape)
        np.testing.assert_allclose(data, value.numpy(), atol=atol, rtol=0)


def test_tokenizer_pieces_scores_types_and_special_ids(tiny_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    fields = _fields(export_gguf(tiny_dir, tmp_path / "tiny.gguf"))
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.tokens"] == [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    assert fields["tokenizer.ggml.scores"] == pytest.approx([tok.sp.get_score(i) for i in range(tok.vocab_size)])
    types = fields["tokenizer.ggml.token_type"]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[tok.sp.piece_to_id("<0x0A>")] == gguf.TokenType.BYTE
    assert types[tok.prefix_id] == gguf.TokenType.CONTROL  # id-only, as in SentencePiece: text never makes it
    assert types[tok.encode("return")[0]] == gguf.TokenType.NORMAL
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert "tokenizer.ggml.padding_token_id" not in fields  # Llama has none (pad -1)
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.add_space_prefix"] is True
    assert [fields[f"tokenizer.ggml.{k}_token_id"] for k in ("fim_pre", "fim_suf", "fim_mid", "eot")] == [
        tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id]


def test_no_infilling_ids_without_infilling_pieces(tmp_path: Path) -> None:
    from model.tokenizer_train import train_tokenizer_bytes

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / TOKENIZER_FILE).write_bytes(train_tokenizer_bytes(infilling=False))
    torch.manual_seed(0)
    save_hf(Transformer(ModelArgs.from_preset("tiny")).init_weights(seed=0), tmp_path / "src")
    fields = _fields(export_gguf(tmp_path / "src", tmp_path / "out.gguf"))
    assert not [k for k in fields if "fim_" in k or "eot_token" in k]


def test_meta_source_with_code_llama_rope_theta_and_a_larger_embedding(tmp_path: Path,
                                                                       tokenizer_bytes: bytes) -> None:
    """Rows past the tokenizer's pieces get unused [PADn] tokens (llama.cpp wants one token per row)."""
    args = ModelArgs.from_preset("tiny-code", vocab_size=520)
    torch.manual_seed(0)
    (tmp_path / "tok.model").write_bytes(tokenizer_bytes)
    save_meta(Transformer(args).init_weights(seed=0), tmp_path / "meta", tokenizer_path=tmp_path / "tok.model")
    path = export_gguf(tmp_path / "meta", tmp_path)  # a directory gets model.gguf
    assert path == tmp_path / "model.gguf"
    fields = _fields(path)
    assert fields["llama.rope.freq_base"] == pytest.approx(1e6)
    assert fields["llama.context_length"] == 16384  # params.json has none: the reader's Code Llama default
    assert len(fields["tokenizer.ggml.tokens"]) == 520
    assert fields["tokenizer.ggml.tokens"][-1] == "[PAD519]"
    assert fields["tokenizer.ggml.token_type"][-1] == gguf.TokenType.UNUSED


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path, tokenizer_bytes: bytes) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / TOKENIZER_FILE).write_bytes(tokenizer_bytes)
    save_hf(Transformer(ModelArgs.from_preset("tiny", vocab_size=256)).init_weights(seed=0), tmp_path / "src")
    with pytest.raises(UserError, match="512 pieces, more than the model's 256 embedding rows"):
        export_gguf(tmp_path / "src", tmp_path / "out.gguf")


def test_missing_tokenizer_is_one_line_and_tokenizer_option_fixes_it(tiny_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "no-tokenizer"
    src.mkdir()
    for name in ("config.json", "model.safetensors"):
        (src / name).write_bytes((tiny_dir / name).read_bytes())
    with pytest.raises(UserError, match="has no tokenizer.model: GGUF needs the tokenizer inside"):
        export_gguf(src, tmp_path / "out.gguf")
    assert model_cli(["convert", str(src), str(tmp_path / "out.gguf"), "--to", "gguf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --tokenizer FILE" in err
    assert model_cli(["convert", str(src), str(tmp_path / "out.gguf"), "--to", "gguf",
                      "--tokenizer", str(tiny_dir / TOKENIZER_FILE)]) == 0
    assert len(_fields(tmp_path / "out.gguf")["tokenizer.ggml.tokens"]) == 512


def test_cli_convert_to_gguf(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-f16.gguf"
    assert model_cli(["convert", str(tiny_dir), str(out), "--to", "gguf", "--dtype", "f16"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert _fields(out)["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert model_cli(["convert", str(tiny_dir), str(tmp_path / "hf"), "--to", "hf", "--dtype", "f16"]) == 2
    assert "apply to --to gguf only" in capsys.readouterr().err


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "  Write a function.\n"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": " a1\n"}, {"role": "user", "content": "q2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
])
def test_chat_template_renders_model_chat_format(messages) -> None:
    """The template written into the GGUF, rendered the way llama-cpp-python's server renders it (Jinja with
    bos_token/eos_token), gives exactly `model.chat.chat_text`."""
    jinja2 = pytest.importorskip("jinja2")

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    rendered = jinja2.Environment().from_string(LLAMA2_CHAT_TEMPLATE).render(
        messages=messages, bos_token="<s>", eos_token="</s>", raise_exception=raise_exception,
        add_generation_prompt=True)
    assert rendered == chat_text(messages)
