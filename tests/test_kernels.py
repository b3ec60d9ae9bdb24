"""The Triton kernels (on CUDA, or in the interpreter) against the float64 reference.

Every test poisons the outputs: torch.empty returns NaN-filled tensors, so an element (or a
dW/dB partial row) the kernels fail to write fails the comparison.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import KERNEL_DTYPES, assert_close, make_input, tolerance
from layernorm_gpu import kernels, ops
from layernorm_gpu.dtypes import h_dtype as h_dtype_of
from layernorm_gpu.kernels import registry
from layernorm_gpu.kernels.rows import row_layout, vector_align

BF16, FP32 = torch.bfloat16, torch.float32
# ragged widths, powers of two +- 1, a width of 1, and one above the 4096-wide tile
WIDTHS = (1, 3, 127, 769, 1023, 1500, 4097)
# a single row, and a row count that is not a multiple of any tile
ROW_COUNTS = (1, 37)

pytestmark = pytest.mark.usefixtures("poison")


def _run(
    x,
    weight,
    bias,
    dy,
    *,
    is_rms=False,
    residual=None,
    dh=None,
    n_norm_dims=1,
    eps=1e-5,
    weight_offset=0.0,
    fwd_config=None,
    bwd_config=None,
):
    """Kernels forward then backward: (y, h, mean, rstd, dx, dweight, dbias)."""
    h_dtype = None if residual is None else h_dtype_of(x.dtype, residual.dtype, False)
    y, h, mean, rstd = kernels.norm_fwd(
        x,
        residual,
        weight,
        bias,
        n_norm_dims=n_norm_dims,
        eps=eps,
        is_rms=is_rms,
        weight_offset=weight_offset,
        h_dtype=h_dtype,
        config=fwd_config,
    )
    if is_rms:
        # RMSNorm has no mean: an empty float32 tensor, never written (no fill, one launch)
        assert mean.shape == (0,) and mean.dtype == torch.float32
    dx, dweight, dbias = kernels.norm_bwd(
        dy,
        x if h is None else h,
        weight,
        mean,
        rstd,
        dh,
        n_norm_dims=n_norm_dims,
        is_rms=is_rms,
        weight_offset=weight_offset,
        dweight_dtype=None if weight is None else weight.dtype,
        dbias_dtype=None if bias is None else bias.dtype,
        config=bwd_config,
    )
    return y, h, None if is_rms else mean, rstd, dx, dweight, dbias


def _expected(
    x,
    weight,
    bias,
    dy,
    *,
    is_rms=False,
    residual=None,
    dh=None,
    n_norm_dims=1,
    eps=1e-5,
    weight_offset=0.0,
):
    """The float64 reference on the same (rounded) inputs, in the kernels' output layout."""

    def f64(t):
        return None if t is None else t.double().cpu()

    h = f64(x) if residual is None else f64(x) + f64(residual)
    y, h_out, mean, rstd = ops.norm_fwd(
        h,
        None,
        f64(weight),
        f64(bias),
        n_norm_dims,
        eps,
        weight_offset,
        is_rms,
        False,
        "torch",
        "reference",
    )
    dx, dweight, dbias = ops.norm_bwd(
        f64(dy),
        h,
        f64(weight),
        mean,
        rstd,
        f64(dh),
        n_norm_dims,
        weight_offset,
        is_rms,
        None if weight is None else torch.float64,
        None if bias is None else torch.float64,
        "reference",
    )
    return y, h, mean, rstd, dx, dweight, dbias


def _check(got, want, rows):
    """Compare every output the kernels produced (None: not produced) with the oracle."""
    names = ("y", "h", "mean", "rstd", "dx", "dweight", "dbias")
    for name, g, w in zip(names, got, want, strict=True):
        if g is not None:
            reduction = rows if name in ("dweight", "dbias") else 1
            # the launchers' mean/rstd are flat (n_rows,), the op's have the leading shape
            assert_close(g.cpu().reshape(w.shape), w, reduction=reduction, msg=name)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_layer_norm(dtype, n, rows):
    x, dy = make_input((rows, n), dtype), make_input((rows, n), dtype)
    weight, bias = make_input(n, dtype), make_input(n, dtype)
    _check(_run(x, weight, bias, dy), _expected(x, weight, bias, dy), rows)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("n", (3, 769, 4097))
def test_rms_norm(dtype, n):
    x, dy, weight = make_input((37, n), dtype), make_input((37, n), dtype), make_input(n, dtype)
    _check(_run(x, weight, None, dy, is_rms=True), _expected(x, weight, None, dy, is_rms=True), 37)


# LayerNorm: weight and bias, weight only, bias only, neither; RMSNorm has no bias
AFFINE_VARIANTS = [(False, a) for a in ("weight_bias", "weight", "bias", "none")]
AFFINE_VARIANTS += [(True, a) for a in ("weight", "none")]


