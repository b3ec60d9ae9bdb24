"""Backward of LayerNorm and RMSNorm: dX and deterministic dW/dB, kernels and launcher.

Math (per row, float32), with ``g = dy * (weight + weight_offset)`` (``g = dy`` without weight)::

    x_hat = (x - mean) * rstd            (RMSNorm: x * rstd)
    c1    = sum(x_hat * g) / N
    c2    = sum(g) / N                   (RMSNorm: 0)
    dx    = (g - x_hat * c1 - c2) * rstd (+ dh_out, the gradient on a fused residual output h)
    dW    = sum over rows of dy * x_hat
    dB    = sum over rows of dy

dW and dB: each program of a grid of at most one per SM accumulates its rows in float32
registers and writes one partial row; ``_sum_partials_kernel`` then adds the partial rows
column by column in a fixed order. No atomics, no locks: the same inputs give bitwise-equal
gradients on every run.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .heuristics import NormConfig, Target, backward_config, partial_sum_config
from .rows import row_layout, row_start, vector_align
from .target import device_target, launch_guard


@triton.jit
def _x_hat_and_g(
    X,
    DY,
    W,
    x_offs,
    dy_offs,
    cols,
    mask,
    col_mask,
    mean,
    rstd,
    weight_offset,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
):
    """float32 ``(x_hat, g, dy)`` of a tile; masked lanes are exactly zero."""
    x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + dy_offs, mask=mask, other=0.0).to(tl.float32)
    if IS_RMS:
        x_hat = x * rstd[:, None]
    else:
        x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + weight_offset
        g = dy * w[None, :]
    else:
        g = dy
    return x_hat, g, dy


@triton.jit
def _tile_rows(
    first,
    M,
    Mean,
    Rstd,
    x_d1,
    x_d2,
    x_s0,
    x_s1,
    x_s2,
    dy_d1,
    dy_d2,
    dy_s0,
    dy_s1,
    dy_s2,
    IS_RMS: tl.constexpr,
    ROWS: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The rows of the tile starting at row ``first``: their mask, the offsets of their x and
    dy rows, and their float32 (mean, rstd) (mean 0 for RMSNorm; 0 for rows past M)."""
    rows = first + tl.arange(0, ROWS)
    row_mask = rows < M
    rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
    mean = tl.zeros([ROWS], tl.float32)
    if not IS_RMS:
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
    x_row = row_start(rows, x_d1, x_d2, x_s0, x_s1, x_s2, ALIGN)
    dy_row = row_start(rows, dy_d1, dy_d2, dy_s0, dy_s1, dy_s2, ALIGN)
    return rows, row_mask, x_row, dy_row, mean, rstd


