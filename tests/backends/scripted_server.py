"""The generator tests' scripted answers (tests/generator/scripted_backend.py), served over real HTTP.

The pipeline then talks to it as to any OpenAI-compatible server (`backend: {kind: openai, ...}`),
through the OpenAI backend, in Ray actors when Ray is enabled.
"""

from __future__ import annotations

from completion_server import CompletionServer, ServerState

from generator.backends.base import GenerationRequest
from tests.generator.scripted_backend import ScriptedBackend


def scripted_server(model: str = "scripted") -> CompletionServer:
    scripted = ScriptedBackend(model_name=model)

    def answer(prompt: str, index: int, seed: int | None, max_tokens: int) -> str:
        return scripted._answer(GenerationRequest(prompt=prompt, n=index + 1))[index]

    return CompletionServer(ServerState(model=model, text_fn=answer))


def openai_backend(server: CompletionServer, model: str = "scripted") -> dict:
    return {"kind": "openai", "base_url": server.base_url, "model": model, "concurrency": 4,
            "max_retries": 2, "backoff_s": 0.05, "timeout_s": 30}
