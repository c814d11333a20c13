"""Packing keeps documents apart (same loss as one per row); only answer tokens carry loss."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
import torch.nn.functional as F

from finetune.data import TokenizedDoc, read_export, tokenize_examples
from finetune.loss import sequence_loss_sum
from finetune.packing import IGNORE_INDEX, bucket_rows, collate, doc_targets, pack_rows
from tests.finetune.conftest import instruct_rows, write_jsonl


@pytest.fixture
def docs(tokenizer, tmp_path):
    return tokenize_examples(tokenizer, read_export(write_jsonl(tmp_path / "e.jsonl", instruct_rows(6))), 256)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from model.checkpoint import load

    return load(tiny_checkpoint)


def test_targets_are_next_answer_tokens_only():
    doc = TokenizedDoc(ids=[1, 10, 11, 12, 20, 21, 2], trained=[False, False, False, False, True, True, True])
    assert doc_targets(doc) == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 20, 21, 2, IGNORE_INDEX]
    assert doc.n_trained == 3


def test_pack_rows_fills_rows_without_overflow():
    lengths = [random.Random(i).randint(5, 60) for i in range(200)]
    rows = pack_rows(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert sum(lengths) / (128 * len(rows)) > 0.9  # dense


def test_bucket_rows_groups_similar_lengths():
    lengths = [random.Random(i).randint(5, 500) for i in range(256)]
    rows = bucket_rows(lengths, 8, random.Random(0))
    assert sorted(r[0] for r in rows) == list(range(256))
    padded = sum(max(lengths[r[0]] for r in rows[i:i + 8]) * 8 for i in range(0, 256, 8))
    assert sum(lengths) / padded > 0.8


def test_packed_batch_gives_the_same_loss_as_one_document_per_row(docs, tiny_model):
    rows = pack_rows([len(d) for d in docs], 256)
    assert any(len(r) > 1 for r in rows)
    packed = collate(docs, rows, 256)
    assert packed.doc_ids is not None and packed.positions is not None
    unpacked = collate(docs, [[i] for i in range(len(docs))], None)
    assert unpacked.doc_ids is None
    assert packed.n_targets == unpacked.n_targets == sum(d.n_trained for d in docs)
    null = contextlib.nullcontext()
    packed_loss = sequence_loss_sum(tiny_model, packed, null) / packed.n_targets
    unpacked_loss = sequence_loss_sum(tiny_model, unpacked, null) / unpacked.n_targets
    assert packed_loss.item() == pytest.approx(unpacked_loss.item(), rel=1e-5)
    # and both equal each document scored on its own
    alone = sum(sequence_loss_sum(tiny_model, collate(docs, [[i]], None), null) for i in range(len(docs)))
    assert (alone / packed.n_targets).item() == pytest.approx(packed_loss.item(), rel=1e-5)


def test_no_loss_on_prompt_tokens(docs, tiny_model):
    """The gradient of the loss reaches the logits of answer positions only."""
    batch = collate(docs[:2], [[0, 1]], 256)
    logits = tiny_model(batch.tokens, positions=batch.positions, doc_ids=batch.doc_ids).detach().requires_grad_()
    F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").backward()
    has_grad = logits.grad.abs().sum(-1)[0] > 0
    expected = torch.zeros(256, dtype=torch.bool)
    offset = 0
    for doc in docs[:2]:
        for t in range(len(doc) - 1):
            expected[offset + t] = doc.trained[t + 1]  # position t predicts id t+1
        offset += len(doc)
    assert torch.equal(has_grad, expected)
    # what carries loss is exactly the answer and its EOS
    n_answer = sum(d.trained.count(True) for d in docs[:2])
    assert int(expected.sum()) == n_answer


def test_padding_never_uses_negative_ids(docs):
    batch = collate(docs, [[0], [1, 2]], 256)
    assert int(batch.tokens.min()) >= 0
    assert batch.n_tokens == sum(len(d) for d in docs[:3])


def test_head_on_trained_positions_only_gives_the_full_loss_and_gradient(docs, tiny_checkpoint):
    from model.checkpoint import load

    batch = collate(docs, pack_rows([len(d) for d in docs], 256), 256)
    losses, grads = [], []
    for restricted in (True, False):
        model = load(tiny_checkpoint).train()
        if restricted:
            loss = sequence_loss_sum(model, batch, contextlib.nullcontext())
            assert not model.output._forward_pre_hooks  # the hook is gone after the loss
        else:
            logits = model(batch.tokens, positions=batch.positions, doc_ids=batch.doc_ids)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def _prompted_docs(seed: int = 0) -> list[TokenizedDoc]:
    """Documents in three prompt families (a long common prefix each, as the recipe warm-up's stages have),
    then a question of their own and a trained answer; plus two documents with no family."""
    rng = random.Random(seed)
    prefixes = [[1] + [rng.randrange(3, 200) for _ in range(rng.randint(30, 60))] for _ in range(3)]
    docs = []
    for k in range(14):
        prompt = (prefixes[k % 3] if k < 12 else [1]) + [rng.randrange(3, 200) for _ in range(rng.randint(3, 15))]
        answer = [rng.randrange(3, 200) for _ in range(rng.randint(4, 20))] + [2]
        docs.append(TokenizedDoc(ids=prompt + answer, trained=[False] * len(prompt) + [True] * len(answer)))
    return docs


def test_shared_prefix_rows_give_the_same_loss_in_fewer_tokens(tiny_model):
    from finetune.packing import pack_rows_sharing, row_width, shared_length

    docs = _prompted_docs()
    order = list(range(len(docs)))
    random.Random(1).shuffle(order)
    rows = pack_rows_sharing(docs, order, 256, random.Random(2))
    assert sorted(i for row in rows for i in row) == list(range(len(docs)))
    assert all(row_width(docs, row, True) <= 256 for row in rows)
    shared = collate(docs, rows, 256, share=True)
    assert shared.shared is not None
    assert shared.n_tokens < sum(len(d) for d in docs) * 0.75  # the prefixes are written about once per row
    plain = collate(docs, [[i] for i in range(len(docs))], None)
    assert shared.n_targets == plain.n_targets == sum(d.n_trained for d in docs)
    null = contextlib.nullcontext()
    shared_loss = sequence_loss_sum(tiny_model, shared, null)
    plain_loss = sequence_loss_sum(tiny_model, plain, null)
    assert shared_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    # a trained token inside the common part stops the sharing before it; short prefixes are not shared
    a = TokenizedDoc(ids=list(range(3, 43)), trained=[False] * 40)
    b = TokenizedDoc(ids=list(range(3, 43)) + [99], trained=[False] * 30 + [True] * 11)
    assert shared_length(a, b) == 0 and shared_length(b, a) == 39
    assert shared_length(a, TokenizedDoc(ids=list(range(3, 13)) + [7], trained=[False] * 11)) == 0


def test_shared_prefix_training_stream_matches_its_fill(tiny_model):
    from finetune.loader import DataPosition, TrainingStream

    docs = _prompted_docs(seed=3) * 4
    plain = TrainingStream(docs, 256, True, 2, 1, 0)
    shared = TrainingStream(docs, 256, True, 2, 1, 0, share_prefixes=True)
    assert len(shared.epoch(0).rows) < len(plain.epoch(0).rows)
    assert 0 < shared.fill() <= 1.0
    step, _ = shared.next_step(DataPosition())
    assert any(b.shared is not None for b in step.micro_batches)
