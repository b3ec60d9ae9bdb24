"""Launch heuristics: block width, warps, rows per tile and the persistent grid.

Pure Python (no torch, no CUDA): a config is a function of the row count M, the row width N,
the element size and a :class:`Target` GPU, so the traffic and compile reports are reproducible
on a machine without a GPU (default target: an H100 SXM, 132 SMs, sm_90).

Two properties are load-bearing and tested:

* Batch invariance: everything that shapes the arithmetic of one row (``block_n``,
  ``rows_per_tile``, ``num_warps``, ``single_block``) depends on N and the dtype only, never
  on M, so row i of a batch is bitwise equal to the same row normalised alone.
* Bounded scratch: the backward grid is at most one program per SM, so each dW/dB partial
  buffer is at most ``sm_count x N`` float32.

``int64_rows`` is the one field that depends on M, and it changes only how row indices are
addressed (their integer width), never the floating-point arithmetic of a row.
"""

from __future__ import annotations

from dataclasses import dataclass

# Register budget: an SM has 65536 registers, so a program of W warps gets at most
# 65536 / (32 W) per thread: 128 at 16 warps, 64 at 32 warps (the most a program can have).
#
# Largest row (in bytes of x) the forward keeps whole in registers: 16384 16-bit columns, 8192
# float32. At 16384 16-bit columns and 16 warps each thread holds 32 float32 values of x plus
# the same of weight and bias (hoisted out of the row loop): 127 registers on sm_90, just inside
# the 128 cap, no spills. 16384 float32 columns spilled in every warp count (the fused forward
# at 32 warps on sm_80), so float32 switches to the looped kernel a power of two earlier.
FWD_MAX_ROW_BYTES = 32768
# The backward holds x, dy, weight and two float32 accumulators (dW, dB) per element: five
# values against the forward's three, so its single-block limit is half (flash-attn reports
# spills above 8K columns with register accumulators). In columns, for every dtype.
BWD_MAX_SINGLE_BLOCK = 8192
# Chunk width of the looped (wide-row) kernels: 4096 values over 16 warps is 8 per thread, one
# or two 128-bit loads per tensor. At 8 warps (16 per thread) the fused looped backward spilled
# on sm_80 (compile report).
LOOP_BLOCK_N = 4096
LOOP_NUM_WARPS = 16
# A tile (rows_per_tile x block_n) should hold at least this many elements, so that a program
# keeps >= 8 KB of a 16-bit tensor in flight even when rows are short (N = 256 -> 16 rows).
MIN_TILE_ELEMS = 4096
MAX_ROWS_PER_TILE = 64
# 32 bytes of each tensor per thread: two 128-bit loads (16 16-bit or 8 float32 elements).
BYTES_PER_THREAD = 32
# 16-bit rows: up to 16 warps (128 registers per thread; at 32 warps their widest tiles spill in
# the 64-register cap). float32 rows: up to 32 warps, since at 16 warps the widest single-block
# float32 backward (fused, 8192 columns) spilled 16 bytes on sm_90.
MAX_NUM_WARPS = {2: 16, 4: 32}
# Resident threads per SM on sm_80 and sm_90 (the occupancy ceiling for the forward grid).
THREADS_PER_SM = 2048
WARP_SIZE = 32
# Partial-sum reduction: each program owns PARTIAL_BLOCK_N columns and walks the partial rows
# PARTIAL_BLOCK_P at a time, in order (deterministic). 32 columns (128 bytes, one cache line per
# partial row) give N / 32 programs: 128 at N = 4096, about one per SM; 128 x 32 float32 is
# 4 warps x 32 values.
PARTIAL_BLOCK_N = 32
PARTIAL_BLOCK_P = 128
PARTIAL_NUM_WARPS = 4
# Row indices stay int32 while every index a launch forms fits: the largest row a launch touches
# is grid x tiles_per_program x rows_per_tile - 1, and the looped backward also forms
# n_rows + row (its scratch), so both fit below 2**30 rows. Past that they are int64, which
# costs registers (LLVM strength-reduces 64-bit row addresses into pointer induction
# variables), so only launches that need it pay.
MAX_INT32_ROWS = 2**30
# Software pipelining (``tl.range(..., num_stages=S)``; asynchronous copies into shared memory):
# while a tile is reduced, the loads of the next S - 1 tiles are in flight. Little's law wants
# DRAM bandwidth per SM x loaded latency in flight per SM: ~11 KiB on an A100, ~17 KiB on an
# H100, ~37 KiB on a B200. One backward program per SM with 16 KiB tiles (x and dy, 4096
# 16-bit columns) has 16 KiB in flight unpipelined (0.9x on an H100, 0.4x on a B200) and
# 48 KiB at four stages (2.8x, 1.3x). Stages are capped by shared memory: the backward's S
# stage buffers may use BWD_SHARED_FRACTION of the SM's shared memory (its one program per SM
# also needs shared memory for the row reductions).
MAX_NUM_STAGES = 4
BWD_SHARED_FRACTION = 0.75
# The looped backward reads a group of rows twice (statistics, then dx); the second read must
# come from L2. A group's rows (x, dy, dh: what pass 2 re-reads) plus the program's dW/dB
# partial row (added to once per group) should take at most L2_WINDOW_FRACTION of the L2 share
# of one program (L2 / grid): the rest is the dx write-back stream and the L2's split into two
# partitions. When not even one row fits, the program's rows are one group (pass 2 then
# re-reads them from DRAM, as reported by the traffic report's L2-window check).
L2_WINDOW_FRACTION = 0.6


