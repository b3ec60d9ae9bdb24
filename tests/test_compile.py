"""torch.compile(fullgraph=True) over our modules and functions (opcheck: test_ops.py)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import layernorm_gpu as lg
from bench.model import tiny_llama
from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import dispatch


def _model(backend: str | None, device: torch.device) -> torch.nn.Module:
    """The one small model (``bench/model.py``'s tiny Llama, one layer) with its norms ours."""
    return lg.replace_norms(tiny_llama(num_layers=1), backend=backend).to(device)


def _forward(
    model: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor, layers: bool
) -> torch.Tensor:
    """The model's decoder layers (or, without ``layers``, only its final norm, a patched
    ``LlamaRMSNorm``) on input embeddings ``x``, then every functional entry point (the fused
    adds, Gemma's offset) on the result, with the final norm's weight."""
    norm = model.model.norm
    hidden = model.model(inputs_embeds=x).last_hidden_state if layers else norm(x)
    y, h = lg.fused_add_layer_norm(
        hidden, residual, 64, norm.weight, norm.weight, backend=norm.backend
    )
    z, h2 = lg.fused_add_rms_norm(
        y, h, 64, norm.weight, residual_in_fp32=True, backend=norm.backend
    )
    gemma = lg.rms_norm(z, 64, norm.weight, weight_offset=1.0, backend=norm.backend)
    return gemma + h2 + lg.layer_norm(x, 64, backend=norm.backend)


def _compare_compiled(model: torch.nn.Module, device: torch.device, layers: bool) -> None:
    x = make_input((2, 5, 64), torch.float32, device, requires_grad=True)
    residual = make_input((2, 5, 64), torch.float32, device, requires_grad=True)
    # the embedding and the head are not on this path (input embeddings, last hidden state)
    params = [x, residual, model.model.norm.weight]
    if layers:
        params += list(model.model.layers.parameters())
    eager_out = _forward(model, x, residual, layers)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), params)
    torch._dynamo.reset()
    compiled = torch.compile(_forward, fullgraph=True)
    out = compiled(model, x, residual, layers)
    grads = torch.autograd.grad(out.square().sum(), params)
    assert_close(out.detach().cpu(), eager_out.detach().double().cpu())
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


# the whole decoder layer under Inductor takes minutes on two CPU cores: slow
LAYERS = [False, pytest.param(True, marks=pytest.mark.slow)]


@pytest.mark.slow
@pytest.mark.parametrize("layers", LAYERS, ids=["norm", "decoder-layer"])
def test_compile_fullgraph_reference_on_cpu(layers: bool):
    dispatch.calls.clear()
    _compare_compiled(_model(None, torch.device("cpu")), torch.device("cpu"), layers)
    assert set(dispatch.calls) == {"reference"}


@pytest.mark.parametrize("layers", LAYERS, ids=["norm", "decoder-layer"])
def test_compile_fullgraph_kernels(layers: bool):
    """On CPU this is the interpreter; on CUDA the real kernels."""
    model = _model("triton", KERNEL_DEVICE)
    dispatch.calls.clear()
    _compare_compiled(model, KERNEL_DEVICE, layers)
    assert set(dispatch.calls) == {"triton"}


@pytest.mark.gpu
def test_compile_fullgraph_auto_on_cuda():
    dispatch.calls.clear()
    _compare_compiled(_model(None, torch.device("cuda")), torch.device("cuda"), layers=True)
    assert set(dispatch.calls) == {"triton"}


def test_compile_dynamic_shapes_without_recompiles():
    """Row count and width vary under dynamic=True; normalized_shape may be symbolic."""
    torch._dynamo.reset()
    counter = CompileCounter()

    @torch.compile(fullgraph=True, dynamic=True, backend=counter)
    def fn(x, w):
        return lg.layer_norm(x, x.shape[-1:], w) + lg.rms_norm(x, x.shape[-1], w)

    for rows, n in ((3, 8), (5, 8), (7, 12)):
        x = make_input((rows, n), torch.float32, "cpu")
        w = make_input(n, torch.float32, "cpu")
        expected = lg.layer_norm(x, n, w) + lg.rms_norm(x, n, w)
        torch.testing.assert_close(fn(x, w), expected)
    assert counter.frame_count == 1


def test_compiled_fused_add_of_transposed_input_keeps_fake_strides():
    """The fake kernel and both backends agree on h's (contiguous) strides, so a compiled graph
    over a transposed x does not fail its stride assertion."""
    x, residual = torch.randn(8, 6).t(), torch.randn(6, 8)
    for backend in ("reference", "triton"):
        torch._dynamo.reset()
        fn = torch.compile(
            lambda a, b, backend=backend: lg.fused_add_rms_norm(a, b, 8, backend=backend),
            fullgraph=True,
        )
        y, h = fn(x, residual)
        expected_y, expected_h = lg.fused_add_rms_norm(x, residual, 8, backend="reference")
        torch.testing.assert_close(h, expected_h)
        assert_close(y, expected_y.double())
        assert h.is_contiguous() and y.is_contiguous()
