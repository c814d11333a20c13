"""Which LLM backend a stage uses, as configuration: a pydantic union discriminated on `kind`.

A stage's YAML says `backend: {kind: openai | vllm | torch, ...}`; `make_backend` (factory.py) turns
the validated record into a live backend, and `generator.scale.LLMPool` does the same inside Ray
actors. The records are plain data so they cross process and node boundaries unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class _BackendConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class OpenAIBackendConfig(_BackendConfigBase):
    """Any server that speaks OpenAI's `POST /completions` or `/chat/completions` (vLLM, llama.cpp, TGI, ...)."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="up to and including the API prefix, e.g. http://127.0.0.1:8000/v1")
    model: str
    api: Literal["completions", "chat"] = Field(
        default="completions",
        description="completions: the raw [INST] prompt as `prompt`; chat: the same prompt cut into `messages` "
        "(generator.prompts.chat_messages), for servers or models that only offer chat",
    )
    system_prompt: str | None = Field(
        default=None, description="chat only: a system message, put before a <<SYS>> block the prompt carries"
    )
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY", description="environment variable holding the key; unset or empty sends none"
    )
    concurrency: PositiveInt = Field(default=8, description="requests in flight at once (per backend instance)")
    timeout_s: float = Field(default=120.0, gt=0, description="per HTTP request")
    max_retries: int = Field(default=5, ge=0, description="retries after the first try, on 429/5xx/network errors")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles each retry, with jitter")
    max_backoff_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> OpenAIBackendConfig:
        """A raw completions prompt has no place for it: refuse rather than drop it silently."""
        if self.system_prompt is not None and self.api != "chat":
            raise ValueError("system_prompt is sent only with `api: chat`")
        return self


class VLLMBackendConfig(_BackendConfigBase):
    """vLLM's in-process engine (`vllm.LLM`), one engine per GPU or tensor-parallel group."""

    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="a Hugging Face model directory (or hub name on a node that can reach it)")
    tensor_parallel_size: PositiveInt = 1
    replicas: PositiveInt | None = Field(default=None, description="engines in the pool; default: GPUs free when the pool starts // tensor_parallel_size")
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: PositiveInt | None = None
    tokenizer: str | None = Field(
        default=None,
        description="the project's SentencePiece model; when set, prompts go to vLLM as token ids built with it",
    )
    seed: int = Field(default=0, description="engine seed; each request's own seed still decides its samples")


class TorchBackendConfig(_BackendConfigBase):
    """The project's own Llama implementation (model/), on CPU or GPU, batched."""

    kind: Literal["torch"] = "torch"
    checkpoint: str = Field(description="a checkpoint directory written by model/ (e.g. `selfinstruct model init`)")
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: PositiveInt = 8
    replicas: PositiveInt = 1


BackendConfig = Annotated[
    OpenAIBackendConfig | VLLMBackendConfig | TorchBackendConfig, Field(discriminator="kind")
]