@pytest.mark.parametrize("is_rms,affine", AFFINE_VARIANTS)
def test_affine_variants(is_rms, affine):
    x, dy = make_input((37, 200), torch.float32), make_input((37, 200), torch.float32)
    weight = make_input(200, torch.float32) if "weight" in affine else None
    bias = make_input(200, torch.float32) if "bias" in affine else None
    got = _run(x, weight, bias, dy, is_rms=is_rms)
    assert (got[5] is None) == (weight is None) and (got[6] is None) == (bias is None)
    _check(got, _expected(x, weight, bias, dy, is_rms=is_rms), 37)


@pytest.mark.parametrize("x_dtype", (torch.float16, torch.bfloat16))
def test_16bit_input_with_float32_parameters(x_dtype):
    x, dy = make_input((37, 300), x_dtype), make_input((37, 300), x_dtype)
    weight, bias = make_input(300, torch.float32), make_input(300, torch.float32)
    got = _run(x, weight, bias, dy)
    assert got[0].dtype == got[4].dtype == x_dtype
    assert got[5].dtype == got[6].dtype == torch.float32
    _check(got, _expected(x, weight, bias, dy), 37)


def test_multi_dim_normalized_shape_and_3d_input():
    x, dy = make_input((2, 5, 4, 24), torch.float32), make_input((2, 5, 4, 24), torch.float32)
    weight, bias = make_input((4, 24), torch.float32), make_input((4, 24), torch.float32)
    got = _run(x, weight, bias, dy, n_norm_dims=2)
    assert got[0].shape == x.shape and got[5].shape == weight.shape
    _check(got, _expected(x, weight, bias, dy, n_norm_dims=2), 10)


@pytest.mark.parametrize("is_rms", (False, True))
@pytest.mark.parametrize("h_is_fp32", (False, True))
def test_fused_residual(is_rms, h_is_fp32):
    x, dy, dh = (make_input((37, 300), torch.bfloat16) for _ in range(3))
    residual = make_input((37, 300), torch.float32 if h_is_fp32 else torch.bfloat16)
    weight, bias = make_input(300, torch.float32), make_input(300, torch.float32)
    bias = None if is_rms else bias
    got = _run(x, weight, bias, dy, is_rms=is_rms, residual=residual, dh=dh)
    assert got[1].dtype == (torch.float32 if h_is_fp32 else torch.bfloat16)
    assert got[0].dtype == torch.bfloat16 and got[4].dtype == got[1].dtype
    want = _expected(x, weight, bias, dy, is_rms=is_rms, residual=residual, dh=dh)
    # h is x + residual rounded once to h's dtype
    torch.testing.assert_close(got[1].cpu(), want[1].to(got[1].dtype), atol=0, rtol=0)
    # normalise the stored h, as the kernels do
    want = _expected(got[1].cpu(), weight, bias, dy, is_rms=is_rms, dh=dh)
    _check(got[:1] + (None,) + got[2:], want, 37)


def _looped_config(
    rows: int, block_n: int, rows_per_tile: int = 2, tiles_per_program: int = 2, **kwargs
) -> kernels.NormConfig:
    """A looped-kernel config with a tiny chunk so that small rows span several chunks."""
    tiles = math.ceil(rows / rows_per_tile)
    return kernels.NormConfig(
        block_n=block_n,
        rows_per_tile=rows_per_tile,
        single_block=False,
        num_warps=4,
        grid=math.ceil(tiles / tiles_per_program),
        tiles_per_program=tiles_per_program,
        **kwargs,
    )


def _casting(mode: str, x: torch.Tensor, weight: torch.Tensor) -> tuple:
    """``(y_dtype, x_hat_dtype)`` of a casting convention (the BRIEF's contract 4)."""
    if mode == "torch":
        return x.dtype, None
    if mode == "llama":
        return torch.promote_types(x.dtype, weight.dtype), x.dtype
    if weight.dtype in (torch.float16, torch.bfloat16):  # t5
        return weight.dtype, weight.dtype
    return torch.promote_types(torch.promote_types(x.dtype, torch.float32), weight.dtype), None


def _y_with_rounded_x_hat(x, weight, bias, *, is_rms, eps, x_hat_dtype, y):
    """The float64 oracle of y with x_hat rounded to ``x_hat_dtype`` before the affine.

    The kernels round their float32 x_hat, which lies within the float32 tolerance of the
    exact one; rounding is monotone, so their rounded x_hat lies between the roundings of that
    window's ends. Where the two agree (almost everywhere) the oracle is exact; elsewhere it is
    the interval between them, and the expected value is ``y`` clamped into it.
    """
    xd = x.double()
    centred = xd if is_rms else xd - xd.mean(dim=-1, keepdim=True)
    x_hat = centred * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + eps)
    w, b = weight.double(), 0.0 if bias is None else bias.double()
    if x_hat_dtype is None:
        return x_hat * w + b
    atol, rtol = tolerance(torch.float32)
    window = atol + rtol * x_hat.abs()
    ends = [(x_hat + d).to(x_hat_dtype).double() * w + b for d in (-window, window)]
    low, high = torch.minimum(*ends), torch.maximum(*ends)
    return torch.minimum(torch.maximum(y.double(), low), high)


