"""The built-in backend on a CUDA GPU (marked `gpu`: not run in CI, which has no GPU)."""

from __future__ import annotations

import pytest

from generator.backends import GenerationRequest, TorchBackendConfig, make_backend

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _texts(results) -> list[list[str]]:
    return [[c.text for c in cs] for cs in results]


def test_cuda_float32_greedy_equals_cpu(tiny_checkpoint):
    requests = [GenerationRequest(prompt=f"[INST] Write function {i}. [/INST]", max_tokens=12) for i in range(4)]
    cpu = make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint)))
    gpu = make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), device="cuda"))
    try:
        on_cpu, on_gpu = cpu.generate(requests), gpu.generate(requests)
    finally:
        cpu.close()
        gpu.close()
    assert _texts(on_gpu) == _texts(on_cpu)
    assert [[c.completion_tokens for c in cs] for cs in on_gpu] == [[c.completion_tokens for c in cs] for cs in on_cpu]


def test_cuda_bfloat16_sampling_is_batched_and_reproducible(tiny_checkpoint):
    backend = make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), device="cuda", dtype="bfloat16",
                                              batch_size=64))
    requests = [GenerationRequest(prompt=f"[INST] Problem {i} [/INST]", n=10, temperature=0.8, top_p=0.95,
                                  max_tokens=16, seed=1234) for i in range(12)]
    try:
        first, second = backend.generate(requests), backend.generate(requests)
    finally:
        backend.close()
    assert _texts(first) == _texts(second)
    assert all(len(cs) == 10 for cs in first)
    assert all(1 <= c.completion_tokens <= 16 for cs in first for c in cs)
    assert len({c.text for cs in first for c in cs}) > 10  # sampling, not one repeated answer


def test_vllm_engine_greedy_equals_the_built_in_model(tiny_checkpoint):
    """On a GPU node with vLLM installed (`pip install 'selfinstruct[vllm]'`): the same tiny HF
    checkpoint, prompts as the project's token ids, greedy fp32: vLLM and model/ agree."""
    pytest.importorskip("vllm")
    from generator.backends import VLLMBackendConfig

    requests = [GenerationRequest(prompt=f"[INST] Write function {i}. [/INST]", max_tokens=12) for i in range(4)]
    sampled = GenerationRequest(prompt="[INST] Problem [/INST]", n=4, temperature=0.8, top_p=0.95, max_tokens=12,
                                seed=5)
    vllm_backend = make_backend(VLLMBackendConfig(model=str(tiny_checkpoint), dtype="float32",
                                                  tokenizer=str(tiny_checkpoint / "tokenizer.model"),
                                                  gpu_memory_utilization=0.3, max_model_len=512))
    try:
        greedy = vllm_backend.generate(requests)
        first, second = vllm_backend.generate([sampled]), vllm_backend.generate([sampled])
    finally:
        vllm_backend.close()
    torch_backend = make_backend(TorchBackendConfig(checkpoint=str(tiny_checkpoint), device="cuda"))
    try:
        reference = torch_backend.generate(requests)
    finally:
        torch_backend.close()
    assert _texts(greedy) == _texts(reference)
    assert _texts(first) == _texts(second) and len(first[0]) == 4
    from model.checkpoint import load_tokenizer

    prompt_length = len(load_tokenizer(tiny_checkpoint).encode(sampled.prompt, bos=True))
    assert sum(c.prompt_tokens for c in first[0]) == prompt_length  # one BOS, shares add up
