"""vLLM's in-process engine (`vllm.LLM` + `SamplingParams`), one engine per GPU or tensor-parallel group.

vLLM is an optional extra for GPU nodes (`pip install 'selfinstruct[vllm]'`); it is imported only
when an engine is built, and its absence is one clear line. Inside `generator.scale.LLMPool` each
engine lives in a Ray actor that holds `tensor_parallel_size` GPUs; with TP > 1 the engine's
workers are subprocesses on those GPUs (`distributed_executor_backend="mp"`), which is what vLLM
documents for an engine inside a Ray actor.

Prompts. The paper's prompts start with "[INST]"; an HF Llama tokenizer adds BOS itself, so a
prompt text that already carries a literal "<s>" (as the chat-format helpers write it) would get
two. `prompt_input` strips one leading "<s>" and, when `tokenizer` (the project's SentencePiece
model) is configured, passes token ids built with `Tokenizer.encode(text, bos=True)`: exactly one
BOS, the same ids the fine-tuning data uses.

Token accounting, as in the OpenAI backend: the prompt is processed once for all `n` samples, so its
length is split evenly over them; each sample's completion count is exact (its token ids).

The functions `sampling_kwargs`, `prompt_input` and `completions_from_output` are the whole mapping
between this project's records and vLLM's; they take plain data so tests check them without vLLM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from generator.backends.base import BackendError, Completion, FinishReason, GenerationRequest
from generator.backends.config import VLLMBackendConfig
from generator.backends.usage import split_evenly
from selfinstruct.errors import UserError

BOS_TEXT = "<s>"


class PromptTokenizer(Protocol):
    def encode(self, text: str, bos: bool = ..., eos: bool = ...) -> list[int]: ...


class _CompletionOutput(Protocol):  # vllm.outputs.CompletionOutput, the fields read here
    index: int
    text: str
    token_ids: Sequence[int]
    finish_reason: str | None


class _RequestOutput(Protocol):  # vllm.outputs.RequestOutput, the fields read here
    prompt_token_ids: Sequence[int] | None
    outputs: Sequence[_CompletionOutput]


def sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one request (vLLM gives sample i seed + i)."""
    kwargs: dict[str, Any] = {
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop) or None,
        "seed": request.seed,
    }
    return kwargs


def prompt_input(request: GenerationRequest, tokenizer: PromptTokenizer | None) -> dict[str, Any]:
    """A vLLM prompt (`TokensPrompt` / `TextPrompt` as a dict) that carries exactly one BOS."""
    text = request.prompt[len(BOS_TEXT):] if request.prompt.startswith(BOS_TEXT) else request.prompt
    if tokenizer is None:
        return {"prompt": text}  # vLLM's own (HF) tokenizer adds the BOS
    return {"prompt_token_ids": list(tokenizer.encode(text, bos=True))}


def _finish_reason(raw: str | None) -> FinishReason:
    if raw == "length":
        return "length"
    if raw == "stop":
        return "stop"
    raise BackendError(f"vLLM finished a sample with reason {raw!r} (aborted or unfinished)")


def completions_from_output(output: _RequestOutput, n: int, latency_s: float) -> list[Completion]:
    """One request's `n` samples in sample order, with exact completion token counts."""
    samples = sorted(output.outputs, key=lambda o: o.index)
    if len(samples) != n:
        raise BackendError(f"vLLM returned {len(samples)} samples for n={n}")
    prompt_shares = split_evenly(len(output.prompt_token_ids or ()), n)
    return [
        Completion(
            text=sample.text,
            finish_reason=_finish_reason(sample.finish_reason),
            prompt_tokens=share,
            completion_tokens=len(sample.token_ids),
            latency_s=latency_s,
        )
        for sample, share in zip(samples, prompt_shares, strict=True)
    ]


def engine_kwargs(cfg: VLLMBackendConfig) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for one engine."""
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "dtype": cfg.dtype,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "seed": cfg.seed,
    }
    if cfg.max_model_len is not None:
        kwargs["max_model_len"] = cfg.max_model_len
    if cfg.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"  # TP workers on this actor's GPUs
    return kwargs


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise UserError(
            "the vllm backend needs vLLM, which runs on CUDA GPU nodes only: "
            "`pip install 'selfinstruct[vllm]'` there, or use backend kind: openai (any server) or torch"
        ) from None
    return vllm


class VLLMBackend:
    """`Backend` over one `vllm.LLM` engine; the whole batch goes to vLLM at once (it schedules it)."""

    def __init__(self, cfg: VLLMBackendConfig) -> None:
        vllm = _import_vllm()
        self.cfg = cfg
        self.model_name = cfg.model
        self._tokenizer: PromptTokenizer | None = None
        if cfg.tokenizer is not None:
            from model.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(cfg.tokenizer)
        self._sampling_params = vllm.SamplingParams
        self._llm = vllm.LLM(**engine_kwargs(cfg))
        if self._tokenizer is not None:
            self._check_tokenizer_matches()

    def _check_tokenizer_matches(self) -> None:
        """The project's tokenizer must give the ids the engine's own tokenizer gives, or prompts are garbage."""
        probe = "[INST] Write a function that returns 42. [/INST]"
        ours = list(self._tokenizer.encode(probe, bos=True))  # type: ignore[union-attr]
        theirs = list(self._llm.get_tokenizer().encode(probe))
        if ours != theirs:
            raise UserError(
                f"tokenizer {self.cfg.tokenizer} does not match the model's ({self.cfg.model}): "
                f"ids {ours[:8]}... vs {theirs[:8]}...; point `tokenizer` at the model's tokenizer.model or leave it unset"
            )

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        prompts = [prompt_input(r, self._tokenizer) for r in requests]
        params = [self._sampling_params(**sampling_kwargs(r)) for r in requests]
        started = time.perf_counter()
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        return [
            completions_from_output(out, r.n, _request_latency(out, elapsed)) for out, r in zip(outputs, requests, strict=True)
        ]

    def close(self) -> None:
        self.__dict__.pop("_llm", None)  # frees the engine (and its GPU memory) with the last reference


def _request_latency(output: object, batch_elapsed_s: float) -> float:
    """The request's own time in the engine when vLLM reports it, else the whole batch's wall time."""
    metrics = getattr(output, "metrics", None)
    arrival = getattr(metrics, "arrival_time", None)
    finished = getattr(metrics, "finished_time", None) or getattr(metrics, "last_token_time", None)
    if isinstance(arrival, (int, float)) and isinstance(finished, (int, float)) and finished >= arrival:
        return float(finished - arrival)
    return batch_elapsed_s
