"""Forward of LayerNorm and RMSNorm (optionally fused with a residual add): kernel and launcher.

Math (per row ``s`` of ``N`` elements, all in float32 whatever the I/O dtype)::

    h      = x + residual            (only with a residual; rounded to h's dtype, stored)
    mean   = sum(h) / N              (LayerNorm; RMSNorm has no mean)
    var    = sum((h - mean)^2) / N   (RMSNorm: sum(h^2) / N)
    rstd   = 1 / sqrt(var + eps)
    x_hat  = (h - mean) * rstd
    y      = x_hat * (weight + weight_offset) + bias

The mean is taken on ``h - pivot`` with ``pivot = h[s, 0]``: a constant row then has a centred
value of exactly zero (so ``y == bias`` exactly), and rows offset far from zero lose no bits
before the centred variance. Rows up to the single-block width are read once and kept in
registers; wider rows are merged chunk by chunk (Chan's parallel variance) and re-read once
for the output.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .heuristics import NormConfig, Target, forward_config
from .rows import row_layout, row_start, vector_align
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
def _norm_fwd_kernel(
    X,  # (M, N) rows of x, addressed through (x_d1, x_d2, x_s*)
    R,  # (M, N) rows of the residual, or None
    H,  # (M, N) contiguous out: h = x + residual, or None
    Y,  # (M, N) contiguous out, x's dtype
    W,  # (N,) weight, or None
    B,  # (N,) bias, or None
    Mean,  # (M,) float32 out, LayerNorm only
    Rstd,  # (M,) float32 out
    M,
    N,
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
    SINGLE_BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """One program normalises ``tiles_per_program`` consecutive tiles of ``ROWS`` rows.

    Single block: a tile is ``(ROWS, BLOCK_N >= N)``, x read once, y written once. Looped:
    pass 1 merges per-chunk (mean, M2) of ``BLOCK_N`` columns (Chan), storing h if fused;
    pass 2 re-reads x (or h) and writes y. Writes mean (LayerNorm) and rstd per row.
    """
    pid = tl.program_id(0)
    if SINGLE_BLOCK:
        # N is a multiple of ALIGN: written so the compiler sees it, the column masks then come
        # in whole vectors and the loads stay 128-bit. (Not in the looped kernel: there it made
        # ptxas use an 8-byte stack frame for the fused float32 forward on sm_90.)
        N = (N // ALIGN) * ALIGN
    cols = tl.arange(0, BLOCK_N)
    h_dtype = H.dtype.element_ty if HAS_RESIDUAL else tl.float32
    if SINGLE_BLOCK:
        col_mask = cols < N
        w, b = _load_affine(W, B, cols, col_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
    for i in range(tiles_per_program):
        rows = (pid * tiles_per_program + i) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < M
        x_row = row_start(rows, x_d1, x_d2, x_s0, x_s1, x_s2, ALIGN)
        r_row = row_start(rows, r_d1, r_d2, r_s0, r_s1, r_s2, ALIGN)
        out_row = rows.to(tl.int64) * N
        pivot = tl.zeros([ROWS], tl.float32)
        if SINGLE_BLOCK:
            mask = row_mask[:, None] & col_mask[None, :]
            h = _load_h(
                X,
                R,
                x_row[:, None] + cols[None, :],
                r_row[:, None] + cols[None, :],
                mask,
                HAS_RESIDUAL,
                h_dtype,
            )
            if HAS_RESIDUAL:
                tl.store(H + out_row[:, None] + cols[None, :], h, mask=mask)
            if IS_RMS:
                var = tl.sum(h * h, axis=1) / N
                centred = h
            else:
                # h[:, 0] taken from registers, so x is still read exactly once
                pivot = tl.sum(tl.where(cols[None, :] == 0, h, 0.0), axis=1)
                shifted = tl.where(mask, h - pivot[:, None], 0.0)
                mean_shifted = tl.sum(shifted, axis=1) / N
                centred = tl.where(mask, shifted - mean_shifted[:, None], 0.0)
                var = tl.sum(centred * centred, axis=1) / N
            rstd = 1.0 / tl.sqrt(var + eps)
            x_hat = centred * rstd[:, None]
            y = x_hat * w[None, :] + b[None, :]
            tl.store(Y + out_row[:, None] + cols[None, :], y, mask=mask)
        else:
            if not IS_RMS:
                # one element per row (and wide rows): a negligible re-read of x
                pivot = _load_h(X, R, x_row, r_row, row_mask, HAS_RESIDUAL, h_dtype)
            count = 0.0
            mean_shifted = tl.zeros([ROWS], tl.float32)
            m2 = tl.zeros([ROWS], tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < N)[None, :]
                h = _load_h(
                    X,
                    R,
                    x_row[:, None] + c[None, :],
                    r_row[:, None] + c[None, :],
                    mask,
                    HAS_RESIDUAL,
                    h_dtype,
                )
                if HAS_RESIDUAL:
                    tl.store(H + out_row[:, None] + c[None, :], h, mask=mask)
                if IS_RMS:
                    m2 += tl.sum(h * h, axis=1)
                else:
                    n_chunk = tl.minimum(N - start, BLOCK_N).to(tl.float32)
                    shifted = tl.where(mask, h - pivot[:, None], 0.0)
                    mean_chunk = tl.sum(shifted, axis=1) / n_chunk
                    centred = tl.where(mask, shifted - mean_chunk[:, None], 0.0)
                    m2_chunk = tl.sum(centred * centred, axis=1)
                    total = count + n_chunk
                    delta = mean_chunk - mean_shifted
                    mean_shifted += delta * (n_chunk / total)
                    m2 += m2_chunk + delta * delta * (count * n_chunk / total)
                    count = total
            rstd = 1.0 / tl.sqrt(m2 / N + eps)
            if HAS_RESIDUAL:
                # pass 2 reads back h written above by other threads of this program
                tl.debug_barrier()
            for start in range(0, N, BLOCK_N):
                c = start + cols
                c_mask = c < N
                mask = row_mask[:, None] & c_mask[None, :]
                if HAS_RESIDUAL:
                    h = tl.load(H + out_row[:, None] + c[None, :], mask=mask, other=0.0)
                else:
                    h = tl.load(X + x_row[:, None] + c[None, :], mask=mask, other=0.0)
                h = h.to(tl.float32)
                if not IS_RMS:
                    h = h - pivot[:, None] - mean_shifted[:, None]
                w, b = _load_affine(W, B, c, c_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
                y = h * rstd[:, None] * w[None, :] + b[None, :]
                tl.store(Y + out_row[:, None] + c[None, :], y, mask=mask)
        if not IS_RMS:
            tl.store(Mean + rows, pivot + mean_shifted, mask=row_mask)
        tl.store(Rstd + rows, rstd, mask=row_mask)


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
        config: launch config override (tests, reports); default from the heuristics.

    Returns:
        ``(y, h, mean, rstd)``: y ``x.shape`` in x's dtype, contiguous; h likewise in h_dtype
        (None without residual); mean (LayerNorm; zeros for RMSNorm) and rstd ``(M,)`` float32.
    """
    n_cols = math.prod(x.shape[x.dim() - n_norm_dims :])
    n_rows = math.prod(x.shape[: x.dim() - n_norm_dims])
    if x_hat_dtype is not None:
        raise NotImplementedError("the kernels do not round x_hat yet (casting='torch' only)")
    y = torch.empty(x.shape, dtype=y_dtype or x.dtype, device=x.device)
    h = None
    if residual is not None:
        h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    # RMSNorm has no mean: an empty tensor the kernels never touch
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
    cfg = config or forward_config(
        n_rows, n_cols, x.element_size(), target or device_target(x.device)
    )
    with launch_guard(x.device):
        _norm_fwd_kernel[(cfg.grid,)](
            x,
            residual,
            h,
            y,
            weight,
            bias,
            mean,
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
            IS_RMS=is_rms,
            HAS_RESIDUAL=residual is not None,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            SINGLE_BLOCK=cfg.single_block,
            ROWS=cfg.rows_per_tile,
            BLOCK_N=cfg.block_n,
            ALIGN=vector_align(n_cols, x_layout, r_layout),
            num_warps=cfg.num_warps,
        )
    return y, h, mean, rstd