@pytest.mark.parametrize("mode", ("torch", "llama", "t5"))
@pytest.mark.parametrize("is_rms", (False, True), ids=("LN", "RMS"))
@pytest.mark.parametrize("looped", (False, True), ids=("single_block", "looped"))
@pytest.mark.parametrize("x_dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
@pytest.mark.parametrize("weight_is_fp32", (False, True), ids=("w16", "w32"))
def test_casting_rounds_x_hat_before_the_affine(mode, is_rms, looped, x_dtype, weight_is_fp32):
    """y_dtype and x_hat_dtype of the casting conventions: x_hat rounded at that point, then
    ``x_hat * w + b`` in float32, y stored in its dtype."""
    rows, n, eps = 9, 200, 1e-5
    x = make_input((rows, n), x_dtype)
    weight = make_input(n, torch.float32 if weight_is_fp32 else x_dtype)
    bias = None if is_rms else make_input(n, weight.dtype)
    y_dtype, x_hat_dtype = _casting(mode, x, weight)
    y, _, _, _ = kernels.norm_fwd(
        x,
        None,
        weight,
        bias,
        n_norm_dims=1,
        eps=eps,
        is_rms=is_rms,
        y_dtype=y_dtype,
        x_hat_dtype=x_hat_dtype,
        config=_looped_config(rows, 64) if looped else None,
    )
    assert y.dtype == y_dtype
    oracle = dict(x=x, weight=weight, bias=bias, is_rms=is_rms, eps=eps, y=y.cpu())
    assert_close(y.cpu(), _y_with_rounded_x_hat(**oracle, x_hat_dtype=x_hat_dtype))
    if x_hat_dtype is not None and y_dtype == torch.float32:
        # a float32 y shows the rounding: the unrounded x_hat is far outside its tolerance
        unrounded = _y_with_rounded_x_hat(**oracle, x_hat_dtype=None)
        with pytest.raises(AssertionError):
            assert_close(y.cpu(), unrounded)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("is_rms", (False, True))
@pytest.mark.parametrize("n", (64, 200, 1000))
def test_looped_kernels_over_chunks(dtype, is_rms, n):
    """The wide-row kernels, forced onto short rows: whole chunks and a ragged last chunk."""
    x, dy = make_input((9, n), dtype, offset=3.0), make_input((9, n), dtype)
    residual = make_input((9, n), dtype)
    weight, bias = make_input(n, dtype), None if is_rms else make_input(n, dtype)
    cfg = _looped_config(9, 64)
    got = _run(
        x, weight, bias, dy, is_rms=is_rms, residual=residual, fwd_config=cfg, bwd_config=cfg
    )
    want = _expected(got[1].cpu(), weight, bias, dy, is_rms=is_rms)
    _check(got[:1] + (None,) + got[2:], want, 9)


@pytest.mark.parametrize("num_stages", (1, 3))
@pytest.mark.parametrize(
    "grid,slice_block",
    # 11 rows in tiles of 2: bands of 2, 3 and 6 tiles, the last ragged; slices of 64 columns
    # (4 programs own 200 columns, the fifth none) in one tile or two of 32; one band
    ((5, 0), (5, 32), (3, 0), (2, 128), (6, 0)),
)
def test_looped_backward_sums_weight_gradients_by_bands(grid, slice_block, num_stages):
    """The looped backward's dW/dB: each program sums its slice of columns over each band's
    rows (one tile per program per band) and keeps the running sums across bands. The float64
    oracle's gradients with ragged bands, slices and tiles; programs without columns; dx bitwise
    independent of the grid, the slice tiles and the pipeline depth; the same bits run to run."""
    x, dy = make_input((11, 200), torch.bfloat16, offset=3.0), make_input((11, 200), torch.bfloat16)
    weight, bias = make_input(200, torch.float32), make_input(200, torch.float32)
    cfg = dataclasses.replace(
        _looped_config(11, 64, num_stages=num_stages), grid=grid, slice_block=slice_block
    )
    cfg = dataclasses.replace(cfg, tiles_per_program=math.ceil(6 / grid))
    got = _run(x, weight, bias, dy, bwd_config=cfg)
    _check(got, _expected(x, weight, bias, dy), 11)
    other = dataclasses.replace(cfg, grid=6, tiles_per_program=1, slice_block=0, num_stages=1)
    other = _run(x, weight, bias, dy, bwd_config=other)
    assert torch.equal(got[4], other[4])
    again = _run(x, weight, bias, dy, bwd_config=cfg)
    for g, a in zip(got[4:], again[4:], strict=True):
        assert torch.equal(g, a)


def _columns_config(
    rows: int, n: int, block_n: int, rows_per_tile: int = 4, num_stages: int = 1, **kwargs
) -> kernels.NormConfig:
    """A backward config whose looped launch computes c1, c2 only (64-column chunks, 2 tiles of
    2 rows per program) and whose column-parallel launch computes dx, dW, dB."""
    columns = kernels.ColumnsConfig(
        block_n, rows_per_tile, 4, math.ceil(n / block_n), num_stages=num_stages, **kwargs
    )
    return dataclasses.replace(_looped_config(rows, 64), columns=columns)


@pytest.mark.parametrize("block_n,rows_per_tile,num_stages", ((64, 4, 1), (128, 1, 3)))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_column_parallel_backward(dtype, block_n, rows_per_tile, num_stages):
    """The two-launch backward of rows too wide for L2 (c1, c2 by rows, then dx, dW, dB by
    blocks of columns over every row): the float64 oracle's gradients, a ragged last block of
    columns and tile of rows included, dx bitwise that of the two-pass looped kernel, and
    bitwise-equal gradients run to run."""
    x, dy = make_input((11, 200), dtype, offset=3.0), make_input((11, 200), dtype)
    weight, bias = make_input(200, dtype), make_input(200, dtype)
    cfg = _columns_config(11, 200, block_n, rows_per_tile, num_stages)
    got = _run(x, weight, bias, dy, bwd_config=cfg)
    _check(got, _expected(x, weight, bias, dy), 11)
    looped = _run(x, weight, bias, dy, bwd_config=dataclasses.replace(cfg, columns=None))
    assert torch.equal(got[4], looped[4])
    again = _run(x, weight, bias, dy, bwd_config=cfg)
    for a, b in zip(got, again, strict=True):
        assert a is None or torch.equal(a, b)


@pytest.mark.parametrize("is_rms,affine", AFFINE_VARIANTS)
def test_column_parallel_backward_affine_variants(is_rms, affine):
    """Every subset of weight and bias (each gradient computed only when wanted), with a fused
    residual's dh added to dx."""
    x, dy, dh = (make_input((9, 200), torch.float32) for _ in range(3))
    weight = make_input(200, torch.float32) if "weight" in affine else None
    bias = make_input(200, torch.float32) if "bias" in affine else None
    got = _run(x, weight, bias, dy, is_rms=is_rms, dh=dh, bwd_config=_columns_config(9, 200, 64))
    assert (got[5] is None) == (weight is None) and (got[6] is None) == (bias is None)
    _check(got, _expected(x, weight, bias, dy, is_rms=is_rms, dh=dh), 9)


def test_column_parallel_backward_of_strided_rows():
    """Rows addressed in place on the column-parallel path: x with transposed leading dims, dy
    a broadcast row (stride 0), dh every other row of a larger tensor."""
    x = make_input((6, 4, 80), torch.float32).transpose(0, 1)
    dy = make_input((1, 1, 80), torch.float32).expand(4, 6, 80)
    dh = make_input((8, 6, 80), torch.float32)[::2]
    weight, bias = make_input(80, torch.float32), make_input(80, torch.float32)
    got = _run(x, weight, bias, dy, dh=dh, bwd_config=_columns_config(24, 80, 64))
    _check(got, _expected(x, weight, bias, dy, dh=dh), 24)


# (x, dy, weight dtype, dx dtype, is_rms, weight_offset, dh, rows, n): the column-parallel path
# on mixed dtypes, Gemma's weight offset, a single row, and an odd width (ALIGN 1)
COLUMN_CASES = {
    "bf16 x, fp32 weight": (BF16, BF16, FP32, None, False, 0.0, False, 11, 200),
    "fp32 dy of bf16 x": (BF16, FP32, BF16, None, False, 0.0, False, 11, 200),
    "fp32 dx of bf16 x": (BF16, BF16, BF16, FP32, False, 0.0, False, 11, 200),
    "RMS, weight offset": (FP32, FP32, FP32, None, True, 1.0, False, 11, 200),
    "LN, weight offset, dh": (FP32, FP32, FP32, None, False, 1.0, True, 11, 200),
    "one row": (FP32, FP32, FP32, None, False, 0.0, True, 1, 200),
    "odd width": (torch.float16, torch.float16, torch.float16, None, False, 0.0, True, 7, 199),
}


@pytest.mark.parametrize("case", list(COLUMN_CASES))
def test_column_parallel_backward_dtypes_offsets_and_widths(case):
    """dx bitwise the looped kernel's, dx, dW, dB the float64 oracle's, in their dtypes."""
    x_dtype, dy_dtype, w_dtype, dx_dtype, is_rms, offset, has_dh, rows, n = COLUMN_CASES[case]
    x, dy = make_input((rows, n), x_dtype, offset=2.0), make_input((rows, n), dy_dtype)
    dh = make_input((rows, n), x_dtype) if has_dh else None
    weight = make_input(n, w_dtype)
    bias = None if is_rms else make_input(n, w_dtype)
    _, _, mean, rstd = kernels.norm_fwd(
        x, None, weight, bias, n_norm_dims=1, eps=1e-5, is_rms=is_rms, weight_offset=offset
    )
    kwargs = dict(
        n_norm_dims=1, is_rms=is_rms, weight_offset=offset, dweight_dtype=w_dtype,
        dbias_dtype=None if bias is None else w_dtype, dx_dtype=dx_dtype,
    )  # fmt: skip
    got = kernels.norm_bwd(
        dy, x, weight, mean, rstd, dh, config=_columns_config(rows, n, 64), **kwargs
    )
    looped = kernels.norm_bwd(
        dy, x, weight, mean, rstd, dh, config=_looped_config(rows, 64), **kwargs
    )
    assert torch.equal(got[0], looped[0]) and got[0].dtype == (dx_dtype or x_dtype)
    want = _expected(x, weight, bias, dy, is_rms=is_rms, dh=dh, weight_offset=offset)[4:]
    for g, w, reduction in zip(got, want, (1, rows, rows), strict=True):
        if g is not None:
            assert g.dtype == (dx_dtype or x_dtype if reduction == 1 else w_dtype)
            assert_close(g.cpu(), w, reduction=reduction)


@pytest.mark.parametrize("where", ("nan in x", "inf in dy", "nan in the last column block"))
def test_column_parallel_backward_propagates_nan_and_inf_like_the_looped_one(where):
    """A NaN or Inf reaches the same outputs, as NaN or Inf, on both wide-row paths."""
    x, dy = make_input((9, 200), torch.float32), make_input((9, 200), torch.float32)
    weight, bias = make_input(200, torch.float32), make_input(200, torch.float32)
    _, _, mean, rstd = kernels.norm_fwd(
        x, None, weight, bias, n_norm_dims=1, eps=1e-5, is_rms=False
    )
    if where == "nan in x":
        x[3, 70], mean[3] = float("nan"), float("nan")
    elif where == "inf in dy":
        dy[5, 10] = float("inf")
    else:
        dy[8, 199] = float("nan")
    kwargs = dict(n_norm_dims=1, is_rms=False, dweight_dtype=FP32, dbias_dtype=FP32)
    got = kernels.norm_bwd(dy, x, weight, mean, rstd, config=_columns_config(9, 200, 64), **kwargs)
    looped = kernels.norm_bwd(dy, x, weight, mean, rstd, config=_looped_config(9, 64), **kwargs)
    for g, w in zip(got, looped, strict=True):
        assert torch.equal(g.isnan(), w.isnan()) and torch.equal(g.isinf(), w.isinf())
    assert not got[0].isfinite().all()  # (dB = sum of dy stays finite under a NaN in x)


def test_rows_are_batch_invariant_across_the_column_parallel_switch(monkeypatch):
    """Whether a wide backward runs column-parallel depends on M (its grid's share of L2): on a
    GPU with 16 SMs and 256 KiB of L2, one row of 8200 columns runs the looped kernel (a band of
    one row fits) and six rows the column-parallel one (4 rows fit, fewer than 40% of the
    SMs), and each row's dx is bitwise the same either way."""
    launcher = importlib.import_module("layernorm_gpu.kernels.norm_bwd")
    monkeypatch.setattr(
        launcher, "device_target", lambda device: kernels.Target(sm_count=16, l2_bytes=2**18)
    )
    x, dy = make_input((6, 8200), BF16, offset=2.0), make_input((6, 8200), BF16)
    weight, bias = make_input(8200, BF16), make_input(8200, BF16)
    _, _, mean, rstd = kernels.norm_fwd(
        x, None, weight, bias, n_norm_dims=1, eps=1e-5, is_rms=False
    )
    kwargs = dict(n_norm_dims=1, is_rms=False, dweight_dtype=BF16, dbias_dtype=BF16)

    def backward(rows: slice) -> tuple[torch.Tensor, list[str]]:
        names = []
        with registry.intercepted(lambda launch, run: (names.append(launch.kernel.name), run())):
            dx = kernels.norm_bwd(dy[rows], x[rows], weight, mean[rows], rstd[rows], **kwargs)[0]
        return dx, names

    batch, names = backward(slice(0, 6))
    assert names == ["norm_bwd_looped", "norm_bwd_columns"]
    for i in (0, 5):
        alone, names = backward(slice(i, i + 1))
        assert names == ["norm_bwd_looped"]
        assert torch.equal(batch[i : i + 1], alone)


@pytest.mark.parametrize("path", ("single_block", "bands", "columns"))
def test_weight_gradient_sums_of_negative_zeros_are_positive_zero(path):
    """A column whose every dy * x_hat (and dy) is -0.0 sums to +0.0, as torch's sums (which
    start from +0.0) give, on every backward path: the accumulators start from +0.0 too."""
    x, dy = make_input((9, 200), FP32, offset=1.0), make_input((9, 200), FP32)
    x[:, 7] = x[:, :7].amax(dim=1) + 1.0  # x_hat > 0 in column 7 of every row
    dy[:, 7] = -0.0
    weight, bias = make_input(200, FP32), make_input(200, FP32)
    cfg = {
        "single_block": None,
        "bands": _looped_config(9, 64),
        "columns": _columns_config(9, 200, 64),
    }[path]
    stats = kernels.norm_fwd(x, None, weight, bias, n_norm_dims=1, eps=1e-5, is_rms=False)
    mean, rstd = stats[2], stats[3]
    _, dw, db = kernels.norm_bwd(
        dy, x, weight, mean, rstd, n_norm_dims=1, is_rms=False, dweight_dtype=FP32,
        dbias_dtype=FP32, config=cfg,
    )  # fmt: skip
    torch.testing.assert_close(dw[7], torch.tensor(0.0), rtol=0, atol=0)
    assert not dw[7].signbit() and not db[7].signbit()
    assert (dy[:, 7] * x[:, 7]).sum().signbit() == dw[7].signbit()


def test_column_parallel_config_is_checked_before_launching():
    x, dy = make_input((9, 200), FP32), make_input((9, 200), FP32)
    stats = torch.ones(9, device=x.device)
    too_few = _columns_config(9, 200, 64)
    too_few = dataclasses.replace(too_few, columns=dataclasses.replace(too_few.columns, grid=3))
    single = dataclasses.replace(_columns_config(9, 200, 64), single_block=True, block_n=256)
    for cfg in (too_few, single):
        with pytest.raises(ValueError, match="config.columns"):
            kernels.norm_bwd(dy, x, None, stats, stats, n_norm_dims=1, is_rms=False, config=cfg)


@pytest.mark.gpu
def test_column_parallel_backward_at_full_width_on_the_gpu():
    """A realistic column-parallel launch (65536 bf16 columns: on an A100 / H100 its rows do
    not fit L2 at 64 rows; pipelined 16x256 tiles): the float64 oracle's gradients, and each
    row's dx bitwise that of the row alone (one row: the looped kernel)."""
    x, dy = make_input((64, 65536), BF16), make_input((64, 65536), BF16)
    weight, bias = make_input(65536, BF16), make_input(65536, BF16)
    got = _run(x, weight, bias, dy)
    _check(got, _expected(x, weight, bias, dy), 64)
    for i in (0, 63):
        alone = _run(x[i : i + 1], weight, bias, dy[i : i + 1])
        assert torch.equal(got[4][i : i + 1], alone[4])


@pytest.mark.parametrize("is_rms", (False, True), ids=("LN", "RMS"))
def test_column_parallel_backward_from_y(is_rms):
    """The memory-efficient backward (x_hat recomputed from the saved y) on the column-parallel
    path: the gradients of x, and dx bitwise that of the looped kernel from y."""
    x, dy = make_input((9, 200), torch.float32), make_input((9, 200), torch.float32)
    weight = make_input(200, torch.float32, offset=3.0)
    bias = None if is_rms else make_input(200, torch.float32)
    y, _, mean, rstd = kernels.norm_fwd(
        x, None, weight, bias, n_norm_dims=1, eps=1e-5, is_rms=is_rms
    )
    grads = {}
    for name, cfg in (("columns", _columns_config(9, 200, 64)), ("looped", _looped_config(9, 64))):
        grads[name] = kernels.norm_bwd(
            dy, y, weight, mean, rstd, n_norm_dims=1, is_rms=is_rms, bias=bias, x_is_y=True,
            dweight_dtype=torch.float32, dbias_dtype=None if bias is None else torch.float32,
            config=cfg,
        )  # fmt: skip
    want = _expected(x, weight, bias, dy, is_rms=is_rms)
    for got, expected, reduction in zip(grads["columns"], want[4:], (1, 9, 9), strict=True):
        if got is not None:
            assert_close(got.cpu(), expected, reduction=reduction)
    assert torch.equal(grads["columns"][0], grads["looped"][0])


@pytest.mark.parametrize("single_block", (True, False), ids=("single_block", "looped"))
def test_int64_row_indices(single_block):
    """The kernels as launched past 2**30 rows (int64 row indices) give bitwise the results of
    the int32 ones, on a small problem forced onto that path."""
    x, dy = make_input((9, 200), torch.bfloat16, offset=3.0), make_input((9, 200), torch.bfloat16)
    residual = make_input((9, 200), torch.bfloat16)
    weight, bias = make_input(200, torch.float32), make_input(200, torch.float32)
    cfg = dataclasses.replace(
        _looped_config(9, 256 if single_block else 64), single_block=single_block
    )
    wide = dataclasses.replace(cfg, int64_rows=True)
    kwargs = dict(residual=residual, dh=dy)
    got = _run(x, weight, bias, dy, fwd_config=wide, bwd_config=wide, **kwargs)
    want = _run(x, weight, bias, dy, fwd_config=cfg, bwd_config=cfg, **kwargs)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    if not single_block:  # and the column-parallel backward's row indices
        columns = _columns_config(9, 200, 64)
        wide_columns = dataclasses.replace(
            columns,
            int64_rows=True,
            columns=dataclasses.replace(columns.columns, int64_rows=True),
        )
        grads = [
            _run(x, weight, bias, dy, bwd_config=c, **kwargs)[4:] for c in (wide_columns, columns)
        ]
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)
    oracle = _expected(got[1].cpu(), weight, bias, dy, dh=dy)
    _check(got[:1] + (None,) + got[2:], oracle, 9)


