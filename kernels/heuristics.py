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

# Register budget: a program of T threads gets at most registers_per_sm / T registers per
# thread (NVIDIA: 65536 / T, 128 at 512 threads, 64 at 1024, the most a program can have).
#
# Largest row (in bytes of x) the forward keeps whole in registers: 16384 16-bit columns, 8192
# float32. At 16384 16-bit columns and 512 threads each thread holds 32 float32 values of x plus
# the same of weight and bias (hoisted out of the row loop): 127 registers on sm_90, just inside
# the 128 cap, no spills. 16384 float32 columns spilled in every warp count (the fused forward
# at 1024 threads on sm_80), so float32 switches to the looped kernel a power of two earlier.
FWD_MAX_ROW_BYTES = 32768
# The backward holds x, dy, weight and two float32 accumulators (dW, dB) per element: five
# values against the forward's three, so its single-block limit is half (flash-attn reports
# spills above 8K columns with register accumulators). In columns, for every dtype.
BWD_MAX_SINGLE_BLOCK = 8192
# Chunk width of the looped (wide-row) kernels: 4096 values over 512 threads is 8 per thread, one
# or two 128-bit loads per tensor (16 warps of 32 lanes, 8 waves of 64). At 256 threads (16 per
# thread) the fused looped backward spilled on sm_80 (compile report).
LOOP_BLOCK_N = 4096
LOOP_THREADS = 512
# A tile (rows_per_tile x block_n) should hold at least this many elements, so that a program
# keeps >= 8 KB of a 16-bit tensor in flight even when rows are short (N = 256 -> 16 rows).
MIN_TILE_ELEMS = 4096
MAX_ROWS_PER_TILE = 64
# 32 bytes of each tensor per thread: two 128-bit loads (16 16-bit or 8 float32 elements). The
# thread count, not the warp count, follows from it, so 64-wide waves get the same bytes per
# lane (>= 16, one 128-bit access) as 32-wide warps.
BYTES_PER_THREAD = 32
# Registers a thread needs at the widest tiles: 16-bit rows 128 (at 64 registers, the 1024
# threads a 64K-register SM allows, their widest tiles spilled), float32 rows 64 (at 128, i.e.
# 512 threads, the widest single-block float32 backward, fused, 8192 columns, spilled 16 bytes
# on sm_90). A program gets at most registers_per_sm / REGISTERS_PER_THREAD threads: 512 and
# 1024 on NVIDIA (64K registers per SM), 1024 and 1024 on CDNA (128K per CU, 1024 per block).
REGISTERS_PER_THREAD = {2: 128, 4: 64}
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
    """The GPU a config is made for, and what the heuristics and reports need to know about it.

    ``arch`` is the compiler's name for it: ``"sm_<compute capability x 10>"`` on NVIDIA (an int
    such as ``90`` is accepted and normalised), ``"gfx..."`` on AMD. Per-SM quantities are per
    CU on AMD. The defaults are an H100 SXM, so ``Target(sm_count=...)`` is an H100 with another
    SM count. ``dram_latency`` is a loaded latency (seconds): with ``dram_bandwidth`` (bytes/s)
    it gives, by Little's law, the bytes that must be in flight to keep DRAM busy.
    """

    sm_count: int = 132
    arch: str = "sm_90"
    name: str = "H100 SXM"
    warp_size: int = 32
    registers_per_sm: int = 65536  # 32-bit registers
    max_registers_per_thread: int = 255
    max_threads_per_sm: int = 2048
    max_threads_per_block: int = 1024
    max_blocks_per_sm: int = 32
    shared_memory_per_sm: int = 228 * 1024  # bytes (LDS per CU on AMD)
    l2_bytes: int = 50 * 2**20
    dram_bandwidth: float = 3.35e12
    dram_latency: float = 700e-9

    def __post_init__(self) -> None:
        if isinstance(self.arch, int):
            object.__setattr__(self, "arch", f"sm_{self.arch}")
        if not self.arch.startswith(("sm_", "gfx")):
            raise ValueError(f"arch must be 'sm_<NN>' or 'gfx<NNN>', got {self.arch!r}")

    @property
    def backend(self) -> str:
        """Triton's backend for the target: ``"cuda"`` or ``"hip"``."""
        return "hip" if self.arch.startswith("gfx") else "cuda"

    @property
    def capability(self) -> int:
        """NVIDIA compute capability x 10 (``sm_90`` -> 90); 0 on AMD."""
        return int(self.arch[3:]) if self.backend == "cuda" else 0

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // self.warp_size

    @property
    def bytes_in_flight_needed(self) -> float:
        """Little's law: DRAM bytes per second per SM x loaded latency."""
        return self.dram_bandwidth / self.sm_count * self.dram_latency


