"""torch.compile(fullgraph=True) over our modules and functions (opcheck: test_ops.py)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import layernorm_gpu as lg
from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import dispatch


class _Block(torch.nn.Module):
    """A pre-norm block using every entry point: modules, functional and fused adds."""

    def __init__(self, dim: int, backend: str | None) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.ln = lg.LayerNorm(dim, backend=backend)
        self.rms = lg.RMSNorm(dim, backend=backend)
        self.gemma = lg.RMSNorm(dim, weight_offset=1.0, backend=backend)
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        y, h = lg.fused_add_layer_norm(
            x, residual, x.shape[-1], self.ln.weight, self.ln.bias, backend=self.backend
        )
        z, h2 = lg.fused_add_rms_norm(
            self.proj(y),
            h,
            x.shape[-1],
            self.rms.weight,
            residual_in_fp32=True,
            backend=self.backend,
        )
        return self.gemma(self.ln(z)) + h2 + lg.layer_norm(x, x.shape[-1], backend=self.backend)


def _compare_compiled(block: torch.nn.Module, device: torch.device) -> None:
    x = make_input((2, 5, 32), torch.float32, device, requires_grad=True)
    residual = make_input((2, 5, 32), torch.float32, device, requires_grad=True)
    eager_out = block(x, residual)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), [x, residual, *block.parameters()])
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, residual)
    grads = torch.autograd.grad(out.square().sum(), [x, residual, *block.parameters()])
    assert_close(out.detach().cpu(), eager_out.detach().double().cpu())
    for g, e in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_fullgraph_reference_on_cpu():
    dispatch.calls.clear()
    _compare_compiled(_Block(32, None), torch.device("cpu"))
    assert set(dispatch.calls) == {"reference"}


def test_compile_fullgraph_kernels():
    """On CPU this is the interpreter; on CUDA the real kernels."""
    block = _Block(32, "triton").to(KERNEL_DEVICE)
    dispatch.calls.clear()
    _compare_compiled(block, KERNEL_DEVICE)
    assert set(dispatch.calls) == {"triton"}


@pytest.mark.gpu
def test_compile_fullgraph_auto_on_cuda():
    dispatch.calls.clear()
    _compare_compiled(_Block(32, None).cuda(), torch.device("cuda"))
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