@pytest.mark.parametrize("n", (20000,))
def test_wide_rows_default_heuristics(n):
    """Above the single-block limits (16384 forward, 8192 backward) with the real chunking."""
    x, dy = make_input((3, n), torch.bfloat16), make_input((3, n), torch.bfloat16)
    weight, bias = make_input(n, torch.bfloat16), make_input(n, torch.bfloat16)
    _check(_run(x, weight, bias, dy), _expected(x, weight, bias, dy), 3)


def test_gradients_are_bitwise_deterministic():
    x, dy = make_input((300, 256), torch.bfloat16), make_input((300, 256), torch.bfloat16)
    weight, bias = make_input(256, torch.float32), make_input(256, torch.float32)
    first, second = _run(x, weight, bias, dy), _run(x, weight, bias, dy)
    for a, b in zip(first, second, strict=True):
        if a is not None:
            assert torch.equal(a, b)


def test_rows_are_batch_invariant():
    """Row i of a batch is bitwise equal to row i normalised alone (forward and dx)."""
    x, dy = make_input((37, 500), torch.bfloat16), make_input((37, 500), torch.bfloat16)
    weight, bias = make_input(500, torch.bfloat16), make_input(500, torch.bfloat16)
    y, _, _, _, dx, _, _ = _run(x, weight, bias, dy)
    for i in (0, 17, 36):
        y_i, _, _, _, dx_i, _, _ = _run(x[i : i + 1], weight, bias, dy[i : i + 1])
        assert torch.equal(y[i : i + 1], y_i) and torch.equal(dx[i : i + 1], dx_i)


