"""`make_backend(cfg)`: a validated backend configuration in, a live `Backend` out.

Implementations are imported lazily: choosing `openai` never imports torch or vLLM.
"""

from __future__ import annotations

from generator.backends.base import Backend
from generator.backends.config import BackendConfig, OpenAIBackendConfig, TorchBackendConfig, VLLMBackendConfig


def make_backend(cfg: BackendConfig) -> Backend:
    if isinstance(cfg, OpenAIBackendConfig):
        from generator.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg)
    if isinstance(cfg, VLLMBackendConfig):
        from generator.backends.vllm_backend import VLLMBackend

        return VLLMBackend(cfg)
    if isinstance(cfg, TorchBackendConfig):
        from generator.backends.torch_backend import TorchBackend

        return TorchBackend(cfg)
    raise TypeError(f"not a backend configuration: {cfg!r}")
