"""Checkpoint I/O: Meta and HF layouts, shard merging, round trips, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.args import ModelArgs
from model.checkpoint import _META_DIM1, convert, load, load_state_dict, load_tokenizer, save_hf, save_meta
from model.cli import main as model_cli
from model.init import init_checkpoint
from model.transformer import Transformer
from selfinstruct.errors import UserError

pytestmark = pytest.mark.timeout(120)


def _random_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs.from_preset("tiny", **overrides)).init_weights(seed=0)


def test_meta_hf_meta_round_trip_is_bit_exact(tmp_path: Path) -> None:
    original = _random_model()
    save_meta(original, tmp_path / "meta")
    convert(tmp_path / "meta", tmp_path / "hf", "hf")
    convert(tmp_path / "hf", tmp_path / "meta2", "meta")
    before = torch.load(tmp_path / "meta" / "consolidated.00.pth")
    after = torch.load(tmp_path / "meta2" / "consolidated.00.pth")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "meta2" / "params.json").read_text())["n_kv_heads"] == 2


def test_hf_layout_permutes_q_and_k_rows(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = _random_model()
    save_hf(model, tmp_path)
    hf = load_file(tmp_path / "model.safetensors")
    wq, q_proj = model.layers[0].attention.wq.weight, hf["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(wq, q_proj)
    head_dim = model.args.head_dim
    # HF row (head h, i) for i < head_dim/2 is Meta's row (h, 2i): the even element of each rotary pair
    assert torch.equal(q_proj[: head_dim // 2], wq[0:head_dim:2])
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], model.layers[0].attention.wv.weight)


def test_sharded_hf_checkpoint_loads_in_transformers_and_here(tmp_path: Path, tokenizer_bytes: bytes) -> None:
    from transformers import LlamaForCausalLM

    (tmp_path / "tok.model").write_bytes(tokenizer_bytes)
    model = _random_model().eval()
    save_hf(model, tmp_path / "hf", tokenizer_path=tmp_path / "tok.model", max_shard_bytes=100_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for name in ("config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).is_file()
    tokens = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        expected = model(tokens)
        torch.testing.assert_close(load(tmp_path / "hf")(tokens), expected, atol=0, rtol=0)
        theirs = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert (theirs(tokens).logits - expected).abs().max() <= 1e-5
    assert load_tokenizer(tmp_path / "hf").vocab_size == 512


def test_meta_model_parallel_shards_are_merged(tmp_path: Path) -> None:
    model = _random_model(n_kv_heads=None)
    state = model.state_dict()
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    for name, tensor in state.items():
        if tensor.ndim == 1:
            parts = (tensor, tensor)
        else:
            parts = tensor.chunk(2, dim=1 if name.endswith(_META_DIM1) else 0)
        for shard, part in zip(shards, parts):
            shard[name] = part.clone()
    shards[0]["rope.freqs"] = torch.ones(8)  # Meta files carry it; loading drops it
    save_meta(model, tmp_path)
    (tmp_path / "consolidated.00.pth").unlink()
    for i, shard in enumerate(shards):
        torch.save(shard, tmp_path / f"consolidated.{i:02d}.pth")
    _, merged = load_state_dict(tmp_path)
    assert merged.keys() == state.keys()
    assert all(torch.equal(merged[k], state[k]) for k in state)


def test_load_casts_and_places(tiny_dir: Path) -> None:
    model = load(tiny_dir, dtype=torch.bfloat16)
    assert model.output.weight.dtype == torch.bfloat16 and not model.training
    logits = model(torch.tensor([[1, 5, 9]]))
    assert logits.shape == (1, 3, 512)


def test_init_checkpoint_vocab_matches_tokenizer(tiny_dir: Path) -> None:
    args, _ = load_state_dict(tiny_dir)
    assert args.vocab_size == load_tokenizer(tiny_dir).vocab_size == 512
    again = init_checkpoint("tiny", tiny_dir.parent / "again", seed=1)
    a, b = load_state_dict(tiny_dir)[1], load_state_dict(again)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded


def test_missing_and_malformed_checkpoints_name_the_file(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(UserError, match="nothing: checkpoint not found"):
        load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither params.json"):
        load(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config.json: malformed JSON"):
        load(broken)
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(UserError, match=r"config.json: malformed Llama config"):
        load(broken)
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no \\*.safetensors weight files"):
        load(broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="model.safetensors: cannot read weights"):
        load(broken)


def test_shape_mismatch_names_file_and_tensor(tmp_path: Path, tiny_dir: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] = 256
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"model.safetensors: layers.0.feed_forward.w1.weight has shape \(192, 64\), "
                                        r"the config says \(256, 64\)"):
        load(bad)
    meta = tmp_path / "meta"
    save_meta(_random_model(), meta)
    params = json.loads((meta / "params.json").read_text())
    params["n_layers"] = 3
    (meta / "params.json").write_text(json.dumps(params))
    with pytest.raises(UserError, match="consolidated.00.pth: missing 9 tensor"):
        load(meta)


def test_cli_init_convert_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_cli(["init", "--preset", "tiny", "--out", str(tmp_path / "a")]) == 0
    assert model_cli(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--to", "meta"]) == 0
    capsys.readouterr()
    assert model_cli(["info", str(tmp_path / "b")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "meta" and info["num_params"] == ModelArgs.from_preset("tiny").num_params()
    assert info["tokenizer"]["infilling"] is True
    assert model_cli(["init", "--preset", "nope", "--out", str(tmp_path / "c")]) == 2
    assert "unknown model preset 'nope'" in capsys.readouterr().err
    assert model_cli(["info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing: checkpoint not found")


def test_inference_packs_keep_values_and_save_identically(tmp_path: Path) -> None:
    model = _random_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        expected = model(tokens)
        model.pack_for_inference().pack_for_inference()  # idempotent
        assert all(layer._pack is not None for layer in (model.output, model.layers[0].feed_forward.w2))
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=0)
    assert model.state_dict().keys() == before.keys()
    save_hf(model, tmp_path / "hf")
    save_meta(model, tmp_path / "meta")
    for path in (tmp_path / "hf", tmp_path / "meta"):
        _, loaded = load_state_dict(path)
        assert all(torch.equal(loaded[k], before[k]) for k in before)
    model.train()
    assert model.output._pack is None  # training drops the copies


def test_info_reads_headers_only_and_still_checks_shapes(tmp_path: Path, tiny_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from model.checkpoint import inspect_checkpoint

    fmt, args, dtype = inspect_checkpoint(tiny_dir)
    assert (fmt, args.n_layers, dtype) == ("hf", 2, "float32")
    bf16 = tmp_path / "bf16"
    save_hf(load(tiny_dir, dtype=torch.bfloat16), bf16)
    assert inspect_checkpoint(bf16)[2] == "bfloat16"
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["hidden_size"] = 128
    (bad / "config.json").write_text(json.dumps(config))
    assert model_cli(["info", str(bad)]) == 2
    assert "model.safetensors: tok_embeddings.weight has shape (512, 64), the config says (512, 128)" in capsys.readouterr().err