def _strided_views():
    """(name, x view, copy expected) for layouts the kernels address in place or copy once.
    Drawn at collection time, so from their own seed."""
    torch.manual_seed(1)
    base = make_input((6, 4, 80), torch.float32)
    return [
        ("sliced rows", base.reshape(24, 80)[:, :64], False),
        ("every other row", base.reshape(24, 80)[::2], False),
        ("transposed leading dims", base.transpose(0, 1), False),
        (
            "three permuted leading dims",
            make_input((2, 3, 4, 16), torch.float32).permute(2, 0, 1, 3),
            False,
        ),
        ("broadcast rows", make_input((1, 80), torch.float32).expand(5, 80), False),
        (
            "four unmergeable leading dims",
            make_input((2, 3, 2, 3, 16), torch.float32).permute(3, 2, 1, 0, 4),
            True,
        ),
        ("non-contiguous row", base.transpose(1, 2), True),
    ]


@pytest.mark.parametrize("name,x,copies", _strided_views(), ids=[v[0] for v in _strided_views()])
def test_strided_inputs(name, x, copies):
    laid_out, _ = row_layout(x, 1)
    assert (laid_out.data_ptr() != x.data_ptr()) == copies
    dy = make_input(x.shape, torch.float32).transpose(0, -2).contiguous().transpose(0, -2)
    weight, bias = make_input(x.shape[-1], torch.float32), make_input(x.shape[-1], torch.float32)
    before = [t.clone() for t in (x, dy, weight, bias)]
    rows = x.numel() // x.shape[-1]
    _check(_run(x, weight, bias, dy), _expected(x, weight, bias, dy), rows)
    for t, saved in zip((x, dy, weight, bias), before, strict=True):
        assert torch.equal(t, saved), f"{name}: an input was modified"


