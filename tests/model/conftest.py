"""Fixtures for model/ tests: a tokenizer trained in-process and tiny random checkpoints, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.args import ModelArgs
from model.tokenizer import Tokenizer
from model.tokenizer_train import train_tokenizer_bytes


@pytest.fixture(scope="session")
def tokenizer_bytes() -> bytes:
    return train_tokenizer_bytes()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_bytes: bytes) -> Tokenizer:
    return Tokenizer(model_proto=tokenizer_bytes)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HF-format checkpoint (GQA) with its tokenizer, written by init_checkpoint."""
    from model.init import init_checkpoint

    return init_checkpoint("tiny", tmp_path_factory.mktemp("tiny"), seed=1)


def hf_config_for(args: ModelArgs):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads, intermediate_size=args.hidden_dim, vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta, max_position_embeddings=args.max_seq_len,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa",
    )


@pytest.fixture(scope="session")
def save_random_hf_model():
    """`save(args, out_dir, seed=0) -> Path`: a random LlamaForCausalLM written by transformers itself (save_pretrained), weights scaled up so
    that logits vary a lot between tokens (a parity check on near-uniform logits would prove little)."""
    from transformers import LlamaForCausalLM

    def save(args: ModelArgs, out: Path, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(hf_config_for(args))
        with torch.no_grad():
            for param in hf.parameters():
                if param.ndim == 2:
                    param.normal_(0.0, 0.08)
                else:
                    param.uniform_(0.5, 1.5)
        hf.save_pretrained(out)
        return out

    return save
