"""LLM backends behind one small interface (base.py): OpenAI-compatible HTTP, vLLM, the built-in model.

    from generator.backends import make_backend, BackendConfig, GenerationRequest
    backend = make_backend(cfg)            # cfg: OpenAIBackendConfig | VLLMBackendConfig | TorchBackendConfig
    completions = backend.generate([GenerationRequest(prompt="[INST] ... [/INST]", n=10, temperature=0.8)])

`generator.scale.LLMPool(cfg)` has the same `generate`/`close` and spreads the work over Ray actors.
"""

from generator.backends.base import Backend, BackendError, Completion, FinishReason, GenerationRequest
from generator.backends.config import BackendConfig, OpenAIBackendConfig, TorchBackendConfig, VLLMBackendConfig
from generator.backends.factory import make_backend

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendError",
    "Completion",
    "FinishReason",
    "GenerationRequest",
    "OpenAIBackendConfig",
    "TorchBackendConfig",
    "VLLMBackendConfig",
    "make_backend",
]
