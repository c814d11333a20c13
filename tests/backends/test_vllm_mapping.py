"""The vLLM backend's mapping between this project's records and vLLM's, on plain data.

vLLM cannot be installed on CPU machines; nothing here pretends it ran. The functions under test are
the ones `VLLMBackend.generate` calls; the output records below carry exactly the fields of
`vllm.outputs.RequestOutput` / `CompletionOutput` that the mapping reads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import pytest

from generator.backends import BackendError, GenerationRequest, VLLMBackendConfig, make_backend
from generator.backends.vllm_backend import (
    completions_from_output,
    engine_kwargs,
    prompt_input,
    sampling_kwargs,
)
from selfinstruct.errors import UserError


@dataclass
class CompletionOutputData:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None


@dataclass
class RequestOutputData:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutputData] = field(default_factory=list)


class WordTokenizer:
    """A real (if simple) tokenizer with the project's `encode(text, bos=)` signature: one id per word."""

    bos_id = 1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [100 + len(w) for w in text.split()]
        return ([self.bos_id] if bos else []) + ids + ([2] if eos else [])


def test_sampling_kwargs_carry_every_request_field():
    request = GenerationRequest(prompt="x", n=10, temperature=0.8, top_p=0.95, max_tokens=256,
                                stop=["[/PYTHON]"], seed=1234)
    assert sampling_kwargs(request) == {"n": 10, "temperature": 0.8, "top_p": 0.95, "max_tokens": 256,
                                        "stop": ["[/PYTHON]"], "seed": 1234}
    assert sampling_kwargs(GenerationRequest(prompt="x"))["stop"] is None


def test_prompts_carry_exactly_one_bos():
    tok = WordTokenizer()
    paper_prompt = GenerationRequest(prompt="[INST] Write 50 questions [/INST]")
    chat_prompt = GenerationRequest(prompt="<s>[INST] Write 50 questions [/INST]")
    expected = [1, *tok.encode("[INST] Write 50 questions [/INST]")]
    assert prompt_input(paper_prompt, tok) == {"prompt_token_ids": expected}
    assert prompt_input(chat_prompt, tok) == {"prompt_token_ids": expected}
    # without the project's tokenizer, vLLM's own adds BOS: the text must not carry one
    assert prompt_input(chat_prompt, None) == {"prompt": "[INST] Write 50 questions [/INST]"}


def test_outputs_map_to_completions_in_sample_order_with_exact_counts():
    out = RequestOutputData(
        prompt_token_ids=list(range(7)),
        outputs=[
            CompletionOutputData(index=1, text="def f():\n    return 2", token_ids=[5, 6, 7, 8], finish_reason="length"),
            CompletionOutputData(index=0, text="def f(): return 1", token_ids=[5, 6], finish_reason="stop",
                                 stop_reason="[/PYTHON]"),
        ],
    )
    first, second = completions_from_output(out, n=2, latency_s=0.25)
    assert (first.text, first.finish_reason, first.completion_tokens) == ("def f(): return 1", "stop", 2)
    assert (second.finish_reason, second.completion_tokens) == ("length", 4)
    assert first.prompt_tokens + second.prompt_tokens == 7
    assert first.latency_s == second.latency_s == 0.25


def test_aborted_or_missing_samples_are_backend_errors():
    aborted = RequestOutputData([1, 2], [CompletionOutputData(0, "", [], "abort")])
    with pytest.raises(BackendError, match="'abort'"):
        completions_from_output(aborted, n=1, latency_s=0.0)
    short = RequestOutputData([1, 2], [CompletionOutputData(0, "a", [3], "stop")])
    with pytest.raises(BackendError, match="1 samples for n=3"):
        completions_from_output(short, n=3, latency_s=0.0)


def test_engine_kwargs_use_multiprocessing_workers_for_tensor_parallel_groups():
    single = engine_kwargs(VLLMBackendConfig(model="/models/codellama-7b-instruct"))
    assert single == {"model": "/models/codellama-7b-instruct", "tensor_parallel_size": 1, "dtype": "bfloat16",
                      "gpu_memory_utilization": 0.9, "seed": 0}
    tp = engine_kwargs(VLLMBackendConfig(model="/models/llama-2-70b-chat", tensor_parallel_size=4, max_model_len=4096))
    assert tp["distributed_executor_backend"] == "mp" and tp["max_model_len"] == 4096


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_is_one_clear_user_error():
    with pytest.raises(UserError, match=r"needs vLLM, which runs on CUDA GPU nodes only"):
        make_backend(VLLMBackendConfig(model="/models/codellama-7b-instruct"))
