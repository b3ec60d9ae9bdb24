"""Backward of LayerNorm and RMSNorm: dx and deterministic dW/dB, kernels and launcher.

The math is :mod:`layernorm_gpu.reference`'s (its module docstring), per row of ``n_cols``
elements in float32, with ``g = dy * (weight + weight_offset)`` (``g = dy`` without weight)::

    x_hat = (x - mean) * rstd              (RMSNorm: x * rstd)
    c1    = sum(x_hat * g) / n_cols
    c2    = sum(g) / n_cols                (RMSNorm: 0)
    dx    = (g - x_hat * c1 - c2) * rstd   (+ dh, the gradient on a fused residual output h)
    dW    = sum over rows of dy * x_hat
    dB    = sum over rows of dy

dW and dB, deterministically (no atomics, no locks: the same inputs give bitwise-equal
gradients on every run). Rows up to the single-block width are held whole
(:func:`_norm_bwd_single_block_kernel`): each program of a grid of at most one per SM
accumulates its rows in float32 registers and writes one partial row, which
:func:`_sum_partials_kernel` adds up column by column in a fixed order. Wider rows are walked in
chunks (:func:`_norm_bwd_looped_kernel`) in bands of one row tile per program, small enough to
stay in L2 while each program re-reads its own rows for dx and, for its own slice of columns,
every row of the band for dW and dB: one launch, no partial rows. Where not even such a band
fits in L2, the looped kernel computes c1, c2 only and the single-block kernel, switched to
``COLUMNS``, computes dx, dW and dB over blocks of columns of every row (heuristics'
BWD_MIN_SM_FRACTION).
The kernels software-pipeline their loops (``tl.range(..., num_stages=NUM_STAGES)``:
asynchronous copies of the next tiles while one is reduced) to keep enough bytes in flight.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .heuristics import (
    NormConfig,
    Target,
    backward_config,
    backward_slice,
    partial_sum_config,
    register_budget,
    tile_meta,
)
from .registry import Kernel, launch
from .rows import program_id, row_layout, row_start, tile_rows, vector_align
from .target import device_target, launch_guard


@triton.jit
def _tile(
    Mean,
    Rstd,
    first_row,
    n_rows,
    x_layout,
    dy_layout,
    IS_RMS: tl.constexpr,
    X_IS_Y: tl.constexpr,
    ROWS_PER_TILE: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """The tile starting at ``first_row``: its rows, their mask, the offsets of their x and dy
    rows and their float32 ``(mean, rstd)`` (mean 0 for RMSNorm and when x_hat comes from y;
    both 0 past ``n_rows``)."""
    rows, row_mask = tile_rows(first_row, n_rows, ROWS_PER_TILE)
    rstd = tl.load(Rstd + rows, mask=row_mask, other=0.0)
    mean = tl.zeros([ROWS_PER_TILE], tl.float32)
    if not IS_RMS and not X_IS_Y:
        mean = tl.load(Mean + rows, mask=row_mask, other=0.0)
    x_row = row_start(rows, x_layout, ALIGN)
    dy_row = row_start(rows, dy_layout, ALIGN)
    return rows, row_mask, x_row, dy_row, mean, rstd


@triton.jit
def _affine(W, B, cols, col_mask, weight_offset, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """float32 ``(w + weight_offset, b)`` at ``cols`` (0.0 placeholders for absent ones, which
    :func:`_x_hat_and_g` never reads)."""
    w = 0.0
    b = 0.0
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_mask, other=1.0).to(tl.float32) + weight_offset
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def _x_hat_and_g(
    X,
    DY,
    x_row,
    dy_row,
    row_mask,
    cols,
    col_mask,
    mean,
    rstd,
    w,
    b,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_IS_Y: tl.constexpr,
):
    """Load x and dy at (the tile's rows) x ``cols``: float32 ``(mask, x_hat, g, dy)``, masked
    lanes exactly zero; ``w``, ``b`` from :func:`_affine` at ``cols``. With ``X_IS_Y``, X holds
    the forward's y and x_hat is recomputed as ``(y - b) / (w + weight_offset)`` (the
    memory-efficient backward)."""
    mask = row_mask[:, None] & col_mask[None, :]
    x_offs = x_row[:, None] + cols[None, :]
    dy_offs = dy_row[:, None] + cols[None, :]
    x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + dy_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        g = dy * w[None, :]
    else:
        g = dy
    if X_IS_Y:
        if HAS_BIAS:
            x = x - b[None, :]
        if HAS_WEIGHT:
            x = x / w[None, :]
        x_hat = tl.where(mask, x, 0.0)
    elif IS_RMS:
        x_hat = x * rstd[:, None]
    else:
        x_hat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    return mask, x_hat, g, dy


@triton.jit
def _chunk(
    X,
    DY,
    W,
    B,
    x_row,
    dy_row,
    row_mask,
    c,
    n_cols,
    mean,
    rstd,
    weight_offset,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_IS_Y: tl.constexpr,
):
    """A chunk of the looped kernel's row walk, at columns ``c``: ``(mask, x_hat, g)`` of the
    tile's rows (:func:`_x_hat_and_g`, with the columns' weight and bias)."""
    c_mask = c < n_cols
    w, b = _affine(W, B, c, c_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
    mask, x_hat, g, _ = _x_hat_and_g(
        X, DY, x_row, dy_row, row_mask, c, c_mask, mean, rstd, w, b, IS_RMS, HAS_WEIGHT,
        HAS_BIAS, X_IS_Y,
    )  # fmt: skip
    return mask, x_hat, g


@triton.jit
def _coefficients(x_hat, g, n_cols, IS_RMS: tl.constexpr):
    """Per-row ``c1 = sum(x_hat * g) / n_cols`` and ``c2 = sum(g) / n_cols`` of whole rows
    (RMSNorm: c2 = 0)."""
    c1 = tl.sum(x_hat * g, axis=1) / n_cols
    c2 = tl.zeros([g.shape[0]], tl.float32)
    if not IS_RMS:
        c2 = tl.sum(g, axis=1) / n_cols
    return c1, c2


@triton.jit
def _store_dx(
    DX,
    DH,
    rows,
    cols,
    mask,
    n_cols,
    x_hat,
    g,
    c1,
    c2,
    rstd,
    dh_layout,
    HAS_DH: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """dx = (g - x_hat * c1 - c2) * rstd (+ dh), rounded once to DX's dtype."""
    dx = (g - x_hat * c1[:, None] - c2[:, None]) * rstd[:, None]
    if HAS_DH:
        dh_row = row_start(rows, dh_layout, ALIGN)
        dx += tl.load(DH + dh_row[:, None] + cols[None, :], mask=mask, other=0.0)
    tl.store(DX + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], dx, mask=mask)


