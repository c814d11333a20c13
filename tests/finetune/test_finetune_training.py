"""End-to-end single-process runs on a tiny model: learning, exact resume, the exported model, bad runs."""

from __future__ import annotations

import pytest
import torch

from finetune.metrics import read_metrics
from finetune.train import train
from selfinstruct.errors import UserError
from tests.finetune.conftest import instruct_rows, write_jsonl


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overfit_small_set_and_reproduce_an_answer(make_config, tmp_path):
    from model.checkpoint import load, load_tokenizer
    from model.generate import generate

    data = write_jsonl(tmp_path / "four.jsonl", instruct_rows(4))
    config = make_config(f"data.paths=[{data}]", "data.val_fraction=0", "train.max_steps=150", "optim.lr=1e-2",
                         "optim.warmup_steps=5", "train.batch_size=1", "train.log_every=15")
    summary = train(config)
    assert summary.final_loss < 0.1 * summary.first_loss
    rows = [r for r in read_metrics(summary.metrics) if r["kind"] == "train"]
    assert len(rows) == 10 and rows[-1]["loss"] < 0.05 and all(r["tokens_per_s"] > 0 for r in rows)

    model, tokenizer = load(summary.meta_dir), load_tokenizer(summary.hf_dir)
    rows = instruct_rows(4)
    prompts = [tokenizer.encode_dialog_prompt([{"role": "user", "content": r["problem"]}]) for r in rows]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=40)
    for row, (out,) in zip(rows, outputs):
        assert out.text.strip() == f"[PYTHON]\n{row['solution']}\n[/PYTHON]"
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


@pytest.mark.timeout(120)
def test_interrupted_and_resumed_run_ends_with_the_same_weights(make_config):
    from model.checkpoint import load_state_dict

    settings = ("train.max_steps=8", "train.grad_accum=2", "train.eval_every=4",
                "data.rehearsal=[{name: code, kind: code, proportion: 0.1}]",
                "data.infilling.enabled=true")
    straight = train(make_config(*settings, out="straight"))
    first = train(make_config(*settings, out="resumed"), stop_after=3)
    assert first.stopped_early and first.steps == 3 and first.hf_dir is None
    second = train(make_config(*settings, "train.resume=true", out="resumed"))
    assert second.start_step == 3 and second.steps == 8
    _, a = load_state_dict(straight.meta_dir)
    _, b = load_state_dict(second.meta_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda s: [(r["step"], r["loss"]) for r in read_metrics(s.metrics) if r["kind"] == "train"]
    assert losses(straight) == losses(second)


@pytest.mark.timeout(120)
def test_saved_hf_checkpoint_loads_in_transformers_with_equal_logits(make_config):
    from transformers import LlamaForCausalLM

    from model.checkpoint import load

    summary = train(make_config("train.max_steps=3", "model.rope_theta=1e6", "model.max_seq_len=1024"))
    ours = load(summary.hf_dir)
    assert ours.args.rope_theta == 1e6 and ours.args.max_seq_len == 1024
    hf = LlamaForCausalLM.from_pretrained(summary.hf_dir, torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, ours.args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    assert diff < 1e-5
    with torch.no_grad():  # the fine-tuned weights, not the starting ones
        start = load(make_config().model.source)
        assert (start(tokens) - ours(tokens)).abs().max().item() > 1e-3


@pytest.mark.timeout(60)
def test_resuming_with_another_config_is_refused(make_config):
    train(make_config("train.max_steps=4", out="r"), stop_after=2)
    with pytest.raises(UserError, match="different config"):
        train(make_config("train.max_steps=4", "optim.lr=1e-4", "train.resume=true", out="r"))
    with pytest.raises(UserError, match="nothing to resume: no checkpoint in"):
        train(make_config("train.max_steps=4", "train.resume=true", out="elsewhere"))


@pytest.mark.timeout(60)
def test_checkpoint_that_does_not_match_its_tokenizer_or_sequence(make_config, tmp_path, tiny_checkpoint):
    from model.args import ModelArgs
    from model.checkpoint import save_hf
    from model.transformer import Transformer

    small_vocab = Transformer(ModelArgs.from_preset("tiny", vocab_size=256)).init_weights(seed=0)
    odd = save_hf(small_vocab, tmp_path / "odd", tokenizer_path=tiny_checkpoint / "tokenizer.model")
    with pytest.raises(UserError, match="512 pieces but the model only 256 embeddings"):
        train(make_config(f"model.source={odd}"))
    with pytest.raises(UserError, match="longer than the model's max_seq_len=512"):
        train(make_config("data.seq_len=1024"))
    with pytest.raises(UserError, match="neither a checkpoint directory nor a preset"):
        train(make_config(f"model.source={tmp_path / 'missing'}"))


@pytest.mark.timeout(120)
def test_activation_checkpointing_changes_nothing_but_memory(make_config):
    plain = train(make_config("train.max_steps=3", out="plain"))
    recomputed = train(make_config("train.max_steps=3", "model.activation_checkpointing=true", out="ac"))
    losses = lambda s: [r["loss"] for r in read_metrics(s.metrics) if r["kind"] == "train"]
    assert losses(plain) == pytest.approx(losses(recomputed), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.timeout(180)
def test_cuda_bf16_run(make_config):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    summary = train(make_config("train.device=cuda", "train.bf16=auto", "train.max_steps=20"))
    assert summary.device.startswith("cuda") and summary.final_loss < summary.first_loss
    assert summary.hf_dir is not None
