"""Generation: equal to transformers' greedy search, batch-invariant, reproducible, and stopping correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import load, load_tokenizer
from model.generate import generate, infill
from selfinstruct.errors import UserError

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["def fib(n):", "Write a Python function to get the unique elements of a list.\n", "x"]


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    return load(tiny_dir), load_tokenizer(tiny_dir)


def test_batched_greedy_equals_transformers(loaded, tiny_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    model, tok = loaded
    hf = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    hf.generation_config.eos_token_id = None
    outputs = generate(model, tok, PROMPTS, max_new_tokens=32)  # three lengths: left padding in play
    for prompt, (out,) in zip(PROMPTS, outputs):
        ids = tok.encode(prompt, bos=True)
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=0)[0, len(ids):]
        assert out.token_ids == expected.tolist()[:len(out.token_ids)]
        assert out.prompt_tokens == len(ids)
        if out.finish_reason == "length":
            assert out.completion_tokens == 32
        else:
            assert out.token_ids[-1] == tok.eos_id


def test_batch_composition_does_not_change_results(loaded) -> None:
    model, tok = loaded
    batched = generate(model, tok, PROMPTS, n=2, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=12)
    for prompt, samples in zip(PROMPTS, batched):
        alone = generate(model, tok, [prompt], n=2, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=12)[0]
        assert [s.token_ids for s in samples] == [s.token_ids for s in alone]
    chunked = generate(model, tok, PROMPTS, n=2, temperature=0.9, top_p=0.9, seed=7, max_new_tokens=12,
                       max_batch_size=3)
    assert [[s.token_ids for s in p] for p in chunked] == [[s.token_ids for s in p] for p in batched]


def test_one_seed_per_prompt_equals_separate_calls(loaded) -> None:
    model, tok = loaded
    seeds = [11, 5, 11]
    together = generate(model, tok, PROMPTS, n=2, temperature=1.0, seed=seeds, max_new_tokens=10)
    for prompt, seed, samples in zip(PROMPTS, seeds, together):
        alone = generate(model, tok, [prompt], n=2, temperature=1.0, seed=seed, max_new_tokens=10)[0]
        assert [s.token_ids for s in samples] == [s.token_ids for s in alone]
    with pytest.raises(UserError, match="one int per prompt"):
        generate(model, tok, PROMPTS, temperature=1.0, seed=[1, 2], max_new_tokens=2)


def test_seed_reproduces_and_samples_differ(loaded) -> None:
    model, tok = loaded
    first = generate(model, tok, ["def"], n=4, temperature=1.0, seed=3, max_new_tokens=16)[0]
    again = generate(model, tok, ["def"], n=4, temperature=1.0, seed=3, max_new_tokens=16)[0]
    other = generate(model, tok, ["def"], n=4, temperature=1.0, seed=4, max_new_tokens=16)[0]
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert len({tuple(o.token_ids) for o in first}) > 1  # n samples are distinct draws
    assert [o.token_ids for o in first] != [o.token_ids for o in other]
    # the i-th sample uses seed + i (vLLM's convention): sample 1 of seed 3 is sample 0 of seed 4
    assert first[1].token_ids == other[0].token_ids


def test_tiny_top_p_is_greedy(loaded) -> None:
    model, tok = loaded
    greedy = generate(model, tok, PROMPTS, max_new_tokens=10)
    nucleus = generate(model, tok, PROMPTS, temperature=1.0, top_p=1e-6, seed=0, max_new_tokens=10)
    assert [p[0].token_ids for p in greedy] == [p[0].token_ids for p in nucleus]


def test_stop_strings_cut_text_and_report_stop(loaded) -> None:
    model, tok = loaded
    (free,) = generate(model, tok, ["def"], max_new_tokens=24)[0]
    stop_at = free.text[3:5]
    assert len(stop_at) == 2
    (stopped,) = generate(model, tok, ["def"], max_new_tokens=24, stop=[stop_at])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[:free.text.index(stop_at)]
    assert stopped.token_ids == free.token_ids[:stopped.completion_tokens]


def test_stop_token_ids_and_length(loaded) -> None:
    model, tok = loaded
    (free,) = generate(model, tok, ["def"], max_new_tokens=8)[0]
    assert free.finish_reason == "length" and free.completion_tokens == 8
    assert free.text == tok.decode_continuation(free.token_ids)
    (stopped,) = generate(model, tok, ["def"], max_new_tokens=8, stop_token_ids=[free.token_ids[2]])[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(free.token_ids[2]) + 1]
    assert stopped.text == tok.decode_continuation(stopped.token_ids[:-1])


def test_token_id_prompts_and_infill(loaded) -> None:
    model, tok = loaded
    ids = tok.encode("def fib(n):", bos=True)
    assert generate(model, tok, [ids], max_new_tokens=6) == generate(model, tok, ["def fib(n):"], max_new_tokens=6)
    out = infill(model, tok, "def add(a, b):\n    ", "\n    return c\n", mode="spm", max_new_tokens=6)
    assert out.prompt_tokens == len(tok.encode_infill("def add(a, b):\n    ", "\n    return c\n", "spm"))
    assert out.completion_tokens <= 6


def test_bad_requests_are_user_errors(loaded) -> None:
    model, tok = loaded
    with pytest.raises(UserError, match="top_p"):
        generate(model, tok, ["x"], top_p=0.0)
    with pytest.raises(UserError, match="outside the vocabulary"):
        generate(model, tok, [[1, 99999]])
    with pytest.raises(UserError, match="empty"):
        generate(model, tok, [[]])


def test_model_still_trains_after_generating(tiny_dir: Path) -> None:
    model, tok = load(tiny_dir), load_tokenizer(tiny_dir)
    generate(model, tok, ["def"], max_new_tokens=2)  # switches CPU weights to column-major
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.tensor([tok.encode("def add(a, b): return a + b", bos=True)])
    losses = []
    for _ in range(3):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.output.weight.is_contiguous()  # train() restored the row-major layout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_decode_gives_the_same_tokens(loaded) -> None:
    model, tok = loaded
    eager = generate(model, tok, PROMPTS, max_new_tokens=12)
    compiled = generate(model, tok, PROMPTS, max_new_tokens=12, compile=True)
    assert [p[0].token_ids for p in compiled] == [p[0].token_ids for p in eager]
