"""The built-in backend over the project's own model (a tiny random checkpoint, CPU)."""

from __future__ import annotations

import pytest

from generator.backends import GenerationRequest, TorchBackendConfig, make_backend
from selfinstruct.errors import UserError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def backend(tiny_checkpoint):
    b = make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), batch_size=8))
    yield b
    b.close()


def test_completions_equal_calling_the_model_directly(backend, tiny_checkpoint):
    from model.checkpoint import load, load_tokenizer
    from model.generate import generate

    requests = [GenerationRequest(prompt=f"[INST] Write function number {i}. [/INST]", n=2, temperature=0.8,
                                  top_p=0.95, max_tokens=6, seed=3) for i in range(3)]
    got = backend.generate(requests)
    model, tokenizer = load(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    want = generate(model, tokenizer, [r.prompt for r in requests], n=2, temperature=0.8, top_p=0.95,
                    max_new_tokens=6, seed=3)
    assert [[c.text for c in cs] for cs in got] == [[o.text for o in os_] for os_ in want]
    assert [[c.completion_tokens for c in cs] for cs in got] == [[o.completion_tokens for o in os_] for os_ in want]
    for cs, prompt in zip(got, [r.prompt for r in requests], strict=True):
        assert sum(c.prompt_tokens for c in cs) == len(tokenizer.encode(prompt, bos=True))
        assert all(c.latency_s > 0 and 1 <= c.completion_tokens <= 6 for c in cs)


def test_a_requests_output_does_not_depend_on_its_batch(backend):
    mixed = [
        GenerationRequest(prompt="[INST] a [/INST]", n=2, temperature=1.0, max_tokens=5, seed=1),
        GenerationRequest(prompt="[INST] b b b b b b [/INST]", n=1, temperature=0.0, max_tokens=4, seed=9),
        GenerationRequest(prompt="[INST] c [/INST]", n=2, temperature=1.0, max_tokens=5, seed=2),
        GenerationRequest(prompt="[INST] d d [/INST]", n=1, temperature=0.0, max_tokens=4, seed=None),
    ]
    together = backend.generate(mixed)
    alone = [backend.generate([r])[0] for r in mixed]
    assert [[c.text for c in cs] for cs in together] == [[c.text for c in cs] for cs in alone]
    assert [len(cs) for cs in together] == [2, 1, 2, 1]


def test_requests_with_their_own_seeds_share_one_batch(backend, monkeypatch):
    """The pipeline seeds every request differently; that must not force one model call per request."""
    calls = []
    real = backend._generate
    monkeypatch.setattr(backend, "_generate", lambda *a, **kw: calls.append(kw["seed"]) or real(*a, **kw))
    requests = [GenerationRequest(prompt=f"[INST] p{i} [/INST]", n=2, temperature=0.8, max_tokens=5, seed=100 + i)
                for i in range(4)]
    together = backend.generate(requests)
    assert calls == [[100, 101, 102, 103]]
    alone = [backend.generate([r])[0] for r in requests]
    assert [[c.text for c in cs] for cs in together] == [[c.text for c in cs] for cs in alone]


def test_a_literal_bos_in_the_prompt_is_not_doubled(backend):
    plain = GenerationRequest(prompt="[INST] hello [/INST]", max_tokens=5)
    with_bos = GenerationRequest(prompt="<s>[INST] hello [/INST]", max_tokens=5)
    a, b = backend.generate([plain, with_bos])
    assert a[0].text == b[0].text and a[0].prompt_tokens == b[0].prompt_tokens


def test_stop_strings_cut_the_text(backend):
    (free,) = backend.generate([GenerationRequest(prompt="[INST] x [/INST]", max_tokens=12)])
    text = free[0].text
    stop = text.strip()[:2] if len(text.strip()) >= 2 else None
    if stop is None:
        pytest.skip("the random model produced too little text to pick a stop string from")
    (cut,) = backend.generate([GenerationRequest(prompt="[INST] x [/INST]", max_tokens=12, stop=[stop])])
    assert stop not in cut[0].text and cut[0].finish_reason == "stop"
    assert text.startswith(cut[0].text)


def test_configuration_errors_are_user_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError):
        make_backend(TorchBackendConfig(checkpoint=str(tmp_path)))
    with pytest.raises(UserError, match="unknown torch dtype"):
        make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), dtype="float7"))


def test_a_cuda_device_without_cuda_is_a_user_error(tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match="CUDA is not available"):
        make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), device="cuda"))
