"""Launch heuristics: block width, warps, rows per tile and the persistent grid.

Pure Python (no torch, no CUDA): a config is a function of the row count M, the row width N,
the element size and a :class:`Target` GPU, so the traffic and compile reports are reproducible
on a machine without a GPU (default target: an H100 SXM, 132 SMs, sm_90).

Two properties are load-bearing and tested:

* Batch invariance: everything that shapes the arithmetic of one row (``block_n``,
  ``rows_per_tile``, ``num_warps``, ``single_block``) depends on N and the dtype only, never
  on M, so row i of a batch is bitwise equal to the same row normalised alone.
* Bounded scratch: the backward grid is at most one program per SM, so each dW/dB partial
  buffer of the single-block backward is at most ``sm_count x N`` float32; the looped backward
  keeps its running sums in registers (one float32 row per gradient where a slice is wider than
  one tile), the column-parallel one needs none.

``int64_rows`` depends on M, and it changes only how row indices are addressed (their integer
width), never the floating-point arithmetic of a row. So does ``columns`` (whether a wide
backward runs column-parallel: where a band of M's rows does not fit in L2), which moves only
where dx is computed: a row's c1 and c2 come from the same looped first pass, its dx from the
same elementwise arithmetic, either way. The grid (M caps it) shapes only the order in which
dW and dB add up rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

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
# 48 KiB at four stages (2.8x, 1.3x). Stages are capped by shared memory: the backward's S - 1
# stage buffers may use BWD_SHARED_FRACTION of the SM's shared memory (its one program per SM
# also needs a few KiB for the row reductions; 0.9 of an A100's 164 KiB is within the 163 KiB
# a block may have). At 0.75, a float32 4096-column backward got 3 stages on an A100 and
# spilled 8 bytes (sm_80); at 0.9 it gets 4 (144 KiB) and does not.
BWD_MAX_STAGES = 4
BWD_SHARED_FRACTION = 0.9
# The looped backward walks its rows in bands of one tile per program (_norm_bwd_looped_kernel):
# a program reads its row for c1, c2 (x and dy from DRAM), then, for its own slice of
# columns, every row of the band for dW/dB, then its row again for dx. Both re-reads must
# come from L2. Between a line's first read and its last, L2 takes in the band's x and dy
# and, while pass 2 runs, the dx it writes and the dh it reads (once, but through L2 all the
# same); a least-recently-used L2 first evicts the lines pass 2 has not yet re-read (last
# touched by the dW/dB sums). So the band's x, dy and dh (grid x row bytes) should take at
# most BWD_L2_WINDOW_FRACTION of L2: with dx (half a band of x and dy in 16-bit) the
# footprint peaks near 0.9 of it, leaving room for the L2's split into two partitions that may
# each hold a copy of a line. dW/dB need no partial rows: each column has one owner, who
# keeps its running float32 sums in registers across bands (BandSlice.in_registers), or, where
# its slice is wider than one tile (grids cut short by few rows), in an N-wide float32 scratch
# row read and written once per band: between two bands L2 takes in about 2.5 bands, so at
# the widest bands that row would come back from DRAM every band. On an MI300X the
# 32 MiB L2 is eight private 4 MiB L2s, one per XCD, and programs are spread over them: the
# dW/dB sums' reads of other programs' rows come from the Infinity Cache behind them
# (not measured).
BWD_L2_WINDOW_FRACTION = 0.6
# The tiles of those dW/dB sums hold one 128-bit load per thread of each tensor (8 KiB over the
# looped kernel's 512 threads: 4096 16-bit or 2048 float32 values). Float32 tiles of 4096
# values, pipelined, spilled at int64 row indices (sm_90: 48 bytes).
SLICE_TILE_BYTES = LOOP_THREADS * 16
# They come from L2, whose latency is shorter than DRAM's: their loop is pipelined at most this
# deep (two tiles in flight, 32 KiB of x and dy). The 7-stage pipelines of 131072 16-bit
# columns (fewer programs than SMs) spilled there (sm_80: 56 bytes, sm_90: 24); at 4 stages a
# float32 65536-column LayerNorm kept 8 bytes of stack on sm_90; at 3, nothing spills.
SLICE_MAX_STAGES = 3
# Where one row per SM does not fit, the looped backward runs on as few programs as fit, down
# to this fraction of the SMs: 131072 16-bit columns on an A100 / H100 (48 and 60 programs:
# 44% and 45%), 262144 on a B200 (75, 51%). Those programs deepen their pipelines by SMs /
# programs to keep the whole chip's Little's law in flight: an SM of an H100 then moves
# 3.35 TB/s / 60 = 56 GB/s from DRAM, 39 KiB in flight at 700 ns (7 stages of 16 KiB hold 112
# KiB), and three times that through its L2 port (the first read and the band's two re-reads),
# which grows as the programs get fewer: hence a floor (a guess until measured on a GPU).
BWD_MIN_SM_FRACTION = 0.4
# Where not even that fits (from 262144 16-bit columns on an A100 / H100, 524288 on a B200),
# the backward splits the other way: the looped kernel computes each row's c1, c2 only
# (reading x and dy once), and a column-parallel launch walks every row over a block of
# columns per program (dx, and dW / dB summed in registers and stored once). x and dy are read
# twice there (1.67x the minimum in 16-bit), which clusters of SMs sharing a row on chip would
# remove (not expressible portably in Triton's language).
# Its blocks are the widest power of two up to LOOP_BLOCK_N that gives every SM a program (a
# program walks all M rows, so fewer programs than SMs would idle the rest), and at least
# COLUMNS_MIN_BLOCK_BYTES per row: one 128-byte line, the narrowest access that wastes no DRAM
# sector (64 16-bit or 32 float32 columns). Where even those blocks leave SMs without a program
# (rows under 128 bytes x SMs: 19456 16-bit columns on an MI300X, whose 32 MiB L2 sends rows
# from about 11K columns here), the looped backward stays. Tiles hold COLUMNS_TILE_BYTES of
# each row tensor (16-bit: 4 rows of 1024 columns, 64 rows of 64), BYTES_PER_THREAD per
# thread: 256 threads, so that two programs fit an SM's registers at up to 128 per thread where
# there are more programs than SMs (4096-element float32 tiles on 512 threads needed 74-82
# registers on sm_90: one program per SM, two waves).
COLUMNS_MIN_BLOCK_BYTES = 128
COLUMNS_TILE_BYTES = 8 * 1024


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
# MI355X: the MI300X's CDNA compute unit (64-wide waves, 512 VGPRs per lane), CDNA4's larger
# LDS, fewer CUs, faster HBM.
MI355X = dataclasses.replace(
    MI300X,
    sm_count=256,
    arch="gfx950",
    name="MI355X",
    shared_memory_per_sm=160 * 1024,
    dram_bandwidth=8.0e12,
)
TARGETS = (A100, H100, B200, RTX5090, MI300X, MI355X)


@dataclass(frozen=True)
class ColumnsConfig:
    """The column-parallel launch of the backward (:func:`columns_config`): program ``p`` owns
    columns ``[p * block_n, (p + 1) * block_n)`` of every row and walks the rows in tiles of
    ``rows_per_tile``, pipelined ``num_stages`` deep; row indices are int64 when ``int64_rows``."""

    block_n: int
    rows_per_tile: int
    num_warps: int
    grid: int
    int64_rows: bool = False
    num_stages: int = 1


@dataclass(frozen=True)
class NormConfig:
    """One launch of the forward or backward kernel.

    A program walks ``tiles_per_program`` consecutive tiles of ``rows_per_tile`` rows; a tile
    is one ``block_n``-wide block per row when ``single_block``, else a loop of chunks. Row
    indices are int64 when ``int64_rows`` (see MAX_INT32_ROWS), else int32. The tile (or chunk)
    loop is pipelined ``num_stages`` deep (the looped forward: its first pass). The looped
    backward walks bands of ``grid`` tiles, one per program (its program walks tile
    ``band * grid + pid``, ``tiles_per_program`` bands), and sums dW/dB over each band's rows
    for a slice of columns per program, in ``slice_block``-wide tiles (:func:`backward_slice`;
    0: from the grid). A looped backward with ``columns`` only computes each row's c1, c2 (its
    first pass); the launch ``columns`` describes then computes dx, dW and dB (see
    COLUMNS_MIN_BLOCK_BYTES).
    """

    block_n: int
    rows_per_tile: int
    single_block: bool
    num_warps: int
    grid: int
    tiles_per_program: int
    int64_rows: bool = False
    num_stages: int = 1
    slice_block: int = 0
    columns: ColumnsConfig | None = None


@dataclass(frozen=True)
class PartialSumConfig:
    """The stage that sums the (grid, N) float32 dW/dB partials in a fixed order."""

    block_n: int
    block_p: int
    num_warps: int
    grid: int


def register_budget(num_warps: int, target: Target) -> dict[str, int]:
    """``{"maxnreg": registers per thread}`` for a backward launch on an NVIDIA ``target``: all
    a program of ``num_warps`` warps may have, one program per SM (``{}`` on AMD, whose Triton
    has no such option). Without it ptxas (Triton's ``--regAllocOptLevel=2``) sometimes settled
    on half of them and spilled: 64 registers and 8-24 bytes of stack at 512 threads in the
    band backward's RMSNorm on sm_100 and sm_120 and in the single-block fused RMSNorm of 4096
    float32 columns on sm_90; with ``.maxnreg`` 128, 74-109 registers and no spill."""
    if target.backend != "cuda":
        return {}
    threads = num_warps * target.warp_size
    return {"maxnreg": min(target.max_registers_per_thread, target.registers_per_sm // threads)}


def tile_meta(cfg: NormConfig | ColumnsConfig) -> dict[str, int | bool]:
    """The tile constexprs (the kernels' names) and warps a launch takes from its config."""
    return dict(
        ROWS_PER_TILE=cfg.rows_per_tile,
        BLOCK_N=cfg.block_n,
        INT64_ROWS=cfg.int64_rows,
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
    )


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
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
    """(grid, tiles_per_program, int64_rows): ``tiles_per_program`` tiles per program (the
    looped backward walks them one band of ``grid`` tiles at a time, the others consecutively),
    every program non-empty; int64 row indices when the rows the grid covers pass
    MAX_INT32_ROWS."""
    n_tiles = max(1, cdiv(n_rows, rows_per_tile))
    tiles_per_program = cdiv(n_tiles, max(1, min(n_tiles, max_programs)))
    grid = cdiv(n_tiles, tiles_per_program)
    return grid, tiles_per_program, grid * tiles_per_program * rows_per_tile > MAX_INT32_ROWS


def _pipeline_stages(tile_bytes: int, bytes_in_flight: int, target: Target) -> int:
    """Stages that keep ``bytes_in_flight`` of ``tile_bytes`` tiles in flight (FWD_MAX_STAGES),
    their buffers within FWD_MAX_PIPELINE_BYTES and the target's shared memory less 32 KiB (for
    the reductions and another program). 1 on AMD targets: Triton's AMD pipeliner stages loads
    through the 64 KiB LDS differently (a 16-bit 16384-column forward spilled on gfx942 with
    it), and the in-flight model cannot count its depth."""
    budget = min(FWD_MAX_PIPELINE_BYTES, target.shared_memory_per_sm - 32 * 1024)
    if tile_bytes >= bytes_in_flight or target.backend == "hip" or 2 * tile_bytes > budget:
        return 1
    buffers = min(cdiv(bytes_in_flight, tile_bytes), budget // tile_bytes)
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
    ``target.max_threads_per_sm`` / threads per program, a ceiling), each reusing its weight
    and bias registers across its rows. Looped rows: at most FWD_L2_WINDOW_FRACTION of L2 in
    rows being re-read at once (a whole number of programs per SM, or fewer programs than SMs
    when one row per SM exceeds it, their pipelines deepened by SMs / programs).

    Batch invariance: the stages depend on N, the dtypes and the target, never on M, and only
    move data (the arithmetic of a row is the same at any depth).
    """
    max_single_block = FWD_MAX_ROW_BYTES // (4 if elem_size >= 4 else 2)
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, max_single_block, target)
    per_sm = programs_per_sm or max(1, target.max_threads_per_sm // (warps * target.warp_size))
    max_programs = target.sm_count * per_sm
    bytes_in_flight = FWD_BYTES_IN_FLIGHT
    if not single:
        row_bytes = n_cols * max(elem_size, h_elem_size)
        window = max(1, int(FWD_L2_WINDOW_FRACTION * target.l2_bytes) // row_bytes)
        if window >= target.sm_count:
            window -= window % target.sm_count
        else:
            bytes_in_flight = cdiv(bytes_in_flight * target.sm_count, window)
        max_programs = min(max_programs, window)
    tile_bytes = rows * block_n * (elem_size + residual_elem_size)
    stages = _pipeline_stages(tile_bytes, bytes_in_flight, target)
    grid, tiles, int64_rows = _persistent(n_rows, rows, max_programs)
    return NormConfig(block_n, rows, single, warps, grid, tiles, int64_rows, stages)


def backward_config(
    n_rows: int,
    n_cols: int,
    elem_size: int,
    target: Target = H100,
    *,
    loaded_bytes: int | None = None,
    column_bytes: int = 4,
) -> NormConfig:
    """Backward launch: at most one program per SM, each accumulating dW/dB in registers.

    One program per SM bounds the single-block kernel's partial buffers at ``sm_count x N``
    float32 per gradient and keeps the second stage small; to keep the memory system busy with
    so few programs, each one uses up to 512 threads (1024 for float32), tiles of >=
    MIN_TILE_ELEMS elements and a pipelined tile loop (``backward_stages``). ``elem_size``: x's
    element size (it sets the blocking); ``loaded_bytes``: bytes per element of the row tensors
    read (x, dy and dh with a fused residual, each in its own dtype; default x and dy in x's);
    ``column_bytes``: bytes per column of the vectors each tile also loads (weight, and bias
    when x_hat comes from y). Wide rows run in bands of one tile per program that fit in L2
    (BWD_L2_WINDOW_FRACTION), down to BWD_MIN_SM_FRACTION of the SMs (``backward_programs``),
    each with a deeper pipeline; where even that does not fit, the looped launch computes c1,
    c2 only and a column-parallel launch the rest (``columns``, :func:`columns_config`).
    """
    block_n, rows, single, warps = _row_blocking(n_cols, elem_size, BWD_MAX_SINGLE_BLOCK, target)
    loaded_bytes = loaded_bytes or 2 * elem_size
    row_bytes = n_cols * loaded_bytes
    programs, fits = target.sm_count, True
    if not single:
        programs, fits = backward_programs(rows * row_bytes, cdiv(n_rows, rows), target)
    grid, tiles, int64_rows = _persistent(n_rows, rows, programs)
    # every load of the tile loop is staged: the tile's rows, the columns' weight (and bias),
    # and a few per-row floats (rstd, mean, c1, c2)
    stage_bytes = rows * (block_n * loaded_bytes + 16) + block_n * column_bytes
    depth = cdiv((BWD_MAX_STAGES - 1) * target.sm_count, programs)  # buffers for Little's law
    stages = backward_stages(stage_bytes, target, depth + 1)
    columns, slice_block = None, 0
    if not single:
        slice_block = backward_slice(n_cols, programs, elem_size).block
        if not fits:
            columns = columns_config(n_rows, n_cols, elem_size, target, loaded_bytes=loaded_bytes)
            if columns.grid < target.sm_count:  # rows too narrow to give every SM a block
                columns = None
    return NormConfig(
        block_n, rows, single, warps, grid, tiles, int64_rows, stages, slice_block, columns
    )


def backward_programs(band_bytes: int, n_tiles: int, target: Target = H100) -> tuple[int, bool]:
    """``(programs, fits)`` of the looped backward: one per SM when a band of one tile of
    ``band_bytes`` (the row tensors it re-reads) per SM fits in BWD_L2_WINDOW_FRACTION of L2;
    else as many as fit, if that is at least BWD_MIN_SM_FRACTION of the SMs (deeper pipelines);
    else one per SM, and ``fits`` only if all ``n_tiles`` tiles fit at once (otherwise the rows
    would be re-read from DRAM: the column-parallel launch takes over where it can). The
    programs depend on N, the dtypes and the target only; ``fits`` on M too."""
    fit = int(BWD_L2_WINDOW_FRACTION * target.l2_bytes) // max(band_bytes, 1)
    if BWD_MIN_SM_FRACTION * target.sm_count <= fit < target.sm_count:
        return fit, True
    return target.sm_count, fit >= min(target.sm_count, n_tiles)


class BandSlice(NamedTuple):
    """How a looped backward program sums dW/dB over a band (:func:`backward_slice`)."""

    slice_n: int  # columns it owns, from pid * slice_n
    block: int  # tile width (SLICE_N)
    rows: int  # rows per tile (SLICE_ROWS)
    stages: int  # pipeline depth (SLICE_STAGES)

    @property
    def in_registers(self) -> bool:
        """The slice is one tile, whose running dW/dB sums stay in registers across bands
        (SUMS_IN_REGISTERS); else they go through a float32 scratch row, once per band."""
        return self.slice_n <= self.block


def backward_slice(
    n_cols: int, grid: int, elem_size: int, slice_block: int = 0, num_stages: int = 1
) -> BandSlice:
    """The dW/dB sums of the looped backward: program ``p`` owns columns
    ``[p * slice_n, (p + 1) * slice_n)`` (an even share of the ``grid``, rounded up to whole
    128-byte lines, COLUMNS_MIN_BLOCK_BYTES, so that each row's slice is whole L2 sectors and
    128-bit loads) and sums them over each band's rows in tiles of ``rows`` x ``block``
    (SLICE_TILE_BYTES of each tensor), pipelined like the row loop (``num_stages``) up to
    SLICE_MAX_STAGES. ``slice_block``: the tile width, or 0 for the narrowest power of two that
    holds the slice, at most a tile's worth (wider slices, of the widest rows or of grids cut
    short by few rows, are walked in several tiles)."""
    line = COLUMNS_MIN_BLOCK_BYTES // (4 if elem_size >= 4 else 2)
    slice_n = cdiv(cdiv(n_cols, max(grid, 1)), line) * line
    tile = SLICE_TILE_BYTES // (4 if elem_size >= 4 else 2)
    slice_block = slice_block or min(next_power_of_2(slice_n), tile)
    rows = max(1, min(MAX_ROWS_PER_TILE, tile // slice_block))
    return BandSlice(slice_n, slice_block, rows, min(num_stages, SLICE_MAX_STAGES))


def backward_stages(
    stage_bytes: int,
    target: Target = H100,
    max_stages: int = BWD_MAX_STAGES,
    programs_per_sm: int = 1,
) -> int:
    """Pipeline depth of the backward. A loop pipelined S deep holds S - 1 stage buffers of
    ``stage_bytes`` (everything one tile or chunk loads: x, dy, dh, weight, bias, statistics) in
    shared memory; the ``programs_per_sm`` programs of an SM may use BWD_SHARED_FRACTION of its
    shared memory (they also need a little for the row reductions). At most ``max_stages``; 1
    (plain loads) when two buffers don't fit (two stages overlap nothing: the next tile's copy is
    issued only once the current one is consumed) and on AMD targets (see
    :func:`_pipeline_stages`)."""
    budget = int(BWD_SHARED_FRACTION * target.shared_memory_per_sm) // programs_per_sm
    buffers = budget // max(stage_bytes, 1)
    if buffers < 2 or target.backend != "cuda":
        return 1
    return min(max_stages, buffers + 1)


def columns_config(
    n_rows: int, n_cols: int, elem_size: int, target: Target = H100, *, loaded_bytes: int
) -> ColumnsConfig:
    """The backward's column-parallel launch (see COLUMNS_MIN_BLOCK_BYTES): ``block_n``
    columns per program, every row; ``loaded_bytes`` as in :func:`backward_config` (the tile's
    row tensors). Everything but ``int64_rows`` depends on N, the dtypes and the target only.

    The programs an SM holds (``grid / sm_count``, rounded up, at most as many as its registers
    and threads allow at REGISTERS_PER_THREAD: 2 in 16-bit) share its shared memory, and their
    pipelines keep BWD_MAX_STAGES - 1 tiles each in flight (16 KiB tiles of x and dy in 16-bit:
    48 KiB per program, 2.8x an H100's Little's law with one program per SM).
    """
    elem_size = 4 if elem_size >= 4 else 2
    block_n = LOOP_BLOCK_N
    narrowest = COLUMNS_MIN_BLOCK_BYTES // elem_size
    while block_n > narrowest and cdiv(n_cols, block_n) < target.sm_count:
        block_n //= 2
    rows = max(1, COLUMNS_TILE_BYTES // elem_size // block_n)
    threads = next_power_of_2(rows * block_n * elem_size // BYTES_PER_THREAD)
    threads = min(_max_threads(elem_size, target), threads)
    grid = cdiv(n_cols, block_n)
    resident = min(
        target.registers_per_sm // (threads * REGISTERS_PER_THREAD[elem_size]),
        target.max_threads_per_sm // threads,
    )
    per_sm = max(1, min(cdiv(grid, target.sm_count), resident))
    # every load of the tile loop is staged: the tile's rows and a few per-row floats (rstd,
    # mean, c1, c2); weight and bias are loaded once, before the loop
    stage_bytes = rows * (block_n * loaded_bytes + 16)
    stages = backward_stages(stage_bytes, target, BWD_MAX_STAGES, programs_per_sm=per_sm)
    int64_rows = cdiv(n_rows, rows) * rows > MAX_INT32_ROWS
    return ColumnsConfig(
        block_n, rows, max(1, threads // target.warp_size), grid, int64_rows, stages
    )


def partial_sum_config(n_partials: int, n_cols: int) -> PartialSumConfig:
    """Column-parallel sum of the partial rows; one program per PARTIAL_BLOCK_N columns."""
    del n_partials  # each program loops over all of them
    return PartialSumConfig(
        PARTIAL_BLOCK_N, PARTIAL_BLOCK_P, PARTIAL_NUM_WARPS, max(1, cdiv(n_cols, PARTIAL_BLOCK_N))
    )