@dataclass(frozen=True)
class Target:
    """The GPU a config is made for."""

    sm_count: int = 132  # H100 SXM
    arch: int = 90  # compute capability x 10
    l2_bytes: int = 50 * 2**20
    shared_per_sm: int = 228 * 2**10


H100 = Target(sm_count=132, arch=90, l2_bytes=50 * 2**20, shared_per_sm=228 * 2**10)
A100 = Target(sm_count=108, arch=80, l2_bytes=40 * 2**20, shared_per_sm=164 * 2**10)


@dataclass(frozen=True)
class NormConfig:
    """One launch of the forward or backward kernel.

    A program walks ``tiles_per_program`` consecutive tiles of ``rows_per_tile`` rows; a tile
    is one ``block_n``-wide block per row when ``single_block``, else a loop of chunks. Row
    indices are int64 when ``int64_rows`` (see MAX_INT32_ROWS), else int32. The tile (or chunk)
    loop is pipelined ``num_stages`` deep; the looped backward walks its tiles in groups of
    ``tiles_per_group``.
    """

    block_n: int
    rows_per_tile: int
    single_block: bool
    num_warps: int
    grid: int
    tiles_per_program: int
    int64_rows: bool = False
    num_stages: int = 1
    tiles_per_group: int = 1


@dataclass(frozen=True)
class PartialSumConfig:
    """The stage that sums the (grid, N) float32 dW/dB partials in a fixed order."""

    block_n: int
    block_p: int
    num_warps: int
    grid: int


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _row_blocking(n_cols: int, elem_size: int, max_single_block: int) -> tuple[int, int, bool, int]:
    """(block_n, rows_per_tile, single_block, num_warps) from the row width and dtype alone."""
    block_n = next_power_of_2(n_cols)
    if block_n > max_single_block:
        return LOOP_BLOCK_N, 1, False, LOOP_NUM_WARPS
    rows = max(1, min(MAX_ROWS_PER_TILE, MIN_TILE_ELEMS // block_n))
    elem_size = 4 if elem_size >= 4 else 2
    warps = (rows * block_n * elem_size) // (BYTES_PER_THREAD * WARP_SIZE)
    max_warps = MAX_NUM_WARPS[elem_size]
    return block_n, rows, True, max(1, min(max_warps, next_power_of_2(warps)))


def _persistent(n_rows: int, rows_per_tile: int, max_programs: int) -> tuple[int, int, bool]:
    """(grid, tiles_per_program, int64_rows): consecutive tiles per program, every program
    non-empty; int64 row indices when the rows the grid covers pass MAX_INT32_ROWS."""
    n_tiles = max(1, _cdiv(n_rows, rows_per_tile))
    tiles_per_program = _cdiv(n_tiles, max(1, min(n_tiles, max_programs)))
    grid = _cdiv(n_tiles, tiles_per_program)
    return grid, tiles_per_program, grid * tiles_per_program * rows_per_tile > MAX_INT32_ROWS


def forward_config(n_rows: int, n_cols: int, elem_size: int, target: Target = H100) -> NormConfig:
    """Forward launch: whole rows in registers up to FWD_MAX_ROW_BYTES of x, then chunks.

    The grid fills every SM to its thread limit (THREADS_PER_SM / threads per program programs
    per SM) and no more: beyond that, extra programs only queue, while a persistent program
    reuses its weight and bias registers across its rows. ``elem_size`` sets the warp cap
    (MAX_NUM_WARPS).
    """
    max_single_block = FWD_MAX_ROW_BYTES // (4 if elem_size >= 4 else 2)
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, max_single_block)
    per_sm = max(1, THREADS_PER_SM // (warps * WARP_SIZE))
    grid, tiles, int64_rows = _persistent(n_rows, rows, target.sm_count * per_sm)
    return NormConfig(block_n, rows, single, warps, grid, tiles, int64_rows)


def backward_config(
    n_rows: int,
    n_cols: int,
    elem_size: int,
    target: Target = H100,
    *,
    loaded_tensors: int = 2,
    partials: int = 2,
) -> NormConfig:
    """Backward launch: at most one program per SM, each accumulating dW/dB in registers.

    One program per SM bounds the partial buffers at ``sm_count x N`` float32 per gradient and
    keeps the second stage small; to keep the memory system busy with so few programs, each
    one uses up to 16 warps, tiles of >= MIN_TILE_ELEMS elements, and a pipelined tile loop
    (``backward_stages``). ``loaded_tensors``: row tensors read per element (x and dy, and dh
    with a fused residual); ``partials``: dW/dB partial rows written (0-2). Wide rows walk their
    tiles in L2-sized groups (``backward_group``).
    """
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, BWD_MAX_SINGLE_BLOCK)
    grid, tiles, int64_rows = _persistent(n_rows, rows, target.sm_count)
    tile_bytes = rows * block_n * elem_size * loaded_tensors
    stages = backward_stages(tile_bytes + (0 if single else 4 * block_n), target)
    group = 1
    if not single:
        row_bytes = n_cols * elem_size * loaded_tensors
        group = backward_group(row_bytes, 4 * n_cols * partials, grid, target)
        group = tiles if group == 0 else min(group, tiles)
    return NormConfig(block_n, rows, single, warps, grid, tiles, int64_rows, stages, group)


def backward_stages(stage_bytes: int, target: Target = H100) -> int:
    """Pipeline depth of the backward: as many ``stage_bytes`` buffers (one tile's or chunk's
    loads; the looped kernel's also hold a chunk of weight and bias) as BWD_SHARED_FRACTION of
    the SM's shared memory holds, at most MAX_NUM_STAGES; 1 (unpipelined) when two don't fit."""
    fit = int(BWD_SHARED_FRACTION * target.shared_per_sm) // max(stage_bytes, 1)
    return min(MAX_NUM_STAGES, fit) if fit >= 2 else 1


def backward_group(row_bytes: int, partial_bytes: int, grid: int, target: Target = H100) -> int:
    """Tiles per group of the looped backward: how many rows of ``row_bytes`` (re-read by pass
    2) fit, next to the program's ``partial_bytes`` of dW/dB partials, in L2_WINDOW_FRACTION of
    one program's share of L2; 0 when not one does."""
    share = int(L2_WINDOW_FRACTION * target.l2_bytes) // max(grid, 1)
    return max(0, (share - partial_bytes) // max(row_bytes, 1))


def partial_sum_config(n_partials: int, n_cols: int) -> PartialSumConfig:
    """Column-parallel sum of the partial rows; one program per PARTIAL_BLOCK_N columns."""
    del n_partials  # each program loops over all of them
    return PartialSumConfig(
        PARTIAL_BLOCK_N, PARTIAL_BLOCK_P, PARTIAL_NUM_WARPS, max(1, _cdiv(n_cols, PARTIAL_BLOCK_N))
    )
