"""Llama 2 / Code Llama transformer in plain PyTorch, with Meta's parameter names.

Pre-norm blocks (RMSNorm), rotary embeddings in Meta's adjacent-pair layout, grouped-query attention
through `scaled_dot_product_attention`, SwiGLU feed-forward, untied output head, no biases. The linear
layers are `model.linear.Linear`: nn.Linear, with fp32 products on CPU through oneDNN (2x MKL here).

Two entry points:
- `model(tokens, positions=None, doc_ids=None, shared=None)`: the full-sequence forward used for training and scoring.
  `doc_ids` (sequence packing) keeps attention inside each document; the caller restarts `positions`
  per document.
- `model.forward_cached(...)`: prefill and decode against a static KV cache preallocated by
  `setup_cache(batch, max_len)` (gpt-fast style: fixed shapes, no reallocation while decoding).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.args import ModelArgs
from model.linear import Linear

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as Meta's and HF's references do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


def rotary_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of position * frequency, fp32, shape [b, s, 1, head_dim // 2].

    Computed from the positions on every call (a few thousand multiplies), so there is no length limit
    and no buffer to rebuild after meta-device init or sharding.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [b, s, h, head_dim] by the angles; fp32 math, as Meta's."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class KVCache(nn.Module):
    """Keys and values for `max_batch` rows and `max_len` slots, preallocated once."""

    def __init__(self, max_batch: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None):
        super().__init__()
        shape = (max_batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int | Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [b, kv_heads, s, head_dim] at slots start..start+s.

        With an int `start`, return the filled prefix (the CPU-friendly path: attend to what exists).
        With a tensor of slots, write with index_copy_ and return the whole cache: fixed shapes, so one
        compiled graph (and one CUDA graph) serves every decode step.
        """
        b = k.shape[0]
        if isinstance(start, Tensor):
            self.k[:b].index_copy_(2, start, k)
            self.v[:b].index_copy_(2, start, v)
            return self.k[:b], self.v[:b]
        end = start + k.shape[2]
        self.k[:b, :, start:end] = k
        self.v[:b, :, start:end] = v
        return self.k[:b, :, :end], self.v[:b, :, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = Linear(self.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, is_causal: bool,
                cache_start: int | Tensor | None = None) -> Tensor:
        b, s, _ = x.shape
        q = apply_rotary(self.wq(x).view(b, s, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rotary(self.wk(x).view(b, s, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache_start is not None:
            assert self.cache is not None, "call setup_cache() before forward_cached()"
            k, v = self.cache.update(cache_start, k, v)
        out = _sdpa(q, k, v, mask, is_causal)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    if k.shape[1] == q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    if _SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
    repeats = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = Linear(args.dim, args.hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, is_causal: bool,
                cache_start: int | Tensor | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, is_causal, cache_start)
        return h + self.feed_forward(self.ffn_norm(h))


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, activation_checkpointing: bool = False):
        super().__init__()
        self.args = args
        self.activation_checkpointing = activation_checkpointing
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size, bias=False)

    # -- construction helpers -------------------------------------------------------------------

    def init_weights(self, seed: int | None = None, std: float = 0.02) -> Transformer:
        """Random weights: N(0, std) matrices (residual outputs scaled by 1/sqrt(2 n_layers)), unit norms."""
        generator = None
        if seed is not None:
            device = next(self.parameters()).device
            generator = torch.Generator(device=device).manual_seed(seed)
        residual_std = std / (2 * self.args.n_layers) ** 0.5
        with torch.no_grad():
            for name, param in self.named_parameters():
                if param.ndim == 1:
                    param.fill_(1.0)
                else:
                    scale = residual_std if name.endswith(("wo.weight", "w2.weight")) else std
                    param.normal_(0.0, scale, generator=generator)
        return self

    def pack_for_inference(self, enabled: bool = True) -> Transformer:
        """Hold each CPU fp32 weight in oneDNN's blocked layout too (`model.linear`), or drop those copies.

        Decode reads every weight once per step, and the blocked layout streams faster (measured on the 58M
        model, all matrices once, 2 threads: 6.2 -> 5.1 ms at batch 1, 7.9 -> 5.2 ms at batch 8). It costs a
        second copy of the weights, so it is skipped when they exceed a quarter of the machine's memory.
        `generate` turns it on; `train()` drops the copies. Values, names and saving are unaffected, and a
        copy is never used once its weight has changed.
        """
        linears = [m for m in self.modules() if isinstance(m, Linear)]
        if enabled and sum(m.weight.nbytes for m in linears) > _physical_memory_bytes() // 4:
            enabled = False
        for module in linears:
            if enabled:
                module.pack_for_inference()
            else:
                module.drop_pack()
        return self

    def train(self, mode: bool = True) -> Transformer:
        if mode:
            self.pack_for_inference(False)
        return super().train(mode)

    def enable_activation_checkpointing(self, enabled: bool = True) -> Transformer:
        """Recompute each block's activations in backward (memory for compute)."""
        self.activation_checkpointing = enabled
        return self

    # -- full-sequence forward ------------------------------------------------------------------

    def forward(self, tokens: Tensor, positions: Tensor | None = None, doc_ids: Tensor | None = None,
                shared: Tensor | None = None) -> Tensor:
        """Logits [b, s, vocab] for tokens [b, s], causal; with `doc_ids`, causal within each document;
        `shared` [b, s, 2] adds, per token, a [start, end) span of the row it also attends to (a prompt
        prefix written once for several packed documents, finetune/packing.py)."""
        b, s = tokens.shape
        if positions is None:
            positions = torch.arange(s, device=tokens.device).expand(b, s)
        cos, sin = rotary_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        mask = None
        if doc_ids is not None:
            causal = torch.ones(s, s, dtype=torch.bool, device=tokens.device).tril()
            mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
            if shared is not None:
                cols = torch.arange(s, device=tokens.device)
                mask = mask | ((cols >= shared[..., :1]) & (cols < shared[..., 1:]))
            mask = mask[:, None]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, cos, sin, mask, mask is None, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, mask is None)
        return self.output(self.norm(h))

    # -- cached prefill / decode ----------------------------------------------------------------

    def setup_cache(self, max_batch: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """Preallocate a static KV cache of `max_len` slots for `max_batch` rows in every layer.

        A cache of the same shape is kept rather than reallocated (stale slots are always masked out), so
        a compiled decode step keeps seeing the same buffers and its CUDA graph stays valid.
        """
        weight = self.output.weight
        dtype = dtype or weight.dtype
        shape = (max_batch, self.args.kv_heads, max_len, self.args.head_dim)
        for layer in self.layers:
            cache = layer.attention.cache
            if cache is not None and cache.k.shape == shape and cache.k.dtype == dtype and cache.k.device == weight.device:
                continue
            layer.attention.cache = KVCache(max_batch, self.args.kv_heads, max_len, self.args.head_dim, dtype, weight.device)

    def drop_cache(self) -> None:
        for layer in self.layers:
            layer.attention.cache = None

    @property
    def cache_len(self) -> int:
        cache = self.layers[0].attention.cache
        return 0 if cache is None else cache.k.shape[2]

    def forward_cached(self, tokens: Tensor, positions: Tensor, start: int, key_valid: Tensor | None = None,
                       last_only: bool = False) -> Tensor:
        """Logits for tokens [b, s] written to cache slots start..start+s.

        `positions` [b, s] are the rotary positions (per row, so left-padded rows can start at 0).
        `key_valid` [b, cache_len] marks slots holding real tokens (False for padding); None means all.
        Slot j is visible to the query in slot i when j <= i and slot j is valid (a pad query sees itself,
        so no row is fully masked). `last_only` returns logits for the last column only ([b, 1, vocab]).
        """
        b, s = tokens.shape
        end = start + s
        if end > self.cache_len:
            raise ValueError(f"cache holds {self.cache_len} slots, asked to fill up to {end}")
        cos, sin = rotary_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        mask, is_causal = None, False
        if key_valid is not None:
            q_slots = torch.arange(start, end, device=tokens.device)[:, None]
            k_slots = torch.arange(end, device=tokens.device)[None, :]
            visible = (k_slots <= q_slots) & (key_valid[:b, None, :end] | (k_slots == q_slots))
            mask = visible[:, None]
        elif start == 0:
            is_causal = s > 1
        elif s > 1:
            mask = torch.arange(end, device=tokens.device)[None, :] <= torch.arange(start, end, device=tokens.device)[:, None]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, is_causal, start)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h))

    def decode_step(self, tokens: Tensor, positions: Tensor, slots: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """Logits for tokens [b, s] written to cache `slots` (a LongTensor [s]), attending over the whole cache.

        Same result as `forward_cached`, but every shape is fixed and the slot is data, not a Python int:
        `torch.compile(model.decode_step, mode="reduce-overhead")` captures one CUDA graph for all steps
        (gpt-fast's recipe). Slots past the last written one are masked out.
        """
        cache_len = self.cache_len
        k_slots = torch.arange(cache_len, device=tokens.device)[None, :]
        visible = k_slots <= slots[:, None]  # [s, cache_len]
        if key_valid is not None:
            visible = visible[None] & (key_valid[:tokens.shape[0], None, :] | (k_slots == slots[:, None]))
        else:
            visible = visible[None].expand(tokens.shape[0], -1, -1)
        cos, sin = rotary_cos_sin(positions, self.args.head_dim, self.args.rope_theta)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin, visible[:, None], False, slots)
        return self.output(self.norm(h))
