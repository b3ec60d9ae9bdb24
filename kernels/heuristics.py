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
# Resident threads per SM on sm_80 and sm_90: the forward grid's occupancy estimate where no
# compiled kernel is at hand (CPU, interpreter, offline reports); on CUDA the launcher passes the
# compiled kernel's own count (``occupancy.py``).
THREADS_PER_SM = 2048
# Bytes of x (and residual) each forward program keeps in flight. Little's law per SM (DRAM
# bandwidth per SM x loaded latency): B200 8 TB/s / 148 SMs x ~700 ns = 37 KiB, H100 3.35 TB/s /
# 132 x ~700 ns = 17 KiB, A100 2.0 TB/s / 108 x ~600 ns = 11 KiB. 40 KiB per program covers
# the largest alone, so the target holds even where registers leave one program per SM (the
# 16-warp tiles: 72 to 128 registers x 512 threads). Without pipelining a program has one tile
# in flight: 8 KiB at 16384 x 4096 bf16, 3 programs per SM = 24 KiB (1.38x H100, 0.65x B200).
# Pipelined 6 deep (compiled offline, sm_90 / sm_100): 80 registers, 40 KiB of shared memory,
# still 3 programs per SM, 120 KiB in flight (6.8x H100, 3.2x B200), 0 spills.
FWD_BYTES_IN_FLIGHT = 40 * 1024
# The forward's row loop is software-pipelined (``tl.range(num_stages=S)``): Triton 3.9 turns
# its loads into ``cp.async`` (16-byte, 128-bit) copies into S - 1 shared-memory buffers and
# issues the copy of tile i + S - 1 right after tile i leaves shared memory, so a program that
# waits on memory has S - 1 tiles in flight. S = 2 issues tile i + 1 only after tile i is
# consumed (no overlap), so the stages are 1 (plain loads, for tiles that alone fill the
# budget) or 3 to FWD_MAX_STAGES. Deeper pipelines cost registers (bf16 4x1024 tiles at 8
# warps, sm_90: 64 registers at S = 3, 89 at 6, 104 at 7).
FWD_MAX_STAGES = 8
# Shared memory of the pipeline buffers of one program at most: fits A100's 163 KiB per block.
FWD_MAX_PIPELINE_BYTES = 128 * 1024
# Rows wider than the single block are read twice (statistics, then y); the second read must
# hit L2. While a program walks its row, every resident program streams its own: the window
# is (resident programs) x (bytes of the row re-read), and the looped forward's grid keeps it
# within this fraction of L2. Half: between a chunk's two reads, each program moves one row
# through L2 (the rest of its row's x, then the y written before the chunk: two rows with
# float32 y of 16-bit x), and the L2 of A100 and H100 is two partitions that may each hold a
# copy of a line. Pass 2 walks the row in pass 1's order, so every chunk has that same reuse
# distance; walking it backwards would shorten it for the last chunks and double it for the
# first (2 x (row - offset) of x and y), which only pays once the window overflows.
FWD_L2_WINDOW_FRACTION = 0.5
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


@dataclass(frozen=True)
class Target:
    """The GPU a config is made for."""

    sm_count: int = 132  # H100 SXM
    arch: int = 90  # compute capability x 10
    l2_bytes: int = 50 * 2**20  # H100: 50 MiB (torch's L2_cache_size on the device)


H100 = Target(sm_count=132, arch=90)
A100 = Target(sm_count=108, arch=80, l2_bytes=40 * 2**20)


@dataclass(frozen=True)
class NormConfig:
    """One launch of the forward or backward kernel.

    A program walks ``tiles_per_program`` consecutive tiles of ``rows_per_tile`` rows; a tile
    is one ``block_n``-wide block per row when ``single_block``, else a loop of chunks. Row
    indices are int64 when ``int64_rows`` (see MAX_INT32_ROWS), else int32. ``num_stages``:
    software-pipelining depth of the forward's tile loop (single block) or first chunk loop
    (looped); 1 is plain loads.
    """

    block_n: int
    rows_per_tile: int
    single_block: bool
    num_warps: int
    grid: int
    tiles_per_program: int
    int64_rows: bool = False
    num_stages: int = 1


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


