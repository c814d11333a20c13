"""Fixtures for tests against the real llama.cpp (llama-cpp-python): GGUF exports of tiny random models,
and llama-cpp-python's OpenAI-compatible server on loopback.

Without llama-cpp-python these tests skip; under scripts/test.sh (SELFINSTRUCT_REQUIRE_SERVICES=1, which
installs it with `scripts/setup.sh --llamacpp`) they fail, so CI cannot go green without the real thing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from llamacpp_server import LlamaCppServer

from model.args import ModelArgs
from model.checkpoint import save_hf, save_meta
from model.gguf_export import Dtype, export_gguf
from model.tokenizer_train import train_tokenizer_bytes
from model.transformer import Transformer


def missing_service(reason: str) -> None:
    if os.environ.get("SELFINSTRUCT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def llama_cpp():
    """The llama_cpp module (tests marked `llamacpp`)."""
    try:
        import llama_cpp
    except ImportError as exc:
        missing_service(f"llama-cpp-python is not installed ({exc}); run scripts/setup.sh --llamacpp")
    return llama_cpp


@dataclass(frozen=True)
class GgufModel:
    checkpoint: Path  # the source checkpoint directory (with tokenizer.model)
    gguf: Path
    args: ModelArgs


@pytest.fixture(scope="session")
def tokenizer_bytes() -> bytes:
    return train_tokenizer_bytes()


@pytest.fixture(scope="session")
def gguf_model(tmp_path_factory: pytest.TempPathFactory, tokenizer_bytes: bytes
               ) -> Callable[..., GgufModel]:
    """`make(preset, fmt="hf", dtype="f32") -> GgufModel`: a random checkpoint of a tiny preset and its GGUF,
    made once per session. Weights are scaled up (as tests/model's parity fixtures do) so that logits differ
    a lot between tokens: a parity check on near-uniform logits would prove little."""
    made: dict[tuple[str, str, str], GgufModel] = {}

    def make(preset: str, fmt: str = "hf", dtype: Dtype = "f32") -> GgufModel:
        key = (preset, fmt, dtype)
        if key not in made:
            args = ModelArgs.from_preset(preset)
            root = tmp_path_factory.mktemp(f"{preset}-{fmt}")
            (root / "tok.model").write_bytes(tokenizer_bytes)
            torch.manual_seed(0)
            model = Transformer(args).init_weights(seed=0)
            with torch.no_grad():
                for param in model.parameters():
                    param.normal_(0.0, 0.08) if param.ndim == 2 else param.uniform_(0.5, 1.5)
            save = save_hf if fmt == "hf" else save_meta
            checkpoint = save(model, root / "checkpoint", tokenizer_path=root / "tok.model")
            made[key] = GgufModel(checkpoint, export_gguf(checkpoint, root / f"{preset}-{dtype}.gguf", dtype=dtype),
                                  args)
        return made[key]

    return make


@pytest.fixture(scope="session")
def llamacpp_server(llama_cpp, gguf_model: Callable[..., GgufModel]) -> Iterator[LlamaCppServer]:
    """llama-cpp-python's server for the tiny preset's f32 GGUF, model name "tiny", on a free loopback port:
    `server.base_url` is http://127.0.0.1:PORT/v1. One per session; stopped (terminate, then kill) at the end."""
    with LlamaCppServer(gguf_model("tiny").gguf, model="tiny", n_ctx=512) as server:
        yield server