@triton.jit
def _store_column_sums(
    DW,
    DB,
    offs,
    col_mask,
    dw_acc,
    db_acc,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
):
    """The column sums of the accumulators, stored at ``DW + offs`` and ``DB + offs`` (a row of
    the dW/dB partials, or dW and dB themselves) in those tensors' dtypes."""
    if COMPUTE_DW:
        tl.store(DW + offs, tl.sum(dw_acc, axis=0), col_mask)
    if COMPUTE_DB:
        tl.store(DB + offs, tl.sum(db_acc, axis=0), col_mask)


@triton.jit
def _norm_bwd_single_block_kernel(
    X,  # (n_rows, n_cols) saved input of the norm, addressed through (x_d1, x_d2, x_s*)
    DY,  # (n_rows, n_cols) gradient of y, addressed through (dy_d1, dy_d2, dy_s*)
    DH,  # (n_rows, n_cols) gradient of the fused residual output h, or None
    DX,  # (n_rows, n_cols) contiguous out, X's dtype
    W,  # (n_cols,) weight, or None
    B,  # (n_cols,) bias when X holds y (X_IS_Y), else None
    Mean,  # (n_rows,) float32, LayerNorm only (None for RMSNorm and X_IS_Y)
    Rstd,  # (n_rows,) float32
    DW,  # out, or None: (grid, n_cols) float32 partials; COLUMNS: (n_cols,) dW, W's dtype
    DB,  # out, or None: (grid, n_cols) float32 partials; COLUMNS: (n_cols,) dB, B's dtype
    C,  # COLUMNS: (2, n_rows) float32 c1 and c2 of each row (the looped kernel's STATS_ONLY)
    n_rows,
    n_cols,
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
    HAS_BIAS: tl.constexpr,
    X_IS_Y: tl.constexpr,
    HAS_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    ROWS_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ALIGN: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """Backward of ``(ROWS_PER_TILE, BLOCK_N)`` tiles, math of the module docstring.

    Whole rows (``BLOCK_N >= n_cols``): one program computes dx for ``tiles_per_program``
    consecutive tiles of rows, each read once (x, dy) and written once (dx), accumulates dW/dB
    in registers and writes row ``pid`` of the partials (every program writes its row).

    ``COLUMNS`` (the column-parallel backward of rows too wide for L2): program ``p`` owns
    columns ``[p * BLOCK_N, (p + 1) * BLOCK_N)`` of every row and walks the tiles of all rows,
    first to last (``tiles_per_program`` is not read). It writes dx from each row's c1, c2 (``C``)
    and sums dW and dB of its columns over every row in float32 registers (each row lane of
    the tile in row order, then the lanes in a fixed tree), storing them once in W's and B's
    dtypes: deterministic, and no partials, since the columns of one program are no other's.

    The tile loop is software-pipelined ``NUM_STAGES`` deep: the loads of the next
    ``NUM_STAGES - 1`` tiles are in flight (asynchronous copies) while a tile is reduced.
    """
    if not COLUMNS:
        pid = program_id(INT64_ROWS)
    n_cols = (n_cols // ALIGN) * ALIGN  # a multiple of ALIGN, visibly to the compiler (norm_fwd)
    x_layout = (x_d1, x_d2, x_s0, x_s1, x_s2)
    dy_layout = (dy_d1, dy_d2, dy_s0, dy_s1, dy_s2)
    dh_layout = (dh_d1, dh_d2, dh_s0, dh_s1, dh_s2)
    if COLUMNS:
        # int64: a row wider than 2**31 elements must not wrap its last programs' columns
        cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        # the loop walks every row, a tile per step
        first_row, loop_end, loop_step, rows_per_step = 0, n_rows, ROWS_PER_TILE, 1
        # the program's columns of weight and bias, loaded once for every row
        w, b = _affine(W, B, cols, col_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
    else:
        # the loop counts the program's tiles
        first_row = pid * tiles_per_program * ROWS_PER_TILE
        loop_end, loop_step, rows_per_step = tiles_per_program, 1, ROWS_PER_TILE
        cols = tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
    dw_acc = tl.zeros([ROWS_PER_TILE, BLOCK_N], tl.float32)
    db_acc = tl.zeros([ROWS_PER_TILE, BLOCK_N], tl.float32)
    for step in tl.range(0, loop_end, loop_step, num_stages=NUM_STAGES):
        if COLUMNS and INT64_ROWS:  # rows from the loop over every row: the last must not wrap
            step = tl.cast(step, tl.int64)
        rows, row_mask, x_row, dy_row, mean, rstd = _tile(
            Mean, Rstd, first_row + step * rows_per_step, n_rows, x_layout, dy_layout, IS_RMS,
            X_IS_Y, ROWS_PER_TILE, ALIGN,
        )  # fmt: skip
        if not COLUMNS:
            # weight and bias are loaded with each tile (L2 hits), not held across the loop:
            # the widest float32 tiles have no registers to spare (64 per thread at 1024 threads)
            w, b = _affine(W, B, cols, col_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
        mask, x_hat, g, dy = _x_hat_and_g(
            X, DY, x_row, dy_row, row_mask, cols, col_mask, mean, rstd, w, b, IS_RMS,
            HAS_WEIGHT, HAS_BIAS, X_IS_Y,
        )  # fmt: skip
        if COLUMNS:
            c1 = tl.load(C + rows, mask=row_mask, other=0.0)
            c2 = tl.load(C + n_rows + rows, mask=row_mask, other=0.0)
        else:
            c1, c2 = _coefficients(x_hat, g, n_cols, IS_RMS)
        _store_dx(
            DX, DH, rows, cols, mask, n_cols, x_hat, g, c1, c2, rstd, dh_layout, HAS_DH, ALIGN
        )
        if COMPUTE_DW:
            dw_acc += dy * x_hat
        if COMPUTE_DB:
            db_acc += dy
    if COLUMNS:
        sums = cols  # dW and dB themselves
    else:
        sums = pid.to(tl.int64) * n_cols + cols  # the program's row of the partials
    _store_column_sums(DW, DB, sums, col_mask, dw_acc, db_acc, COMPUTE_DW, COMPUTE_DB)


@triton.jit
def _add_band_rows(
    X,
    DY,
    Mean,
    Rstd,
    band_start,
    band_end,
    x_layout,
    dy_layout,
    s,
    s_mask,
    w,
    b,
    dw_acc,
    db_acc,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_IS_Y: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    SLICE_ROWS: tl.constexpr,
    SLICE_STAGES: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """``(dw_acc, db_acc)`` plus dy * x_hat and dy of rows ``[band_start, band_end)`` at the
    columns ``s`` (``w``, ``b`` from :func:`_affine` there), in ``SLICE_ROWS``-row tiles."""
    for r in tl.range(band_start, band_end, SLICE_ROWS, num_stages=SLICE_STAGES):
        # masked to the band's rows: the next band is summed next time
        rows, row_mask, x_row, dy_row, mean, rstd = _tile(
            Mean, Rstd, r, band_end, x_layout, dy_layout, IS_RMS, X_IS_Y, SLICE_ROWS, ALIGN
        )
        _, x_hat, _, dy = _x_hat_and_g(
            X, DY, x_row, dy_row, row_mask, s, s_mask, mean, rstd, w, b, IS_RMS, HAS_WEIGHT,
            HAS_BIAS, X_IS_Y,
        )  # fmt: skip
        if COMPUTE_DW:
            dw_acc += dy * x_hat
        if COMPUTE_DB:
            db_acc += dy
    return dw_acc, db_acc


@triton.jit
def _store_band_sums(D, D_acc, cols, col_mask, acc, band, n_bands):
    """The column sums of ``acc`` (one band's rows of dW or dB) at ``cols``, added to the earlier
    bands' (float32, in ``D_acc``) and stored there, or, after the last band, in ``D`` (dW or dB
    itself, in its dtype)."""
    total = tl.sum(acc, axis=0) + tl.load(D_acc + cols, mask=col_mask & (band > 0), other=0.0)
    if band == n_bands - 1:
        tl.store(D + cols, total, col_mask)
    else:
        tl.store(D_acc + cols, total, col_mask)


@triton.jit
def _norm_bwd_looped_kernel(
    X,  # (n_rows, n_cols) saved input of the norm, addressed through (x_d1, x_d2, x_s*)
    DY,  # (n_rows, n_cols) gradient of y, addressed through (dy_d1, dy_d2, dy_s*)
    DH,  # (n_rows, n_cols) gradient of the fused residual output h, or None
    DX,  # (n_rows, n_cols) contiguous out, X's dtype
    W,  # (n_cols,) weight, or None
    B,  # (n_cols,) bias when X holds y (X_IS_Y), else None
    Mean,  # (n_rows,) float32, LayerNorm only (None for RMSNorm and X_IS_Y)
    Rstd,  # (n_rows,) float32
    DW,  # (n_cols,) out, W's dtype, or None
    DB,  # (n_cols,) out, B's dtype, or None
    DW_acc,  # (n_cols,) float32 scratch: dW of the bands so far, or None (SUMS_IN_REGISTERS)
    DB_acc,  # (n_cols,) float32 scratch: dB of the bands so far, or None (SUMS_IN_REGISTERS)
    C,  # STATS_ONLY: (2, n_rows) float32 out, c1 and c2 of each row; else None
    n_rows,
    n_cols,
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
    slice_n,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    X_IS_Y: tl.constexpr,
    HAS_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    ROWS_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SLICE_ROWS: tl.constexpr,
    SLICE_N: tl.constexpr,
    SLICE_STAGES: tl.constexpr,
    SUMS_IN_REGISTERS: tl.constexpr,
    ALIGN: tl.constexpr,
    INT64_ROWS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    STATS_ONLY: tl.constexpr,
):
    """Backward of wide rows in ``BLOCK_N`` chunks, math of the module docstring.

    The rows are walked in bands of ``grid`` tiles of ``ROWS_PER_TILE`` rows, one tile per
    program: band ``t`` holds tiles ``t * grid`` to ``t * grid + grid - 1`` and program ``pid``
    owns tile ``t * grid + pid`` of it, ``tiles_per_program`` bands in all. For each band a
    program

    1. walks its tile's chunks for its rows' c1, c2 (x and dy from DRAM);
    2. sums dW/dB over the band's rows for its own ``slice_n`` columns, from
       ``pid * slice_n`` (``SLICE_ROWS`` x ``SLICE_N`` tiles; x and dy of the band, just read by
       the band's programs, from L2), added in float32 to its earlier bands' sums, which it
       keeps in registers (``SUMS_IN_REGISTERS``: the slice is one tile) or else in its columns
       of ``DW_acc`` / ``DB_acc``, and after the last band stores as dW and dB: each column has
       one owner and one order of rows, so the sums are deterministic with no partial rows and
       no second launch;
    3. walks its tile's chunks again and writes dx (x and dy from L2).

    Between a chunk's reads, the resident programs hold about one band of rows in L2 (the
    heuristics size the grid so that it fits). The row loops are software-pipelined
    ``NUM_STAGES`` deep, the band loop ``SLICE_STAGES``. With ``STATS_ONLY`` the program stores
    c1, c2 in ``C`` and stops after step 1 (for the ``COLUMNS`` launch of
    :func:`_norm_bwd_single_block_kernel`).
    """
    pid = program_id(INT64_ROWS)
    n_programs = pid * 0 + tl.num_programs(0)  # pid's integer type
    n_cols = (n_cols // ALIGN) * ALIGN  # a multiple of ALIGN, visibly to the compiler (norm_fwd)
    x_layout = (x_d1, x_d2, x_s0, x_s1, x_s2)
    dy_layout = (dy_d1, dy_d2, dy_s0, dy_s1, dy_s2)
    dh_layout = (dh_d1, dh_d2, dh_s0, dh_s1, dh_s2)
    cols = tl.arange(0, BLOCK_N)
    # the program's slice of columns (int64: a row wider than 2**31 elements must not wrap)
    first_col = tl.program_id(0).to(tl.int64) * slice_n
    slice_end = tl.minimum(slice_n, n_cols - first_col)  # <= 0: the program owns no column
    slice_cols = tl.arange(0, SLICE_N)
    if SUMS_IN_REGISTERS:  # the slice is one tile: its sums stay in registers across bands
        s_run = first_col + slice_cols
        s_run_mask = (slice_cols < slice_n) & (s_run < n_cols)
        w_run, b_run = _affine(W, B, s_run, s_run_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
        dw_run = tl.zeros([SLICE_ROWS, SLICE_N], tl.float32)
        db_run = tl.zeros([SLICE_ROWS, SLICE_N], tl.float32)
    for band in range(0, tiles_per_program):
        first_row = (band * n_programs + pid) * ROWS_PER_TILE
        rows, row_mask, x_row, dy_row, mean, rstd = _tile(
            Mean, Rstd, first_row, n_rows, x_layout, dy_layout, IS_RMS, X_IS_Y, ROWS_PER_TILE,
            ALIGN,
        )  # fmt: skip
        sum_xg = tl.zeros([ROWS_PER_TILE], tl.float32)
        sum_g = tl.zeros([ROWS_PER_TILE], tl.float32)
        for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
            _, x_hat, g = _chunk(
                X, DY, W, B, x_row, dy_row, row_mask, start + cols, n_cols, mean, rstd,
                weight_offset, IS_RMS, HAS_WEIGHT, HAS_BIAS, X_IS_Y,
            )  # fmt: skip
            sum_xg += tl.sum(x_hat * g, axis=1)
            if not IS_RMS:
                sum_g += tl.sum(g, axis=1)
        # c1 and c2 (as _coefficients) of the whole rows
        c1 = sum_xg / n_cols
        c2 = sum_g / n_cols
        if STATS_ONLY:
            tl.store(C + rows, c1, mask=row_mask)
            tl.store(C + n_rows + rows, c2, mask=row_mask)
        else:
            if COMPUTE_DW or COMPUTE_DB:
                band_start = band * n_programs * ROWS_PER_TILE
                band_end = tl.minimum(band_start + n_programs * ROWS_PER_TILE, n_rows)
                if SUMS_IN_REGISTERS:
                    dw_run, db_run = _add_band_rows(
                        X, DY, Mean, Rstd, band_start,
                        tl.where(slice_end > 0, band_end, band_start), x_layout, dy_layout, s_run,
                        s_run_mask, w_run, b_run, dw_run, db_run,
                        IS_RMS, HAS_WEIGHT, HAS_BIAS, X_IS_Y, COMPUTE_DW, COMPUTE_DB, SLICE_ROWS,
                        SLICE_STAGES, ALIGN,
                    )  # fmt: skip
                else:
                    for part in range(0, slice_end, SLICE_N):
                        s = first_col + part + slice_cols
                        s_mask = (part + slice_cols < slice_n) & (s < n_cols)
                        w, b = _affine(W, B, s, s_mask, weight_offset, HAS_WEIGHT, HAS_BIAS)
                        dw_acc, db_acc = _add_band_rows(
                            X, DY, Mean, Rstd, band_start, band_end, x_layout, dy_layout, s,
                            s_mask, w, b, tl.zeros([SLICE_ROWS, SLICE_N], tl.float32),
                            tl.zeros([SLICE_ROWS, SLICE_N], tl.float32), IS_RMS, HAS_WEIGHT,
                            HAS_BIAS, X_IS_Y, COMPUTE_DW, COMPUTE_DB, SLICE_ROWS, SLICE_STAGES,
                            ALIGN,
                        )  # fmt: skip
                        if COMPUTE_DW:
                            _store_band_sums(DW, DW_acc, s, s_mask, dw_acc, band, tiles_per_program)
                        if COMPUTE_DB:
                            _store_band_sums(DB, DB_acc, s, s_mask, db_acc, band, tiles_per_program)
                    # the next band's step 2 reads the sums stored above, by other threads
                    tl.debug_barrier()
            for start in tl.range(0, n_cols, BLOCK_N, num_stages=NUM_STAGES):
                mask, x_hat, g = _chunk(
                    X, DY, W, B, x_row, dy_row, row_mask, start + cols, n_cols, mean, rstd,
                    weight_offset, IS_RMS, HAS_WEIGHT, HAS_BIAS, X_IS_Y,
                )  # fmt: skip
                _store_dx(
                    DX, DH, rows, start + cols, mask, n_cols, x_hat, g, c1, c2, rstd, dh_layout,
                    HAS_DH, ALIGN,
                )  # fmt: skip
    if SUMS_IN_REGISTERS:
        _store_column_sums(DW, DB, s_run, s_run_mask, dw_run, db_run, COMPUTE_DW, COMPUTE_DB)


@triton.jit
def _sum_partials_kernel(
    DW_partial,  # (n_partials, n_cols) float32, or None
    DB_partial,  # (n_partials, n_cols) float32, or None
    DW,  # (n_cols,) out, weight's dtype
    DB,  # (n_cols,) out, bias's dtype
    n_partials,
    n_cols,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dW = sum of the rows of DW_partial (and dB likewise), the second backward launch.

    One program sums ``BLOCK_N`` columns of all ``n_partials`` rows, ``BLOCK_P`` rows at a
    time in row order, in float32: the same partials give bitwise-equal sums.
    """
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    dw = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    db = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for p0 in range(0, n_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = (p < n_partials)[:, None] & col_mask[None, :]
        offs = p.to(tl.int64)[:, None] * n_cols + cols[None, :]
        if COMPUTE_DW:
            dw += tl.load(DW_partial + offs, mask=mask, other=0.0)
        if COMPUTE_DB:
            db += tl.load(DB_partial + offs, mask=mask, other=0.0)
    if COMPUTE_DW:
        tl.store(DW + cols, tl.sum(dw, axis=0), mask=col_mask)
    if COMPUTE_DB:
        tl.store(DB + cols, tl.sum(db, axis=0), mask=col_mask)


_INPUTS = {
    "X": "x",  # (y under X_IS_Y, read in x's place)
    "DY": "dy",
    "DH": "dh",
    "DX": "dx",
    "W": "weight",
    "B": "bias",
    "Mean": "mean",
    "Rstd": "rstd",
    "C": "c_scratch",
}
_ROW_SCALES = (
    "n_cols",
    "x_s0",
    "x_s1",
    "x_s2",
    "dy_s0",
    "dy_s1",
    "dy_s2",
    "dh_s0",
    "dh_s1",
    "dh_s2",
)
NORM_BWD_SINGLE_BLOCK = Kernel(
    "norm_bwd_single_block",
    _norm_bwd_single_block_kernel,
    "bwd",
    False,
    {**_INPUTS, "DW": "dw_partial", "DB": "db_partial"},
    _ROW_SCALES,
)
NORM_BWD_LOOPED = Kernel(
    "norm_bwd_looped",
    _norm_bwd_looped_kernel,
    "bwd",
    True,
    {**_INPUTS, "DW": "dweight", "DB": "dbias", "DW_acc": "dw_acc", "DB_acc": "db_acc"},
    _ROW_SCALES,
)
# the single-block kernel switched to COLUMNS: its DW and DB are dW and dB themselves
NORM_BWD_COLUMNS = Kernel(
    "norm_bwd_columns",
    _norm_bwd_single_block_kernel,
    "bwd",
    False,
    {**_INPUTS, "DW": "dweight", "DB": "dbias"},
    _ROW_SCALES,
    programs_walk_rows=False,
)
SUM_PARTIALS = Kernel(
    "sum_partials",
    _sum_partials_kernel,
    "sum_partials",
    False,
    {"DW_partial": "dw_partial", "DB_partial": "db_partial", "DW": "dweight", "DB": "dbias"},
    ("n_cols",),
    programs_walk_rows=False,
)
KERNELS = (NORM_BWD_SINGLE_BLOCK, NORM_BWD_LOOPED, NORM_BWD_COLUMNS, SUM_PARTIALS)


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
    bias: torch.Tensor | None = None,
    x_is_y: bool = False,
    dx_dtype: torch.dtype | None = None,
    config: NormConfig | None = None,
    target: Target | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward over the rows of ``x`` (its last ``n_norm_dims`` dims are one row).

    Args:
        dy: gradient of y, ``x.shape``, any strides.
        x: the forward's input of the norm (h when fused), ``(*lead, *norm)``; or, with
            ``x_is_y``, its output y, from which x_hat is recomputed with ``bias`` (``norm``
            shape, contiguous, or None) and the weight (mean is then not read).
        dx_dtype: dx's dtype (default x's).
        weight: ``norm`` shape or None. mean, rstd: ``(n_rows,)`` float32 from the forward
            (RMSNorm: mean is not read, and may be empty).
        dh: gradient of the fused residual output h (added to dx), or None.
        dweight_dtype / dbias_dtype: dtype of dW / dB, or None to skip that gradient.

    Returns:
        ``(dx, dweight, dbias)``: dx ``x.shape`` in dx_dtype, contiguous; dW/dB ``norm``
        shape or None.
    """
    norm_shape = x.shape[x.dim() - n_norm_dims :]
    n_cols = math.prod(norm_shape)
    n_rows = math.prod(x.shape[: x.dim() - n_norm_dims])
    device = x.device
    dx = torch.empty(x.shape, dtype=dx_dtype or x.dtype, device=device)
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
    target = target or device_target(device)
    cfg = config or backward_config(
        n_rows,
        n_cols,
        x.element_size(),
        target,
        loaded_bytes=sum(t.element_size() for t in (x, dy, dh) if t is not None),
        column_bytes=sum(
            t.element_size() for t in (weight, bias if x_is_y else None) if t is not None
        ),
    )
    columns = cfg.columns
    if columns is not None and (cfg.single_block or columns.grid * columns.block_n < n_cols):
        raise ValueError(
            "config.columns needs a looped config (single_block=False) and a grid of "
            f"columns.grid * columns.block_n >= n_cols ({n_cols}), got {cfg}"
        )
    partial, band_sums = {}, {}
    band = None
    if not cfg.single_block:
        band = backward_slice(n_cols, cfg.grid, x.element_size(), cfg.slice_block, cfg.num_stages)
    for name, grad in (("dw", dweight), ("db", dbias)):
        if grad is None:
            continue
        if cfg.single_block:
            partial[name] = torch.empty((cfg.grid, n_cols), dtype=torch.float32, device=device)
        elif columns is None and not band.in_registers:
            band_sums[name] = torch.empty(n_cols, dtype=torch.float32, device=device)
    layouts = (
        x_layout.d1,
        x_layout.d2,
        *x_layout.strides,
        dy_layout.d1,
        dy_layout.d2,
        *dy_layout.strides,
        *dh_args,
    )
    math_flags = dict(
        IS_RMS=is_rms,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=x_is_y and bias is not None,
        X_IS_Y=x_is_y,
        HAS_DH=dh is not None,
        COMPUTE_DW=dweight is not None,
        COMPUTE_DB=dbias is not None,
    )
    align = vector_align(n_cols, x_layout, dy_layout, dh_layout)
    constexprs = dict(**math_flags, ALIGN=align, **tile_meta(cfg))
    constexprs.update(register_budget(cfg.num_warps, target))
    # RMSNorm has no mean (the forward returns an empty one), and x_hat from y needs none: the
    # kernels never read it then
    mean = None if is_rms or x_is_y else mean
    bias = bias if x_is_y else None
    dw_partial, db_partial = partial.get("dw"), partial.get("db")
    if cfg.single_block:
        kernel, constexprs["COLUMNS"] = NORM_BWD_SINGLE_BLOCK, False
        tensors = (x, dy, dh, dx, weight, bias, mean, rstd, dw_partial, db_partial, None)
        extra = ()
    else:
        kernel, constexprs["STATS_ONLY"] = NORM_BWD_LOOPED, columns is not None
        constexprs.update(SLICE_N=band.block, SLICE_ROWS=band.rows, SLICE_STAGES=band.stages)
        constexprs["SUMS_IN_REGISTERS"] = columns is None and band.in_registers
        extra = (band.slice_n,)
        tensors = (x, dy, dh, dx, weight, bias, mean, rstd, dweight, dbias)
        tensors += (band_sums.get("dw"), band_sums.get("db"), None)
    # the statistics launch of the column-parallel backward keeps each row's (c1, c2) for it
    scratch = None
    if columns is not None:
        scratch = torch.empty(2 * n_rows, dtype=torch.float32, device=device)
        # it reads x and dy only and writes c1, c2 only
        tensors = (x, dy, None, None, weight, bias, mean, rstd, None, None, None, None, scratch)
        constexprs.update(HAS_DH=False, COMPUTE_DW=False, COMPUTE_DB=False)
    with launch_guard(device):
        launch(
            kernel,
            (cfg.grid,),
            *tensors,
            n_rows,
            n_cols,
            *layouts,
            weight_offset,
            cfg.tiles_per_program,
            *extra,
            **constexprs,
        )
        if columns is not None:
            launch(
                NORM_BWD_COLUMNS,
                (columns.grid,),
                x,
                dy,
                dh,
                dx,
                weight,
                bias,
                mean,
                rstd,
                dweight,
                dbias,
                scratch,
                n_rows,
                n_cols,
                *layouts,
                weight_offset,
                # tiles_per_program, not read in COLUMNS mode (the loop runs to n_rows): a
                # constant, so that row counts do not specialise the kernel more than n_rows does
                1,
                **math_flags,
                ALIGN=align,
                COLUMNS=True,
                **tile_meta(columns),
            )
        if partial:
            red = partial_sum_config(cfg.grid, n_cols)
            launch(
                SUM_PARTIALS,
                (red.grid,),
                dw_partial,
                db_partial,
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
