"""Rehearsal proportions, the infilling transform, the data order, the schedule and the optimizer groups."""

from __future__ import annotations

import random

import pytest
import torch

from finetune.config import InfillingConfig, OptimConfig, RehearsalSource
from finetune.data import TokenizedDoc
from finetune.infilling import encode_code_document, encode_split, split_document
from finetune.loader import DataPosition, TrainingStream
from finetune.optim import build_optimizer
from finetune.rehearsal import RehearsalMixer, read_documents
from finetune.schedule import lr_at
from selfinstruct.errors import UserError

PAPER_MIX = [RehearsalSource(name="code", kind="code", proportion=0.06),
             RehearsalSource(name="natural_language", kind="text", proportion=0.02)]


def test_bundled_sources_hold_code_and_prose():
    code = read_documents(PAPER_MIX[0])
    text = read_documents(PAPER_MIX[1])
    assert any("def " in d for d in code) and len(code) >= 5
    assert len(text) >= 20 and not any(">>>" in d for d in text)


def test_rehearsal_holds_its_proportion_of_trained_tokens(tokenizer):
    mixer = RehearsalMixer(tokenizer, PAPER_MIX, seq_len=256, infilling=InfillingConfig())
    instruct_tokens = 20_000
    docs = mixer.epoch_documents(instruct_tokens, seed=0, epoch=0)
    assert all(len(d) <= 256 for d in docs)
    total = instruct_tokens / (1 - 0.08)
    targets = mixer.target_tokens(instruct_tokens)
    assert targets == {"code": round(total * 0.06), "natural_language": round(total * 0.02)}
    assert sum(d.n_trained for d in docs) == sum(targets.values())
    # deterministic per (seed, epoch), different across epochs
    again = mixer.epoch_documents(instruct_tokens, seed=0, epoch=0)
    assert [d.ids for d in again] == [d.ids for d in docs]
    assert [d.ids for d in mixer.epoch_documents(instruct_tokens, seed=0, epoch=1)] != [d.ids for d in docs]


def test_rehearsal_source_from_a_directory_and_bad_jsonl(tokenizer, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("def a():\n    return 1\n")
    source = RehearsalSource(name="mine", kind="code", path=str(tmp_path / "src"), proportion=0.1)
    assert read_documents(source) == ["def a():\n    return 1\n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: .*\"text\" field"):
        read_documents(RehearsalSource(name="b", kind="text", path=str(bad), proportion=0.1))


def test_infilling_split_is_character_level_and_half_each():
    rng = random.Random(0)
    text = "def add(a, b):\n    return a + b\n"
    splits = [split_document(text, rng) for _ in range(2000)]
    assert all(s.prefix + s.middle + s.suffix == text for s in splits)
    spm = sum(s.mode == "spm" for s in splits) / len(splits)
    assert 0.45 < spm < 0.55
    assert any(len(s.prefix) % 4 for s in splits)  # cuts land mid-token, not only at boundaries


def test_infilling_ids_match_the_inference_prompt(tokenizer):
    from finetune.infilling import InfillSplit

    split = InfillSplit(prefix="def add(a, b):\n    return ", middle="a + b", suffix="\n", mode="psm")
    ids = encode_split(tokenizer, split)
    prompt = tokenizer.encode_infill(split.prefix, split.suffix, "psm")
    assert ids[:len(prompt)] == prompt and ids[-1] == tokenizer.eot_id
    assert tokenizer.decode(ids[len(prompt):-1]) == "a + b"
    spm = encode_split(tokenizer, InfillSplit(split.prefix, split.middle, split.suffix, "spm"))
    assert spm[:3] == [tokenizer.bos_id, tokenizer.prefix_id, tokenizer.suffix_id]


def test_infilling_probability_is_applied(tokenizer):
    rng = random.Random(1)
    docs = [encode_code_document(tokenizer, "x = 1\ny = 2\n", rng, 0.9, 0.5) for _ in range(1000)]
    infilled = sum(tokenizer.middle_id in d.ids for d in docs) / len(docs)
    assert 0.87 < infilled < 0.93
    assert all(all(d.trained) for d in docs)


def test_training_stream_partitions_each_step_across_processes():
    docs = [TokenizedDoc(ids=list(range(1, 2 + i % 7)), trained=[False] + [True] * (i % 7)) for i in range(64)]
    streams = [TrainingStream(docs, 32, True, batch_size=2, grad_accum=2, seed=3, world_size=2, rank=r)
               for r in range(2)]
    single = TrainingStream(docs, 32, True, batch_size=2, grad_accum=2, seed=3, world_size=1, rank=0)
    (a, pos_a), (b, _) = (s.next_step(DataPosition()) for s in streams)
    assert a.n_targets == b.n_targets and pos_a.row == 8
    tokens = torch.cat([m.tokens for m in a.micro_batches + b.micro_batches])
    both, _ = single.next_step(DataPosition())
    two_steps = single.next_step(single.next_step(DataPosition())[1])[0]
    assert tokens.shape[0] == 8 and int(tokens.ne(0).sum()) == a.n_tokens
    assert both.n_tokens + two_steps.n_tokens == a.n_tokens


def test_too_little_data_for_one_step_is_a_user_error():
    docs = [TokenizedDoc(ids=[1, 5, 2], trained=[False, True, True])] * 3
    stream = TrainingStream(docs, 8, False, batch_size=4, grad_accum=1, seed=0)
    with pytest.raises(UserError, match="one step needs 4"):
        stream.epoch(0)


def test_cosine_schedule_with_warmup_ends_at_peak_over_30():
    peak, warmup, steps = 3e-4, 10, 100
    lrs = [lr_at(s, peak, warmup, steps) for s in range(steps)]
    assert lrs[0] == pytest.approx(peak / warmup) and lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(peak / 30)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))


def test_weight_decay_only_on_matrices(tiny_checkpoint):
    from model.checkpoint import load

    model = load(tiny_checkpoint)
    optimizer = build_optimizer(model, OptimConfig())
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_default_warmup_is_a_share_of_short_runs():
    from finetune.config import load_config

    assert load_config(None, ["train.max_steps=40"]).warmup_steps == 2
    assert load_config(None, ["train.max_steps=5000"]).warmup_steps == 100
    assert load_config(None, ["train.max_steps=40", "optim.warmup_steps=0"]).warmup_steps == 0
