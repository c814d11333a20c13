"""`Linear`: nn.Linear whose fp32 products on CPU run through oneDNN instead of MKL.

Why: torch's x86 wheels compute fp32 matrix products with MKL. On this project's machines (AMD EPYC,
AVX-512) MKL's sgemm runs at about half the speed of oneDNN, the other GEMM library bundled in the same
wheel (measured with 2 threads on the 58M "small" model's shapes, 1,020 tokens: forward 234 -> 118 ms for
the 32000 x 512 output head, 8.2 -> 3.9 ms for w1; input gradients the same 2x; weight gradients 1.1-1.9x;
decode at batch 8, all matrices once, 15.7 -> 5.2 ms with prepacked weights). The same parameters, names
and state dict as nn.Linear: checkpoints, FSDP and optimizers see no difference.

The oneDNN path is taken for fp32 CPU tensors outside autocast and `torch.compile` (which picks its own
kernels) when no bias is set; everything else is plain `F.linear`. `SELFINSTRUCT_CPU_GEMM=mkl` turns it
off (for a CPU where MKL is the faster one). Results differ from MKL's by summation order only (at most a
few 1e-6 relative, measured), the difference between any two GEMM libraries.

For inference, `pack_for_inference()` keeps a second copy of the weight in oneDNN's blocked layout
(1.2x at batch 1, 1.5x at batch 8 over the unpacked call); a pack is used only while the weight is
unchanged (same storage, same version counter), so a training step or `load_state_dict` can never be
served a stale copy.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ENABLED = os.environ.get("SELFINSTRUCT_CPU_GEMM", "onednn").lower() != "mkl"
_PACK_BATCH_HINT = 8  # the batch oneDNN tunes the blocked layout for: as fast as 1 at batch 1, faster at 8


def onednn_available() -> bool:
    """True when this torch build has oneDNN and its fused linear op (the x86 CPU wheels do)."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


_AVAILABLE = onednn_available()


def set_cpu_gemm(library: str) -> None:
    """Route CPU fp32 products through "onednn" (the default) or "mkl" (plain `F.linear`), process-wide."""
    global _ENABLED
    if library not in ("onednn", "mkl"):
        raise ValueError(f"unknown CPU GEMM library {library!r}: use 'onednn' or 'mkl'")
    _ENABLED = library == "onednn"


def _matmul_t(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T through oneDNN, for 2-D fp32 CPU tensors of any strides (b may be a packed weight)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T with both gradients as oneDNN products (autograd would route them through MKL)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return _matmul_t(x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(grad2, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            # oneDNN is fastest with the larger dimension as the output columns (measured: the output head's
            # gradient 103 ms as (x^T g)^T vs 180 ms as g^T x; w2's the other way round, 3.7 vs 4.9 ms).
            if weight.shape[0] >= weight.shape[1]:
                grad_w = _matmul_t(x2.t(), grad2.t()).t().contiguous()
            else:
                grad_w = _matmul_t(grad2.t(), x2.t())
        return grad_x, grad_w


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) with oneDNN fp32 products on CPU; see the module docstring."""

    _pack: tuple[Tensor, int, int] | None = None  # (packed weight, data_ptr, version) it was made from

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if not self._onednn_applies(x, weight):
            return F.linear(x, weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _OneDNNLinearFunction.apply(x, weight)
        packed = self._valid_pack()
        x2 = x.reshape(-1, x.shape[-1])
        return _matmul_t(x2, weight if packed is None else packed).view(*x.shape[:-1], self.out_features)

    def _onednn_applies(self, x: Tensor, weight: Tensor) -> bool:
        return (self._weight_fits_onednn(weight) and x.device.type == "cpu" and x.dtype == torch.float32
                and x.numel() > 0 and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())

    def _weight_fits_onednn(self, weight: Tensor) -> bool:
        """oneDNN is on and this layer's weight is a plain fp32 CPU tensor, with no bias beside it."""
        return (_ENABLED and _AVAILABLE and self.bias is None and weight.device.type == "cpu"
                and weight.dtype == torch.float32 and type(weight) in (nn.Parameter, Tensor))

    # -- inference packs ------------------------------------------------------------------------

    def pack_for_inference(self) -> bool:
        """Keep the weight in oneDNN's blocked layout for no-grad calls (a copy); True when one is held."""
        weight = self.weight
        if not self._weight_fits_onednn(weight):
            return False
        if self._valid_pack() is None:
            try:
                version = weight._version
            except RuntimeError:  # an inference tensor has no version counter: no way to tell it changed
                return False
            with torch.inference_mode(False), torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_BATCH_HINT)
            self._pack = (packed, weight.data_ptr(), version)
        return True

    def drop_pack(self) -> None:
        self._pack = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave the pack behind (an opaque oneDNN tensor has no storage to copy)."""
        state = super().__getstate__()
        state.pop("_pack", None)
        return state

    def _valid_pack(self) -> Tensor | None:
        if self._pack is None:
            return None
        packed, data_ptr, version = self._pack
        weight = self.weight
        if weight.data_ptr() != data_ptr or weight._version != version:
            self._pack = None  # the weight changed (an optimizer step, load_state_dict): never serve the old one
            return None
        return packed
