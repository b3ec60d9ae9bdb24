"""The reference against float64 autograd of torch's own norms, and its documented contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close, make_input
from layernorm_gpu import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (rows, N): a single row, ragged widths, a width of 1
SHAPES = ((1, 1), (37, 769), (5, 3), (2, 1500))
AFFINE = ("weight_bias", "weight", "none")


def _params(n, dtype, affine):
    weight = make_input(n, dtype) if affine != "none" else None
    bias = make_input(n, dtype) if affine == "weight_bias" else None
    return weight, bias


def _oracle(x, weight, bias, dy, eps, is_rms):
    """float64 torch forward + autograd: (y, mean, rstd, dx, dweight, dbias)."""
    leaves = [t.double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    xd, wd, bd = leaves
    if is_rms:
        y = F.rms_norm(xd, (x.shape[1],), wd, eps)
        mean = torch.zeros(x.shape[0], dtype=torch.float64)
        rstd = torch.rsqrt(xd.detach().pow(2).mean(1) + eps)
    else:
        y, mean, rstd = torch.native_layer_norm(xd, (x.shape[1],), wd, bd, eps)
        mean, rstd = mean.squeeze(1).detach(), rstd.squeeze(1).detach()
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy.double())
    grads = list(grads) + [None] * (3 - len(grads))
    return y.detach(), mean, rstd, *grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", SHAPES)
@pytest.mark.parametrize("affine", AFFINE)
def test_layer_norm_matches_float64_autograd(dtype, rows, n, affine):
    x = make_input((rows, n), dtype, "cpu")
    weight, bias = _params(n, dtype, affine)
    dy = make_input((rows, n), dtype, "cpu")
    y, mean, rstd = reference.forward(x, weight, bias, 1e-5)
    dx, dweight, dbias = reference.backward(dy, x, weight, mean, rstd, has_bias=bias is not None)
    y64, mean64, rstd64, dx64, dw64, db64 = _oracle(x, weight, bias, dy, 1e-5, False)
    assert y.dtype == dx.dtype == dtype
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == rstd.dtype == stats_dtype and mean.shape == rstd.shape == (rows,)
    assert_close(y, y64)
    assert_close(mean, mean64)
    assert_close(rstd, rstd64)
    assert_close(dx, dx64)
    assert (dweight is None) == (weight is None) and (dbias is None) == (bias is None)
    if weight is not None:
        assert dweight.dtype == stats_dtype
        assert_close(dweight, dw64, reduction=rows)
    if bias is not None:
        assert_close(dbias, db64, reduction=rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", SHAPES)
def test_rms_norm_matches_float64_autograd(dtype, rows, n):
    x = make_input((rows, n), dtype, "cpu")
    weight = make_input(n, dtype)
    dy = make_input((rows, n), dtype, "cpu")
    y, rstd = reference.rms_forward(x, weight, 1e-6)
    dx, dweight = reference.rms_backward(dy, x, weight, rstd)
    y64, _, rstd64, dx64, dw64, _ = _oracle(x, weight, None, dy, 1e-6, True)
    assert_close(y, y64)
    assert_close(rstd, rstd64)
    assert_close(dx, dx64)
    assert_close(dweight, dw64, reduction=rows)


def test_backward_without_bias_or_weight_returns_none():
    x = make_input((4, 8), torch.float32, "cpu")
    _, mean, rstd = reference.forward(x, None, None, 1e-5)
    dx, dweight, dbias = reference.backward(torch.randn(4, 8), x, None, mean, rstd, has_bias=False)
    assert dweight is None and dbias is None and dx.shape == x.shape


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_constant_rows_give_exactly_bias(dtype):
    x = torch.full((3, 100), 0.1, dtype=dtype)
    weight, bias = make_input(100, dtype), make_input(100, dtype)
    y, mean, _ = reference.forward(x, weight, bias, 1e-5)
    assert torch.equal(y, bias.expand_as(y))
    assert torch.equal(mean, x[:, 0].float())


def test_offset_rows_keep_precision():
    """Rows offset by 1e4 in float32: no E[x^2]-E[x]^2 cancellation."""
    x = make_input((8, 512), torch.float32, "cpu", offset=1e4)
    y, _, rstd = reference.forward(x, None, None, 1e-5)
    y64, _, rstd64 = torch.native_layer_norm(x.double(), (512,), None, None, 1e-5)
    assert_close(rstd, rstd64.squeeze(1))
    ours = (y.double() - y64).abs().max()
    torchs = (F.layer_norm(x, (512,)).double() - y64).abs().max()
    assert ours <= 2 * torchs + 1e-6, (ours, torchs)


@pytest.fixture
def matmul_precision():
    """Sets ``torch.set_float32_matmul_precision`` for the test, restoring it after."""
    previous = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_column_sums_take_no_matrix_product_in_reduced_precision(
    monkeypatch, matmul_precision, precision
):
    """The column sums of the no-grad backward are matrix products only where float32 products
    round as float32: with TF32 or bfloat16 allowed, a product would be caught here (on CPUs
    without bfloat16 matrix units the precision setting changes no result, so the test
    watches the products themselves)."""
    t, factor = (
        make_input((40, 24), torch.float32, "cpu"),
        make_input((40, 1), torch.float32, "cpu"),
    )
    expected = (t * factor).sum(dim=0)
    matmul_precision(precision)
    used = []

    def watch(name, fn):
        def watched(*args, **kwargs):
            used.append(name)
            return fn(*args, **kwargs)

        return watched

    monkeypatch.setattr(torch, "bmm", watch("bmm", torch.bmm))
    monkeypatch.setattr(torch.Tensor, "__matmul__", watch("@", torch.Tensor.__matmul__))
    got = reference._weighted_column_sum(t, factor)
    assert (used != []) == (precision == "highest"), used
    torch.testing.assert_close(got, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["high", "medium"])
def test_column_sums_stay_float32_under_reduced_matmul_precision(precision):
    """dW and dB are column sums, taken as batched matrix products by default: with TF32 or
    bfloat16 products allowed (``set_float32_matmul_precision``), they stay float32 sums."""
    device = "cuda"
    rows, n = 300, 64
    x, dy = (
        make_input((rows, n), torch.float32, device),
        make_input((rows, n), torch.float32, device),
    )
    weight, bias = make_input(n, torch.float32, device), make_input(n, torch.float32, device)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        with torch.no_grad():  # the fast branch, which takes the column sums as products
            _, mean, rstd = reference.forward(x, weight, bias, 1e-5)
            _, dweight, dbias = reference.backward(dy, x, weight, mean, rstd)
    finally:
        torch.set_float32_matmul_precision(previous)
    *_, dw64, db64 = _oracle(x, weight, bias, dy, 1e-5, False)
    assert_close(dweight, dw64, reduction=rows)
    assert_close(dbias, db64, reduction=rows)


class _ReferenceLayerNorm(torch.autograd.Function):
    """reference.forward with reference.backward as its gradient, for gradcheck."""

    @staticmethod
    def forward(ctx, x, weight, bias, is_rms):
        if is_rms:
            y, rstd = reference.rms_forward(x, weight, 1e-5)
            mean = torch.zeros_like(rstd)
        else:
            y, mean, rstd = reference.forward(x, weight, bias, 1e-5)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.is_rms = is_rms
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        if ctx.is_rms:
            dx, dweight = reference.rms_backward(dy, x, weight, rstd)
            return dx, dweight, None, None
        return (*reference.backward(dy, x, weight, mean, rstd), None)


@pytest.mark.parametrize("is_rms", (False, True))
def test_backward_passes_gradcheck_float64(is_rms):
    x = make_input((3, 7), torch.float64, "cpu", requires_grad=True)
    w = make_input(7, torch.float64, "cpu", requires_grad=True)
    b = None if is_rms else make_input(7, torch.float64, "cpu", requires_grad=True)
    assert torch.autograd.gradcheck(_ReferenceLayerNorm.apply, (x, w, b, is_rms))


@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_wide_rows_at_least_as_accurate_as_torch(is_rms):
    """One row of 2**20 float32 elements (normalized_shape (256, 256, 16), x ~ N(1.5, 2)): the
    reference's y is no further from float64 than torch's own CPU kernel's."""
    shape = (256, 256, 16)
    x = (1.5 + 2 * torch.randn(1, *shape, dtype=torch.float64)).float()
    eps = 1e-6 if is_rms else 1e-5
    ours, _, _, _ = reference.norm_fwd(
        x, None, None, None, n_norm_dims=3, eps=eps, is_rms=is_rms, weight_offset=0.0,
        h_dtype=None, y_dtype=x.dtype, x_hat_dtype=None,
    )  # fmt: skip
    if is_rms:
        theirs, exact = F.rms_norm(x, shape, eps=eps), F.rms_norm(x.double(), shape, eps=eps)
    else:
        theirs, exact = F.layer_norm(x, shape), F.layer_norm(x.double(), shape)
    err_ours = (ours.double() - exact).abs().max().item()
    err_torch = (theirs.double() - exact).abs().max().item()
    assert err_ours <= err_torch, (err_ours, err_torch)