def _pipeline_stages(tile_bytes: int, bytes_in_flight: int) -> int:
    """Stages that keep ``bytes_in_flight`` of ``tile_bytes`` tiles in flight (FWD_MAX_STAGES)."""
    if tile_bytes >= bytes_in_flight:
        return 1
    buffers = min(_cdiv(bytes_in_flight, tile_bytes), FWD_MAX_PIPELINE_BYTES // tile_bytes)
    return max(3, min(FWD_MAX_STAGES, buffers + 1))


def forward_config(
    n_rows: int,
    n_cols: int,
    elem_size: int,
    target: Target = H100,
    *,
    residual_elem_size: int = 0,
    h_elem_size: int = 0,
    programs_per_sm: int | None = None,
) -> NormConfig:
    """Forward launch: whole rows in registers up to FWD_MAX_ROW_BYTES of x, then chunks.

    ``residual_elem_size`` / ``h_elem_size``: the fused add's residual and h (0 without one).
    The tile (or first-pass chunk) loop is pipelined to keep FWD_BYTES_IN_FLIGHT of x and
    residual in flight per program. The grid is one persistent wave: ``programs_per_sm``
    resident programs on every SM, as the compiled kernel allows (``occupancy.py``; None:
    THREADS_PER_SM / threads per program, a ceiling), each reusing its weight and bias
    registers across its rows. Looped rows: at most FWD_L2_WINDOW_FRACTION of L2 in rows being
    re-read at once (a whole number of programs per SM, or fewer programs than SMs when one
    row per SM exceeds it, their pipelines deepened by SMs / programs).

    Batch invariance: the stages depend on N, the dtypes and the target, never on M, and only
    move data (the arithmetic of a row is the same at any depth).
    """
    max_single_block = FWD_MAX_ROW_BYTES // (4 if elem_size >= 4 else 2)
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, max_single_block)
    per_sm = programs_per_sm or max(1, THREADS_PER_SM // (warps * WARP_SIZE))
    max_programs = target.sm_count * per_sm
    bytes_in_flight = FWD_BYTES_IN_FLIGHT
    if not single:
        row_bytes = n_cols * max(elem_size, h_elem_size)
        window = max(1, int(FWD_L2_WINDOW_FRACTION * target.l2_bytes) // row_bytes)
        if window >= target.sm_count:
            window -= window % target.sm_count
        else:
            bytes_in_flight = _cdiv(bytes_in_flight * target.sm_count, window)
        max_programs = min(max_programs, window)
    tile_bytes = rows * block_n * (elem_size + residual_elem_size)
    stages = _pipeline_stages(tile_bytes, bytes_in_flight)
    grid, tiles, int64_rows = _persistent(n_rows, rows, max_programs)
    return NormConfig(block_n, rows, single, warps, grid, tiles, int64_rows, stages)


def backward_config(n_rows: int, n_cols: int, elem_size: int, target: Target = H100) -> NormConfig:
    """Backward launch: at most one program per SM, each accumulating dW/dB in registers.

    One program per SM bounds the partial buffers at ``sm_count x N`` float32 per gradient and
    keeps the second stage small; to keep the memory system busy with so few programs, each
    one uses up to 16 warps and tiles of >= MIN_TILE_ELEMS elements.
    """
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, BWD_MAX_SINGLE_BLOCK)
    grid, tiles, int64_rows = _persistent(n_rows, rows, target.sm_count)
    return NormConfig(block_n, rows, single, warps, grid, tiles, int64_rows)


def partial_sum_config(n_partials: int, n_cols: int) -> PartialSumConfig:
    """Column-parallel sum of the partial rows; one program per PARTIAL_BLOCK_N columns."""
    del n_partials  # each program loops over all of them
    return PartialSumConfig(
        PARTIAL_BLOCK_N, PARTIAL_BLOCK_P, PARTIAL_NUM_WARPS, max(1, _cdiv(n_cols, PARTIAL_BLOCK_N))
    )