@triton.jit
def _store_dx(
    DX,
    DH,
    rows,
    cols,
    mask,
    N,
    x_hat,
    g,
    c1,
    c2,
    rstd,
    dh_d1,
    dh_d2,
    dh_s0,
    dh_s1,
    dh_s2,
    HAS_DH: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """dx = (g - x_hat * c1 - c2) * rstd (+ dh), rounded once to DX's dtype."""
    dx = (g - x_hat * c1[:, None] - c2[:, None]) * rstd[:, None]
    if HAS_DH:
        dh_row = row_start(rows, dh_d1, dh_d2, dh_s0, dh_s1, dh_s2, ALIGN)
        dx += tl.load(DH + dh_row[:, None] + cols[None, :], mask=mask, other=0.0)
    tl.store(DX + rows.to(tl.int64)[:, None] * N + cols[None, :], dx, mask=mask)


@triton.jit
def _norm_bwd_kernel(
    X,  # (M, N) saved input of the norm, addressed through (x_d1, x_d2, x_s*)
    DY,  # (M, N) gradient of y, addressed through (dy_d1, dy_d2, dy_s*)
    DH,  # (M, N) gradient of the fused residual output h, or None
    DX,  # (M, N) contiguous out, X's dtype
    W,  # (N,) weight, or None
    Mean,  # (M,) float32, LayerNorm only
    Rstd,  # (M,) float32
    DW_partial,  # (grid, N) float32 out, or None
    DB_partial,  # (grid, N) float32 out, or None
    C,  # (2, M) float32 scratch for (c1, c2), looped kernel only
    M,
    N,
    x_d1,
    x_d2,
    x_s0,
    x_s1,
    x_s2,
    dy_d1,
    dy_d2,
    dy_s0,
    dy_s1,
    dy_s2,
    dh_d1,
    dh_d2,
    dh_s0,
    dh_s1,
    dh_s2,
    weight_offset,
    tiles_per_program,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """One program computes dx for ``tiles_per_program`` tiles of ``ROWS`` rows and writes its
    row ``pid`` of the dW/dB partials (every program writes its row, even a short one).

    Single block: each tile is read once (x, dy), dx written once, dW/dB in registers.
    Looped: pass 1 computes c1, c2 per row into ``C``; pass 2 walks column chunks, and for
    each chunk all the program's rows, so each partial chunk is written once.
    """
    pid = tl.program_id(0)
    N = (N // ALIGN) * ALIGN  # a multiple of ALIGN, visibly to the compiler (see norm_fwd)
    cols = tl.arange(0, BLOCK_N)
    first_row = pid * tiles_per_program * ROWS
    if SINGLE_BLOCK:
        col_mask = cols < N
        dw_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        db_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        for i in range(tiles_per_program):
            rows, row_mask, x_row, dy_row, mean, rstd = _tile_rows(
                first_row + i * ROWS,
                M,
                Mean,
                Rstd,
                x_d1,
                x_d2,
                x_s0,
                x_s1,
                x_s2,
                dy_d1,
                dy_d2,
                dy_s0,
                dy_s1,
                dy_s2,
                IS_RMS,
                ROWS,
                ALIGN,
            )
            mask = row_mask[:, None] & col_mask[None, :]
            x_hat, g, dy = _x_hat_and_g(
                X,
                DY,
                W,
                x_row[:, None] + cols[None, :],
                dy_row[:, None] + cols[None, :],
                cols,
                mask,
                col_mask,
                mean,
                rstd,
                weight_offset,
                IS_RMS,
                HAS_WEIGHT,
            )
            c1 = tl.sum(x_hat * g, axis=1) / N
            c2 = tl.zeros([ROWS], tl.float32)
            if not IS_RMS:
                c2 = tl.sum(g, axis=1) / N
            _store_dx(
                DX,
                DH,
                rows,
                cols,
                mask,
                N,
                x_hat,
                g,
                c1,
                c2,
                rstd,
                dh_d1,
                dh_d2,
                dh_s0,
                dh_s1,
                dh_s2,
                HAS_DH,
                ALIGN,
            )
            if COMPUTE_DW:
                dw_acc += dy * x_hat
            if COMPUTE_DB:
                db_acc += dy
        if COMPUTE_DW:
            tl.store(
                DW_partial + pid.to(tl.int64) * N + cols, tl.sum(dw_acc, axis=0), mask=col_mask
            )
        if COMPUTE_DB:
            tl.store(
                DB_partial + pid.to(tl.int64) * N + cols, tl.sum(db_acc, axis=0), mask=col_mask
            )
    else:
        for i in range(tiles_per_program):
            rows, row_mask, x_row, dy_row, mean, rstd = _tile_rows(
                first_row + i * ROWS,
                M,
                Mean,
                Rstd,
                x_d1,
                x_d2,
                x_s0,
                x_s1,
                x_s2,
                dy_d1,
                dy_d2,
                dy_s0,
                dy_s1,
                dy_s2,
                IS_RMS,
                ROWS,
                ALIGN,
            )
            sum_xg = tl.zeros([ROWS], tl.float32)
            sum_g = tl.zeros([ROWS], tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                c_mask = c < N
                mask = row_mask[:, None] & c_mask[None, :]
                x_hat, g, dy = _x_hat_and_g(
                    X,
                    DY,
                    W,
                    x_row[:, None] + c[None, :],
                    dy_row[:, None] + c[None, :],
                    c,
                    mask,
                    c_mask,
                    mean,
                    rstd,
                    weight_offset,
                    IS_RMS,
                    HAS_WEIGHT,
                )
                sum_xg += tl.sum(x_hat * g, axis=1)
                if not IS_RMS:
                    sum_g += tl.sum(g, axis=1)
            tl.store(C + rows, sum_xg / N, mask=row_mask)
            tl.store(C + M + rows, sum_g / N, mask=row_mask)
        # pass 2 reads c1, c2 written above by other threads of this program
        tl.debug_barrier()
        for start in range(0, N, BLOCK_N):
            c = start + cols
            c_mask = c < N
            dw_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
            db_acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
            for i in range(tiles_per_program):
                rows, row_mask, x_row, dy_row, mean, rstd = _tile_rows(
                    first_row + i * ROWS,
                    M,
                    Mean,
                    Rstd,
                    x_d1,
                    x_d2,
                    x_s0,
                    x_s1,
                    x_s2,
                    dy_d1,
                    dy_d2,
                    dy_s0,
                    dy_s1,
                    dy_s2,
                    IS_RMS,
                    ROWS,
                    ALIGN,
                )
                mask = row_mask[:, None] & c_mask[None, :]
                x_hat, g, dy = _x_hat_and_g(
                    X,
                    DY,
                    W,
                    x_row[:, None] + c[None, :],
                    dy_row[:, None] + c[None, :],
                    c,
                    mask,
                    c_mask,
                    mean,
                    rstd,
                    weight_offset,
                    IS_RMS,
                    HAS_WEIGHT,
                )
                c1 = tl.load(C + rows, mask=row_mask, other=0.0)
                c2 = tl.load(C + M + rows, mask=row_mask, other=0.0)
                _store_dx(
                    DX,
                    DH,
                    rows,
                    c,
                    mask,
                    N,
                    x_hat,
                    g,
                    c1,
                    c2,
                    rstd,
                    dh_d1,
                    dh_d2,
                    dh_s0,
                    dh_s1,
                    dh_s2,
                    HAS_DH,
                    ALIGN,
                )
                if COMPUTE_DW:
                    dw_acc += dy * x_hat
                if COMPUTE_DB:
                    db_acc += dy
            if COMPUTE_DW:
                tl.store(DW_partial + pid.to(tl.int64) * N + c, tl.sum(dw_acc, axis=0), mask=c_mask)
            if COMPUTE_DB:
                tl.store(DB_partial + pid.to(tl.int64) * N + c, tl.sum(db_acc, axis=0), mask=c_mask)


@triton.jit
def _sum_partials_kernel(
    DW_partial,  # (P, N) float32, or None
    DB_partial,  # (P, N) float32, or None
    DW,  # (N,) out, weight's dtype
    DB,  # (N,) out, bias's dtype
    P,
    N,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program sums ``BLOCK_N`` columns of the partial rows, in row order, in float32."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    dw = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < P)[:, None] & col_mask[None, :]
        offs = p.to(tl.int64)[:, None] * N + cols[None, :]
        if COMPUTE_DW:
            dw += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if COMPUTE_DB:
            db += tl.load(DB_partial + offs, mask=mask, other=0.0)
    if COMPUTE_DW:
        tl.store(DW + cols, tl.sum(dw, axis=0), mask=col_mask)
    if COMPUTE_DB:
        tl.store(DB + cols, tl.sum(db, axis=0), mask=col_mask)


def norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dh: torch.Tensor | None = None,
    *,
    n_norm_dims: int,
    is_rms: bool,
    weight_offset: float = 0.0,
    dweight_dtype: torch.dtype | None = None,
    dbias_dtype: torch.dtype | None = None,
    config: NormConfig | None = None,
    target: Target | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward over the rows of ``x`` (its last ``n_norm_dims`` dims are one row).

    Args:
        dy: gradient of y, ``x.shape``, any strides.
        x: the forward's input of the norm (h when fused), ``(*lead, *norm)``.
        weight: ``norm`` shape or None. mean, rstd: ``(M,)`` float32 from the forward.
        dh: gradient of the fused residual output h (added to dx), or None.
        dweight_dtype / dbias_dtype: dtype of dW / dB, or None to skip that gradient.

    Returns:
        ``(dx, dweight, dbias)``: dx ``x.shape`` in x's dtype, contiguous; dW/dB ``norm``
        shape or None.
    """
    norm_shape = x.shape[x.dim() - n_norm_dims :]
    n_cols = math.prod(norm_shape)
    n_rows = math.prod(x.shape[: x.dim() - n_norm_dims])
    device = x.device
    dx = torch.empty(x.shape, dtype=x.dtype, device=device)
    dweight = dbias = None
    if dweight_dtype is not None:
        dweight = torch.empty(norm_shape, dtype=dweight_dtype, device=device)
    if dbias_dtype is not None:
        dbias = torch.empty(norm_shape, dtype=dbias_dtype, device=device)
    if n_rows == 0 or n_cols == 0:
        for grad in (dweight, dbias):
            if grad is not None:
                grad.zero_()
        return dx, dweight, dbias
    x, x_layout = row_layout(x, n_norm_dims)
    dy, dy_layout = row_layout(dy, n_norm_dims)
    dh_args, dh_layout = (1, 1, 0, 0, 0), None
    if dh is not None:
        dh, dh_layout = row_layout(dh, n_norm_dims)
        dh_args = (dh_layout.d1, dh_layout.d2, *dh_layout.strides)
    cfg = config or backward_config(
        n_rows, n_cols, x.element_size(), target or device_target(device)
    )
    partial = {}
    for name, grad in (("dw", dweight), ("db", dbias)):
        if grad is not None:
            partial[name] = torch.empty((cfg.grid, n_cols), dtype=torch.float32, device=device)
    scratch = None
    if not cfg.single_block:
        scratch = torch.empty((2, n_rows), dtype=torch.float32, device=device)
    with launch_guard(device):
        _norm_bwd_kernel[(cfg.grid,)](
            x,
            dy,
            dh,
            dx,
            weight,
            mean,
            rstd,
            partial.get("dw"),
            partial.get("db"),
            scratch,
            n_rows,
            n_cols,
            x_layout.d1,
            x_layout.d2,
            *x_layout.strides,
            dy_layout.d1,
            dy_layout.d2,
            *dy_layout.strides,
            *dh_args,
            weight_offset,
            cfg.tiles_per_program,
            IS_RMS=is_rms,
            HAS_WEIGHT=weight is not None,
            HAS_DH=dh is not None,
            COMPUTE_DW=dweight is not None,
            COMPUTE_DB=dbias is not None,
            SINGLE_BLOCK=cfg.single_block,
            ROWS=cfg.rows_per_tile,
            BLOCK_N=cfg.block_n,
            ALIGN=vector_align(n_cols, x_layout, dy_layout, dh_layout),
            num_warps=cfg.num_warps,
        )
        if partial:
            red = partial_sum_config(cfg.grid, n_cols)
            _sum_partials_kernel[(red.grid,)](
                partial.get("dw"),
                partial.get("db"),
                dweight,
                dbias,
                cfg.grid,
                n_cols,
                COMPUTE_DW=dweight is not None,
                COMPUTE_DB=dbias is not None,
                BLOCK_P=red.block_p,
                BLOCK_N=red.block_n,
                num_warps=red.num_warps,
            )
    return dx, dweight, dbias
