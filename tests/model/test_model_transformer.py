"""The transformer against transformers' LlamaForCausalLM on the same random weights, and against itself
(KV cache, packing, activation checkpointing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.args import ModelArgs
from model.checkpoint import load
from model.transformer import Transformer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=[("gqa", 1e4), ("mha", 1e4), ("gqa", 1e6), ("mha", 1e6)],
                ids=lambda p: f"{p[0]}-theta{p[1]:g}")
def hf_pair(request, tmp_path_factory, save_random_hf_model) -> tuple:
    """(our model, transformers' model) loaded from one directory that transformers wrote."""
    from transformers import LlamaForCausalLM

    attention, theta = request.param
    args = ModelArgs.from_preset("tiny", n_kv_heads=2 if attention == "gqa" else None, rope_theta=theta,
                                 n_layers=3, vocab_size=300)
    path = save_random_hf_model(args, tmp_path_factory.mktemp("hf"))
    return load(path), LlamaForCausalLM.from_pretrained(path).eval()


def test_logits_match_transformers_fp32(hf_pair) -> None:
    ours, theirs = hf_pair
    tokens = torch.randint(0, 300, (3, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(tokens) - theirs(tokens).logits).abs().max().item()
        spread = theirs(tokens).logits.std().item()
    assert spread > 0.5  # logits vary: the comparison is not between near-constant values
    assert diff <= 1e-5


def test_greedy_generation_matches_transformers(hf_pair) -> None:
    ours, theirs = hf_pair
    theirs.generation_config.eos_token_id = None  # generate all 32 tokens, whatever they are
    for prompt in ([1, 17, 42, 99, 5], [1, 250]):
        expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
        ours.setup_cache(1, len(prompt) + 32)
        logits = ours.forward_cached(torch.tensor([prompt]), torch.arange(len(prompt))[None], 0, last_only=True)
        got = []
        for step in range(32):
            token = int(logits[0, -1].argmax())
            got.append(token)
            logits = ours.forward_cached(torch.tensor([[token]]), torch.tensor([[len(prompt) + step]]),
                                         len(prompt) + step)
        ours.drop_cache()
        assert got == expected


def _tiny(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelArgs.from_preset("tiny", **overrides)).init_weights(seed=seed, std=0.1).eval()


@torch.no_grad()
def test_cached_decode_equals_full_forward_at_every_position() -> None:
    model = _tiny()
    tokens = torch.randint(0, 512, (2, 24))
    full = model(tokens)
    model.setup_cache(2, 32)
    pieces = [model.forward_cached(tokens[:, :7], torch.arange(7).expand(2, 7), 0)]
    for t in range(7, 24):
        pieces.append(model.forward_cached(tokens[:, t:t + 1], torch.full((2, 1), t), t))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    # a chunked prefill (several tokens at a non-zero start) agrees too
    model.setup_cache(2, 32)
    first = model.forward_cached(tokens[:, :10], torch.arange(10).expand(2, 10), 0)
    second = model.forward_cached(tokens[:, 10:], torch.arange(10, 24).expand(2, 14), 10)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padded_rows_equal_unpadded_forward() -> None:
    model = _tiny()
    short, long = torch.randint(0, 512, (1, 5)), torch.randint(0, 512, (1, 9))
    tokens = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    positions = torch.stack([torch.tensor([0, 0, 0, 0, 0, 1, 2, 3, 4]), torch.arange(9)])
    key_valid = torch.ones(2, 12, dtype=torch.bool)
    key_valid[0, :4] = False
    model.setup_cache(2, 12)
    logits = model.forward_cached(tokens, positions, 0, key_valid)
    torch.testing.assert_close(logits[0, 4:], model(short)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], model(long)[0], atol=1e-5, rtol=0)
    assert torch.isfinite(logits).all()  # padded queries see themselves: no fully masked row


@torch.no_grad()
def test_packed_documents_equal_separate_forwards() -> None:
    model = _tiny()
    docs = [torch.randint(0, 512, (1, n)) for n in (5, 8, 3)]
    packed = torch.cat(docs, dim=1)
    doc_ids = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], dim=1)
    positions = torch.cat([torch.arange(d.shape[1])[None] for d in docs], dim=1)
    logits = model(packed, positions=positions, doc_ids=doc_ids)
    separate = torch.cat([model(d) for d in docs], dim=1)
    torch.testing.assert_close(logits, separate, atol=1e-5, rtol=0)
    # without the packing mask, later documents would see earlier ones
    assert (model(packed, positions=positions) - separate).abs().max() > 1e-3


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    tokens = torch.randint(0, 512, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model = _tiny(seed=3).train().enable_activation_checkpointing(checkpointing)
        model(tokens).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@torch.no_grad()
def test_bf16_forward_tracks_fp32() -> None:
    model = _tiny()
    tokens = torch.randint(0, 512, (1, 32))
    reference = model(tokens)
    low = model.to(torch.bfloat16)(tokens)
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


def test_meta_device_construction_allocates_nothing() -> None:
    with torch.device("meta"):
        model = Transformer(ModelArgs.from_preset("llama2-70b"))
    assert sum(p.numel() for p in model.parameters()) == model.args.num_params()


@torch.no_grad()
def test_fixed_shape_decode_step_equals_full_forward() -> None:
    model = _tiny()
    tokens = torch.randint(0, 512, (2, 12))
    full = model(tokens)
    model.setup_cache(2, 16)
    pieces = [model.decode_step(tokens[:, :4], torch.arange(4).expand(2, 4), torch.arange(4))]
    for t in range(4, 12):
        pieces.append(model.decode_step(tokens[:, t:t + 1], torch.full((2, 1), t), torch.tensor([t])))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
