"""Forward of LayerNorm and RMSNorm (optionally fused with a residual add): kernels and launcher.

The math is :mod:`layernorm_gpu.reference`'s (its module docstring), per row of ``n_cols``
elements in float32 whatever the I/O dtype, with the fused add first::

    h      = x + residual           (only with a residual; rounded to h's dtype and stored)
    x_hat  = (h - mean) * rstd      (the reference's mean, centred variance and rstd)
    y      = round(x_hat, x_hat_dtype) * (weight + weight_offset) + bias, stored in y's dtype

``x_hat_dtype`` is the rounding point of the casting conventions (none by default: x_hat stays
float32); it, y's dtype and the fused add are the only roundings.

Two kernels share the helpers below: rows up to the single-block width are read once and kept
in registers (:func:`_norm_fwd_single_block_kernel`); wider rows are merged chunk by chunk
(Chan's parallel variance) and re-read once for y, from L2 (:func:`_norm_fwd_looped_kernel`).
Both are persistent (one wave of programs, each walking consecutive tiles) and software-
pipelined: their loads of x and residual are ``NUM_STAGES``-deep ``cp.async`` copies, so a
program has the next tiles (or chunks) in flight while it reduces the current one.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import occupancy
from .heuristics import NormConfig, Target, forward_config, tile_meta
from .registry import Kernel, launch
from .rows import program_id, row_layout, row_start, tile_rows, vector_align
from .target import device_target, launch_guard


@triton.jit
def _load_h(X, R, x_offs, r_offs, mask, HAS_RESIDUAL: tl.constexpr, H_DTYPE: tl.constexpr):
    """float32 values of ``h``: ``x``, or ``x + residual`` rounded to h's storage dtype."""
    h = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(R + r_offs, mask=mask, other=0.0).to(tl.float32)
        h = h.to(H_DTYPE).to(tl.float32)
    return h


