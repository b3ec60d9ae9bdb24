"""Tensors past 2**31 elements on a real GPU (the interpreter variant lives in test_kernels)."""

from __future__ import annotations

import pytest
import torch

import layernorm_gpu as lg
from helpers import assert_close


@pytest.mark.gpu
@pytest.mark.slow
def test_more_than_2_31_elements_forward_and_backward():
    """bf16 x of 2**31 + 2 * 4096 elements (4 GiB): y and dx of the rows past element 2**31
    against the float64 reference."""
    n = 4096
    rows = 2**31 // n + 2
    x = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(n, device="cuda", dtype=torch.float32, requires_grad=True)
    y = lg.layer_norm(x, n, w)
    tail = slice(rows - 3, rows)
    expected = torch.nn.functional.layer_norm(x[tail].double(), (n,), w.double())
    assert_close(y[tail].cpu(), expected.cpu())
    dy = torch.ones_like(y)
    y.backward(dy)
    assert torch.isfinite(x.grad[tail]).all() and not x.grad[tail].isnan().any()
    x_tail = x[tail].detach().double().requires_grad_()
    (dx_tail,) = torch.autograd.grad(
        torch.nn.functional.layer_norm(x_tail, (n,), w.detach().double()), x_tail, dy[tail].double()
    )
    assert_close(x.grad[tail].cpu(), dx_tail.cpu())
