"""The one small interface every LLM backend implements (vLLM, OpenAI-compatible HTTP, built-in model).

A request carries everything that decides its output (prompt, sampling parameters, seed), so a
resumed run that rebuilds the same requests gets the same completions from a deterministic backend.
Token counts and latency come back with every completion: they are stored for cost accounting.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class GenerationRequest(BaseModel):
    prompt: str
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class Completion(BaseModel):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class BackendError(RuntimeError):
    """A backend failed a request for good (after its retries); the message is one clear line."""


@runtime_checkable
class Backend(Protocol):
    """`generate` returns, for each request in order, its `n` completions in sample order."""

    model_name: str

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]: ...

    def close(self) -> None: ...