@triton.jit
def _load_affine(
    W, B, cols, col_mask, weight_offset, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """float32 ``(weight + weight_offset, bias)`` for ``cols``; 1 and 0 when absent."""
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + weight_offset
    else:
        w = tl.full(cols.shape, 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(cols.shape, tl.float32)
    return w, b


@triton.jit
def _centred(h, mask, pivot, count, IS_RMS: tl.constexpr):
    """``(mean_shifted, centred, m2)`` of a ``(ROWS_PER_TILE, BLOCK_N)`` tile of ``count``
    valid columns: the mean of ``h - pivot``, the centred values (zero where masked) and the
    sum of their squares. RMSNorm: no mean, ``centred = h`` (masked lanes load as zero)."""
    if IS_RMS:
        mean_shifted = tl.zeros([h.shape[0]], tl.float32)
        centred = h
    else:
        shifted = tl.where(mask, h - pivot[:, None], 0.0)
        mean_shifted = tl.sum(shifted, axis=1) / count
        centred = tl.where(mask, shifted - mean_shifted[:, None], 0.0)
    return mean_shifted, centred, tl.sum(centred * centred, axis=1)


@triton.jit
def _normalise(centred, rstd, w, b, X_HAT_DTYPE: tl.constexpr):
    """``y = round(x_hat, X_HAT_DTYPE) * w + b`` in float32, ``x_hat = centred * rstd`` (the
    casting conventions' rounding point; ``X_HAT_DTYPE = float32``: no rounding)."""
    x_hat = (centred * rstd[:, None]).to(X_HAT_DTYPE).to(tl.float32)
    return x_hat * w[None, :] + b[None, :]


@triton.jit
def _store_stats(Mean, Rstd, rows, row_mask, mean, rstd, IS_RMS: tl.constexpr):
    """Mean (LayerNorm only: RMSNorm has none) and rstd of the tile's rows."""
    if not IS_RMS:
        tl.store(Mean + rows, mean, mask=row_mask)
    tl.store(Rstd + rows, rstd, mask=row_mask)


# tiles_per_program depends on the grid, which is sized from the compiled kernel's occupancy
# (occupancy.py): not specialised, so the kernel measured is the kernel launched.
@triton.jit(do_not_specialize=["tiles_per_program"])
def _norm_fwd_single_block_kernel(
    X,  # (n_rows, n_cols) rows of x, addressed through (x_d1, x_d2, x_s*)
    R,  # (n_rows, n_cols) rows of the residual, or None
    H,  # (n_rows, n_cols) contiguous out: h = x + residual, or None
    Y,  # (n_rows, n_cols) contiguous out, y's dtype
    W,  # (n_cols,) weight, or None
    B,  # (n_cols,) bias, or None
    Mean,  # (n_rows,) float32 out, LayerNorm only (None for RMSNorm)
    Rstd,  # (n_rows,) float32 out
    n_rows,
    n_cols,
    x_d1,
    x_d2,
    x_s0,
    x_s1,
    x_s2,
    r_d1,
    r_d2,
    r_s0,
    r_s1,
    r_s2,
    eps,
    weight_offset,
    tiles_per_program,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_HAT_DTYPE: tl.constexpr,
    ROWS_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Forward of whole rows (``BLOCK_N >= n_cols``), math of the module docstring.

    One program normalises ``tiles_per_program`` consecutive tiles of ``ROWS_PER_TILE`` rows,
    each a ``(ROWS_PER_TILE, BLOCK_N)`` block in registers: x (and residual) read once, y (and
    h) written once, one mean (LayerNorm) and rstd per row. The mean is taken on
    ``h - h[:, 0]``, so a constant row centres to exactly zero. The tile loop is pipelined
    ``NUM_STAGES`` deep (tiles ``i + 1 .. i + NUM_STAGES - 1`` load while tile ``i`` reduces).
    """
    pid = program_id(INT64_ROWS)
    # n_cols is a multiple of ALIGN: written so the compiler sees it, the column masks then
    # come in whole vectors and the loads stay 128-bit. (Not in the looped kernel: there it
    # made ptxas use an 8-byte stack frame for the fused float32 forward on sm_90.)
    n_cols = (n_cols // ALIGN) * ALIGN
    x_layout = (x_d1, x_d2, x_s0, x_s1, x_s2)
    r_layout = (r_d1, r_d2, r_s0, r_s1, r_s2)
    h_dtype = H.dtype.element_ty if HAS_RESIDUAL else tl.float32
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w, b = _load_affine(W, B, cols, col_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
    for i in tl.range(tiles_per_program, num_stages=NUM_STAGES):
        rows, row_mask = tile_rows(
            (pid * tiles_per_program + i) * ROWS_PER_TILE, n_rows, ROWS_PER_TILE
        )
        mask = row_mask[:, None] & col_mask[None, :]
        x_row = row_start(rows, x_layout, ALIGN)
        r_row = row_start(rows, r_layout, ALIGN)
        out_row = rows.to(tl.int64) * n_cols
        x_offs = x_row[:, None] + cols[None, :]
        h = _load_h(X, R, x_offs, r_row[:, None] + cols[None, :], mask, HAS_RESIDUAL, h_dtype)
        if HAS_RESIDUAL:
            tl.store(H + out_row[:, None] + cols[None, :], h, mask=mask)
        pivot = tl.zeros([ROWS_PER_TILE], tl.float32)
        if not IS_RMS:
            # h[:, 0] taken from registers, so x is still read exactly once
            pivot = tl.sum(tl.where(cols[None, :] == 0, h, 0.0), axis=1)
        mean_shifted, centred, m2 = _centred(h, mask, pivot, n_cols, IS_RMS)
        rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
        y = _normalise(centred, rstd, w, b, X_HAT_DTYPE)
        tl.store(Y + out_row[:, None] + cols[None, :], y, mask=mask)
        _store_stats(Mean, Rstd, rows, row_mask, pivot + mean_shifted, rstd, IS_RMS)


@triton.jit
def _chan_merge(count, mean, m2, n_chunk, mean_chunk, m2_chunk):
    """Merge a chunk's (count, mean, m2) into the running ones (Chan et al.)."""
    total = count + n_chunk
    delta = mean_chunk - mean
    mean += delta * (n_chunk / total)
    m2 += m2_chunk + delta * delta * (count * n_chunk / total)
    return total, mean, m2


@triton.jit(do_not_specialize=["tiles_per_program"])
def _norm_fwd_looped_kernel(
    X,  # (n_rows, n_cols) rows of x, addressed through (x_d1, x_d2, x_s*)
    R,  # (n_rows, n_cols) rows of the residual, or None
    H,  # (n_rows, n_cols) contiguous out: h = x + residual, or None
    Y,  # (n_rows, n_cols) contiguous out, y's dtype
    W,  # (n_cols,) weight, or None
    B,  # (n_cols,) bias, or None
    Mean,  # (n_rows,) float32 out, LayerNorm only (None for RMSNorm)
    Rstd,  # (n_rows,) float32 out
    n_rows,
    n_cols,
    x_d1,
    x_d2,
    x_s0,
    x_s1,
    x_s2,
    r_d1,
    r_d2,
    r_s0,
    r_s1,
    r_s2,
    eps,
    weight_offset,
    tiles_per_program,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_HAT_DTYPE: tl.constexpr,
    ROWS_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Forward of wide rows in ``BLOCK_N`` chunks, math of the module docstring.

    One program normalises ``tiles_per_program`` consecutive tiles of ``ROWS_PER_TILE`` rows.
    Pass 1 reads each chunk of x (and residual), storing h when fused, and merges the
    chunks' (mean, m2) (Chan), its loads pipelined ``NUM_STAGES`` deep; pass 2 re-reads x (or
    h) and writes y. The mean is taken on ``h - h[:, 0]`` (one extra element per row read), so
    a constant row centres to zero. Pass 2's loads are plain: its x (or h), weight and bias
    are L2 hits (the grid keeps the rows being re-read within L2), and pipelining them would
    take three buffers per stage.
    """
    pid = program_id(INT64_ROWS)
    x_layout = (x_d1, x_d2, x_s0, x_s1, x_s2)
    r_layout = (r_d1, r_d2, r_s0, r_s1, r_s2)
    h_dtype = H.dtype.element_ty if HAS_RESIDUAL else tl.float32
    cols = tl.arange(0, BLOCK_N)
    for i in range(tiles_per_program):
        rows, row_mask = tile_rows(
            (pid * tiles_per_program + i) * ROWS_PER_TILE, n_rows, ROWS_PER_TILE
        )
        x_row = row_start(rows, x_layout, ALIGN)
        r_row = row_start(rows, r_layout, ALIGN)
        out_row = rows.to(tl.int64) * n_cols
        pivot = tl.zeros([ROWS_PER_TILE], tl.float32)
        if not IS_RMS:
            pivot = _load_h(X, R, x_row, r_row, row_mask, HAS_RESIDUAL, h_dtype)
        count = 0.0
        mean_shifted = tl.zeros([ROWS_PER_TILE], tl.float32)
        m2 = tl.zeros([ROWS_PER_TILE], tl.float32)
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            c = start + cols
            mask = row_mask[:, None] & (c < n_cols)[None, :]
            x_offs = x_row[:, None] + c[None, :]
            h = _load_h(X, R, x_offs, r_row[:, None] + c[None, :], mask, HAS_RESIDUAL, h_dtype)
            if HAS_RESIDUAL:
                tl.store(H + out_row[:, None] + c[None, :], h, mask=mask)
            n_chunk = tl.minimum(n_cols - start, BLOCK_N).to(tl.float32)
            mean_chunk, _, m2_chunk = _centred(h, mask, pivot, n_chunk, IS_RMS)
            if IS_RMS:
                m2 += m2_chunk
            else:
                count, mean_shifted, m2 = _chan_merge(
                    count, mean_shifted, m2, n_chunk, mean_chunk, m2_chunk
                )
        rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
        if HAS_RESIDUAL:
            # pass 2 reads back h written above by other threads of this program
            tl.debug_barrier()
        for start in range(0, n_cols, BLOCK_N):
            c = start + cols
            c_mask = c < n_cols
            mask = row_mask[:, None] & c_mask[None, :]
            if HAS_RESIDUAL:
                h = tl.load(H + out_row[:, None] + c[None, :], mask=mask, other=0.0)
            else:
                h = tl.load(X + x_row[:, None] + c[None, :], mask=mask, other=0.0)
            centred = h.to(tl.float32)
            if not IS_RMS:
                centred = centred - pivot[:, None] - mean_shifted[:, None]
            w, b = _load_affine(W, B, c, c_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
            y = _normalise(centred, rstd, w, b, X_HAT_DTYPE)
            tl.store(Y + out_row[:, None] + c[None, :], y, mask=mask)
        _store_stats(Mean, Rstd, rows, row_mask, pivot + mean_shifted, rstd, IS_RMS)


_POINTERS = {
    "X": "x",
    "R": "residual",
    "H": "h",
    "Y": "y",
    "W": "weight",
    "B": "bias",
    "Mean": "mean",
    "Rstd": "rstd",
}
_ROW_SCALES = ("n_cols", "x_s0", "x_s1", "x_s2", "r_s0", "r_s1", "r_s2")
NORM_FWD_SINGLE_BLOCK = Kernel(
    "norm_fwd_single_block", _norm_fwd_single_block_kernel, "fwd", False, _POINTERS, _ROW_SCALES
)
NORM_FWD_LOOPED = Kernel(
    "norm_fwd_looped", _norm_fwd_looped_kernel, "fwd", True, _POINTERS, _ROW_SCALES
)
KERNELS = (NORM_FWD_SINGLE_BLOCK, NORM_FWD_LOOPED)

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    n_norm_dims: int,
    eps: float,
    is_rms: bool,
    weight_offset: float = 0.0,
    h_dtype: torch.dtype | None = None,
    y_dtype: torch.dtype | None = None,
    x_hat_dtype: torch.dtype | None = None,
    config: NormConfig | None = None,
    target: Target | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launch the forward over the rows of ``x`` (its last ``n_norm_dims`` dims are one row).

    Args:
        x: ``(*lead, *norm)`` float16/bfloat16/float32, rows contiguous or copied once.
        residual: same shape as x or None; fused ``h = x + residual`` stored in ``h_dtype``.
        weight, bias: ``norm`` shape (contiguous) or None.
        y_dtype: dtype of y (None: x's).
        x_hat_dtype: x_hat is rounded to this dtype before the affine (None: not rounded).
        config: launch config override (tests, reports); default from the heuristics, its
            grid one wave of the programs per SM the compiled kernel fits (CUDA; elsewhere
            the heuristics' estimate).

    Returns:
        ``(y, h, mean, rstd)``: y ``x.shape`` in y_dtype, contiguous; h likewise in h_dtype
        (None without residual); mean and rstd ``(n_rows,)`` float32 (RMSNorm: mean is an
        empty ``(0,)`` tensor, never written). One kernel launch, no other work (none when
        there are no rows or columns).
    """
    n_cols = math.prod(x.shape[x.dim() - n_norm_dims :])
    n_rows = math.prod(x.shape[: x.dim() - n_norm_dims])
    y = torch.empty(x.shape, dtype=y_dtype or x.dtype, device=x.device)
    h = None
    if residual is not None:
        h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    mean = torch.empty(0 if is_rms else n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0 or n_cols == 0:
        mean.zero_()
        rstd.fill_(math.nan)  # as torch: the variance of an empty row is 0 / 0
        return y, h, mean, rstd
    x, x_layout = row_layout(x, n_norm_dims)
    r_layout = None
    if residual is not None:
        residual, r_layout = row_layout(residual, n_norm_dims)
    sizes = dict(
        residual_elem_size=0 if residual is None else residual.element_size(),
        h_elem_size=0 if h is None else h.element_size(),
    )
    target = target or device_target(x.device)
    cfg = config or forward_config(n_rows, n_cols, x.element_size(), target, **sizes)

    def launch_args(cfg: NormConfig) -> tuple[Kernel, list, dict]:
        args = [
            x,
            residual,
            h,
            y,
            weight,
            bias,
            None if is_rms else mean,
            rstd,
            n_rows,
            n_cols,
            x_layout.d1,
            x_layout.d2,
            *x_layout.strides,
            *((r_layout.d1, r_layout.d2, *r_layout.strides) if r_layout else (1, 1, 0, 0, 0)),
            eps,
            weight_offset,
            cfg.tiles_per_program,
        ]
        kwargs = dict(
            IS_RMS=is_rms,
            HAS_RESIDUAL=residual is not None,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            X_HAT_DTYPE=_TL_DTYPES[x_hat_dtype or torch.float32],
            ALIGN=vector_align(n_cols, x_layout, r_layout),
            **tile_meta(cfg),
        )
        return NORM_FWD_SINGLE_BLOCK if cfg.single_block else NORM_FWD_LOOPED, args, kwargs

    kernel, args, kwargs = launch_args(cfg)
    with launch_guard(x.device):
        if config is None:
            # one wave of the programs the compiled kernel fits per SM (CUDA only); the tile
            # shape and stages stay (they depend on N, not on the grid)
            per_sm = occupancy.programs_per_sm(kernel.fn, args, kwargs, x.device)
            if per_sm is not None:
                cfg = forward_config(
                    n_rows, n_cols, x.element_size(), target, **sizes, programs_per_sm=per_sm
                )
                kernel, args, kwargs = launch_args(cfg)
        launch(kernel, (cfg.grid,), *args, **kwargs)
    return y, h, mean, rstd
