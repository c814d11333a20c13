"""The project's own Llama implementation (model/) as a backend, on CPU or GPU, batched.

`model.generate` decodes many rows at once with a static KV cache and gives sample i of a prompt the
seed `prompt seed + i`, so a request's samples do not depend on what else shares its batch. One call
takes one set of sampling parameters and a seed per prompt, so requests are grouped by their sampling
parameters only (the pipeline gives every request its own seed: those still share one batch) and each
group is decoded `batch_size` rows at a time. A group's wall time is the latency of each of its requests.

Prompts are encoded with BOS by `model.generate`; a literal leading "<s>" in the prompt text (the
chat helpers write one) is dropped first so there is exactly one.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from generator.backends.base import Completion, GenerationRequest
from generator.backends.config import TorchBackendConfig
from generator.backends.usage import split_evenly
from selfinstruct.errors import UserError

BOS_TEXT = "<s>"


def sampling_group(request: GenerationRequest) -> tuple[Any, ...]:
    """Requests with equal keys can share one `model.generate` call."""
    seeded = request.seed is not None and request.temperature > 0  # greedy decoding ignores the seed
    return (request.n, request.temperature, request.top_p, request.max_tokens, tuple(request.stop), seeded)


def _torch_dtype(name: str) -> Any:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown torch dtype {name!r}; use float32, bfloat16 or float16")
    return dtype


class TorchBackend:
    """`Backend` over `model.load(checkpoint)` and `model.generate`; thread-safe (one call at a time)."""

    def __init__(self, cfg: TorchBackendConfig) -> None:
        import torch

        # explicit submodules: `model.generate` the attribute turns into the submodule once it is imported
        from model.checkpoint import load, load_tokenizer
        from model.generate import generate

        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"the torch backend is configured for device {cfg.device!r} but CUDA is not available here")
        self.cfg = cfg
        self.model_name = cfg.checkpoint
        self._generate = generate
        self._model = load(cfg.checkpoint, device=cfg.device, dtype=_torch_dtype(cfg.dtype))
        self._tokenizer = load_tokenizer(cfg.checkpoint)
        self._lock = threading.Lock()

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[sampling_group(request)].append(index)
        results: list[list[Completion] | None] = [None] * len(requests)
        with self._lock:
            for indices in groups.values():
                first = requests[indices[0]]
                prompts = [_without_bos_text(requests[i].prompt) for i in indices]
                started = time.perf_counter()
                outputs = self._generate(
                    self._model,
                    self._tokenizer,
                    prompts,
                    n=first.n,
                    temperature=first.temperature,
                    top_p=first.top_p,
                    max_new_tokens=first.max_tokens,
                    stop=first.stop,
                    seed=[requests[i].seed for i in indices] if sampling_group(first)[-1] else None,
                    max_batch_size=self.cfg.batch_size,
                )
                latency = time.perf_counter() - started
                for i, samples in zip(indices, outputs, strict=True):
                    shares = split_evenly(samples[0].prompt_tokens, len(samples))
                    results[i] = [
                        Completion(
                            text=s.text,
                            finish_reason=s.finish_reason,
                            prompt_tokens=share,
                            completion_tokens=s.completion_tokens,
                            latency_s=latency,
                        )
                        for s, share in zip(samples, shares, strict=True)
                    ]
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.__dict__.pop("_model", None)


def _without_bos_text(prompt: str) -> str:
    return prompt[len(BOS_TEXT):] if prompt.startswith(BOS_TEXT) else prompt