# Sources: NVIDIA's A100 / H100 / Blackwell datasheets and the CUDA programming guide's
# per-compute-capability table (registers, threads, blocks and shared memory per SM); AMD's ROCm
# "GPU specifications" table (CUs, wave size, LDS, VGPR file 512 KiB per CU = 128K registers, L2)
# and CDNA3 ISA guide (8 waves per SIMD, 4 SIMDs: 2048 threads per CU). L2: the whole chip's
# (on AMD the 4 MiB per XCD summed; the 256 MiB Infinity Cache behind it is not counted).
# Loaded DRAM latencies: ~600 ns (A100) and ~700 ns (H100, B200) as issue 10 states them; the
# others are not measured here (assumed 700 ns for GDDR7, 800 ns for MI300X / MI355X, whose
# HBM sits behind the Infinity Fabric and a memory-side cache): replace with measurements.
A100 = Target(
    sm_count=108,
    arch="sm_80",
    name="A100 SXM",
    shared_memory_per_sm=164 * 1024,
    l2_bytes=40 * 2**20,
    dram_bandwidth=2.0e12,
    dram_latency=600e-9,
)
H100 = Target()
B200 = Target(
    sm_count=148,
    arch="sm_100",
    name="B200",
    l2_bytes=126 * 2**20,
    dram_bandwidth=8.0e12,
)
RTX5090 = Target(
    sm_count=170,
    arch="sm_120",
    name="RTX 5090",
    max_threads_per_sm=1536,
    shared_memory_per_sm=100 * 1024,
    l2_bytes=96 * 2**20,
    dram_bandwidth=1.792e12,
)
MI300X = Target(
    sm_count=304,
    arch="gfx942",
    name="MI300X",
    warp_size=64,
    registers_per_sm=131072,
    max_registers_per_thread=512,
    shared_memory_per_sm=64 * 1024,
    l2_bytes=32 * 2**20,
    dram_bandwidth=5.3e12,
    dram_latency=800e-9,
)
MI355X = Target(
    sm_count=256,
    arch="gfx950",
    name="MI355X",
    warp_size=64,
    registers_per_sm=131072,
    max_registers_per_thread=512,
    shared_memory_per_sm=160 * 1024,
    l2_bytes=32 * 2**20,
    dram_bandwidth=8.0e12,
    dram_latency=800e-9,
)
TARGETS = (A100, H100, B200, RTX5090, MI300X, MI355X)


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


def _max_threads(elem_size: int, target: Target) -> int:
    """Threads a program may have: the register budget (REGISTERS_PER_THREAD each) and the
    target's block limit, as a power of two."""
    budget = min(
        target.max_threads_per_block, target.registers_per_sm // REGISTERS_PER_THREAD[elem_size]
    )
    return 1 << (budget.bit_length() - 1)


def _row_blocking(
    n_cols: int, elem_size: int, max_single_block: int, target: Target
) -> tuple[int, int, bool, int]:
    """(block_n, rows_per_tile, single_block, num_warps) from the row width, the dtype and the
    target's warp size and limits (never M).

    Threads come from BYTES_PER_THREAD (capped by :func:`_max_threads`), warps from threads:
    the same threads, so the same bytes per lane, on 32- and 64-wide warps.
    """
    elem_size = 4 if elem_size >= 4 else 2
    block_n = next_power_of_2(n_cols)
    if block_n > max_single_block:
        threads, rows, single = min(LOOP_THREADS, _max_threads(elem_size, target)), 1, False
        block_n = LOOP_BLOCK_N
    else:
        rows = max(1, min(MAX_ROWS_PER_TILE, MIN_TILE_ELEMS // block_n))
        threads = next_power_of_2((rows * block_n * elem_size) // BYTES_PER_THREAD)
        threads, single = min(_max_threads(elem_size, target), threads), True
    return block_n, rows, single, max(1, threads // target.warp_size)


def _persistent(n_rows: int, rows_per_tile: int, max_programs: int) -> tuple[int, int, bool]:
    """(grid, tiles_per_program, int64_rows): consecutive tiles per program, every program
    non-empty; int64 row indices when the rows the grid covers pass MAX_INT32_ROWS."""
    n_tiles = max(1, _cdiv(n_rows, rows_per_tile))
    tiles_per_program = _cdiv(n_tiles, max(1, min(n_tiles, max_programs)))
    grid = _cdiv(n_tiles, tiles_per_program)
    return grid, tiles_per_program, grid * tiles_per_program * rows_per_tile > MAX_INT32_ROWS


def forward_config(n_rows: int, n_cols: int, elem_size: int, target: Target = H100) -> NormConfig:
    """Forward launch: whole rows in registers up to FWD_MAX_ROW_BYTES of x, then chunks.

    The grid fills every SM to its thread limit (``target.max_threads_per_sm`` / threads per
    program programs per SM) and no more: beyond that, extra programs only queue, while a
    persistent program reuses its weight and bias registers across its rows. ``elem_size``
    sets the thread cap (REGISTERS_PER_THREAD).
    """
    max_single_block = FWD_MAX_ROW_BYTES // (4 if elem_size >= 4 else 2)
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, max_single_block, target)
    per_sm = max(1, target.max_threads_per_sm // (warps * target.warp_size))
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
    one uses up to 512 threads (1024 for float32), tiles of >= MIN_TILE_ELEMS elements and a
    pipelined tile loop (``backward_stages``). ``loaded_tensors``: row tensors read per element
    (x and dy, and dh with a fused residual); ``partials``: dW/dB partial rows written (0-2).
    Wide rows walk their tiles in L2-sized groups (``backward_group``).
    """
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, BWD_MAX_SINGLE_BLOCK, target)
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
    fit = int(BWD_SHARED_FRACTION * target.shared_memory_per_sm) // max(stage_bytes, 1)
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
