"""model.linear.Linear: oneDNN fp32 products on CPU equal F.linear's (values and both gradients), packs
are never stale, and everything oneDNN does not cover falls back to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import linear as linear_module
from model.linear import Linear, onednn_available

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")]


def _layer(out_features: int, in_features: int, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(in_features, out_features, bias=False)


@pytest.mark.parametrize(("out_features", "in_features"), [(96, 32), (32, 96), (64, 64), (1000, 48)])
@pytest.mark.parametrize("leading", [(7,), (3, 5), (2, 3, 4)])
def test_forward_and_gradients_equal_f_linear(out_features: int, in_features: int, leading: tuple[int, ...]) -> None:
    layer = _layer(out_features, in_features)
    x = torch.randn(*leading, in_features, requires_grad=True)
    grad_out = torch.randn(*leading, out_features)
    y = layer(x)
    assert y.grad_fn is not None and "OneDNN" in type(y.grad_fn).__name__  # the oneDNN path really ran
    y.backward(grad_out)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    y_ref = F.linear(x_ref, w_ref)
    y_ref.backward(grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad.is_contiguous() and layer.weight.grad.shape == layer.weight.shape


def test_non_contiguous_input_and_frozen_weight() -> None:
    layer = _layer(40, 24)
    layer.weight.requires_grad_(False)
    x = torch.randn(24, 9).t().requires_grad_(True)  # [9, 24], column-major
    layer(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(x_ref, layer.weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None


def test_pack_is_used_while_valid_and_never_once_the_weight_changes() -> None:
    layer = _layer(64, 32)
    x = torch.randn(5, 32)
    assert layer.pack_for_inference()
    packed = layer._pack[0]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    assert layer._pack is not None and layer._pack[0] is packed
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)  # an in-place update bumps the version counter
    layer(x).sum().backward()
    optimizer.step()
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    assert layer._pack is None  # dropped, not served
    layer.pack_for_inference()
    layer.load_state_dict({"weight": torch.zeros(64, 32)})
    with torch.no_grad():
        assert torch.count_nonzero(layer(x)) == 0
    layer.pack_for_inference()
    layer.weight.data = torch.ones(64, 32)  # a new storage
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x.sum(-1, keepdim=True).expand(5, 64))


def test_what_onednn_does_not_cover_falls_back_to_f_linear() -> None:
    layer = _layer(16, 8)
    x = torch.randn(3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert layer.to(torch.bfloat16)(x.detach().bfloat16()).dtype == torch.bfloat16
    assert not layer.pack_for_inference()  # bf16 weights: F.linear already uses oneDNN for them
    with_bias = Linear(8, 16, bias=True)
    torch.testing.assert_close(with_bias(x), F.linear(x, with_bias.weight, with_bias.bias))
    assert "OneDNN" not in type(with_bias(x).grad_fn).__name__


def test_mkl_switch_routes_through_f_linear() -> None:
    layer = _layer(16, 8)
    x = torch.randn(3, 8, requires_grad=True)
    try:
        linear_module.set_cpu_gemm("mkl")
        assert "OneDNN" not in type(layer(x).grad_fn).__name__
    finally:
        linear_module.set_cpu_gemm("onednn")
    assert "OneDNN" in type(layer(x).grad_fn).__name__
    with pytest.raises(ValueError, match="unknown CPU GEMM library"):
        linear_module.set_cpu_gemm("blis")


def test_a_packed_layer_copies_pickles_and_saves_without_its_pack() -> None:
    import copy
    import io
    import pickle

    layer = _layer(16, 8)
    assert layer.pack_for_inference()
    x = torch.randn(2, 8)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone._pack is None
        torch.testing.assert_close(clone(x), layer(x))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    assert layer._pack is not None  # the original keeps its pack