def test_expanded_dy():
    """dy of y.sum() is a stride-0 expand of one scalar."""
    x = make_input((7, 33), torch.float32)
    dy = torch.ones((), device=x.device).expand(7, 33)
    _check(_run(x, None, None, dy), _expected(x, None, None, dy), 7)


def test_row_offsets_past_2_31_elements():
    """Rows 2**30 elements apart: the third row starts at 2**31, past int32 offsets. The 4 GiB
    storage is reserved but never filled (torch.empty_strided, which the poison fixture leaves
    alone): only the pages of the three rows are written, so it costs no real memory."""
    n, stride = 64, 2**30

    def spread(t):
        view = torch.empty_strided(t.shape, (stride, 1), dtype=t.dtype, device=t.device)
        view.copy_(t)
        return view

    x, dy = make_input((3, n), torch.float16), make_input((3, n), torch.float16)
    weight, bias = make_input(n, torch.float16), make_input(n, torch.float16)
    got = _run(spread(x), weight, bias, spread(dy))
    _check(got, _expected(x, weight, bias, dy), 3)


def test_weight_offset():
    x, dy = make_input((37, 100), torch.float32), make_input((37, 100), torch.float32)
    weight, bias = make_input(100, torch.float32), make_input(100, torch.float32)
    got = _run(x, weight, bias, dy, weight_offset=1.0)
    _check(got, _expected(x, weight, bias, dy, weight_offset=1.0), 37)
    y_shifted = _run(x, weight + 1.0, bias, dy)[0]
    assert_close(got[0].cpu(), y_shifted.double().cpu())


@pytest.mark.slow
def test_rows_of_a_million_elements():
    """normalized_shape [256, 256, 16]: 1,048,576 columns through the looped kernels."""
    shape = (1, 256, 256, 16)
    x, dy = make_input(shape, torch.bfloat16), make_input(shape, torch.bfloat16)
    weight, bias = make_input(shape[1:], torch.float32), make_input(shape[1:], torch.float32)
    _check(
        _run(x, weight, bias, dy, n_norm_dims=3), _expected(x, weight, bias, dy, n_norm_dims=3), 1
    )


@pytest.mark.parametrize(
    "shape,n,view,align",
    [
        ((8, 4096), 4096, lambda t: t, 16),
        ((8, 4104), 4104, lambda t: t, 8),
        ((8, 80), 64, lambda t: t[:, :64], 16),
        ((8, 4100), 4096, lambda t: t[:, :4096], 4),
        ((8, 3), 3, lambda t: t, 1),
        ((1, 4104), 4104, lambda t: t.expand(5, 4104), 8),
    ],
)
def test_vector_align_divides_the_width_and_every_stride(shape, n, view, align):
    """The ALIGN the kernels assert: a wrong (too large) one would misalign vector loads."""
    x = view(torch.zeros(shape))
    _, layout = row_layout(x, 1)
    assert vector_align(n, layout) == align
    assert n % align == 0 and all(s % align == 0 for s in layout.strides)


def test_every_launch_goes_through_the_registry_with_a_role_per_tensor():
    """The seam of the traffic and compile reports: the launchers launch every kernel through
    ``registry.launch``, and every tensor a launch passes has a role there."""
    launches = []

    def record(launch, run):
        launches.append(launch)
        run()

    x, dy = make_input((9, 200), torch.float32), make_input((9, 200), torch.float32)
    weight, bias = make_input(200, torch.float32), make_input(200, torch.float32)
    with registry.intercepted(record):
        for cfg in (None, _looped_config(9, 64)):
            _run(x, weight, bias, dy, residual=dy, dh=dy, fwd_config=cfg, bwd_config=cfg)
            _run(x, weight, None, dy, is_rms=True, fwd_config=cfg, bwd_config=cfg)
        _run(x, weight, bias, dy, dh=dy, bwd_config=_columns_config(9, 200, 64))
    assert {launch.kernel.name for launch in launches} == {k.name for k in registry.KERNELS}
    for launch in launches:
        tensors = {n for n, a in launch.named_args().items() if isinstance(a, torch.Tensor)}
        assert tensors <= set(launch.kernel.pointers), launch.kernel.name
    for kernel in registry.KERNELS:
        assert set(kernel.pointers) | set(kernel.row_scales) <= set(kernel.arg_names), kernel.name


def test_the_launchers_shadow_their_modules_however_imported():
    """``kernels.norm_fwd`` is the launcher even when its module is imported first."""
    code = (
        "import importlib; module = importlib.import_module('layernorm_gpu.kernels.norm_fwd'); "
        "import layernorm_gpu.kernels as k; assert k.norm_fwd is module.norm_fwd; "
        "from layernorm_gpu.kernels import norm_bwd; assert callable(norm_bwd)"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
