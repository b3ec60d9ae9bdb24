"""Launch heuristics: the properties the kernels rely on, for every width and dtype."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from layernorm_gpu.kernels import heuristics as h

WIDTHS = (1, 3, 64, 100, 1000, 4096, 5000, 8192, 8193, 16384, 16385, 65536, 1 << 20)
ROW_COUNTS = (1, 7, 37, 1000, 16384, 1 << 20)
ELEM_SIZES = (2, 4)
CONFIGS = (h.forward_config, h.backward_config)


def _blocking(cfg: h.NormConfig) -> tuple:
    return cfg.block_n, cfg.rows_per_tile, cfg.single_block, cfg.num_warps, cfg.num_stages


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", WIDTHS)
def test_row_arithmetic_does_not_depend_on_row_count(config, elem_size, n):
    """Batch invariance: the blocking that shapes a row's reductions is a function of N and the
    dtype only (the interpreter cannot see a layout change, so this is checked here)."""
    blockings = {_blocking(config(m, n, elem_size, h.H100)) for m in ROW_COUNTS}
    assert len(blockings) == 1, blockings


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("m", ROW_COUNTS)
def test_grid_covers_every_row_and_no_program_is_empty(config, elem_size, n, m):
    cfg = config(m, n, elem_size, h.H100)
    rows_per_program = cfg.tiles_per_program * cfg.rows_per_tile
    assert cfg.grid * rows_per_program >= m
    assert (cfg.grid - 1) * rows_per_program < m
    assert 1 <= cfg.num_warps * h.H100.warp_size <= 1024
    if cfg.single_block:
        assert cfg.block_n >= n
    else:
        assert cfg.rows_per_tile == 1


@pytest.mark.parametrize("target", (*h.TARGETS, h.Target(sm_count=4)))
@pytest.mark.parametrize("m", ROW_COUNTS)
def test_backward_partials_are_at_most_one_row_per_sm(target, m):
    for n in (1000, 4096, 65536):
        assert h.backward_config(m, n, 2, target).grid <= target.sm_count


def test_single_block_limits():
    """Forward: 32 KB rows (16384 16-bit / 8192 float32 columns); backward: 8192 columns."""
    assert h.forward_config(8, 16384, 2).single_block
    assert not h.forward_config(8, 16385, 2).single_block
    assert h.forward_config(8, 8192, 4).single_block
    assert not h.forward_config(8, 8193, 4).single_block
    for elem_size in ELEM_SIZES:
        assert h.backward_config(8, 8192, elem_size).single_block
        assert not h.backward_config(8, 8193, elem_size).single_block


@pytest.mark.parametrize("n", (1, 31, 32, 4096, 5000))
def test_partial_sum_programs_cover_every_column(n):
    cfg = h.partial_sum_config(132, n)
    assert (cfg.grid - 1) * cfg.block_n < n <= cfg.grid * cfg.block_n


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("n", (1, 4096, 65536))
@pytest.mark.parametrize("m", (1000, 2**30 - 1, 2**30, 2**30 + 1, 2**31 + 5))
def test_row_indices_are_int64_when_int32_could_wrap(config, n, m):
    """int32 row indices only where every index a launch forms fits: its rows (up to grid x
    tiles x rows per tile) and the looped backward's scratch offsets n_rows + row."""
    cfg = config(m, n, 2, h.H100)
    rows_covered = cfg.grid * cfg.tiles_per_program * cfg.rows_per_tile
    assert cfg.int64_rows == (rows_covered > h.MAX_INT32_ROWS)
    if not cfg.int64_rows:
        assert m + rows_covered - 1 < 2**31
    if m > 2**31:
        assert cfg.int64_rows


def test_heuristics_import_without_triton():
    """The pure heuristics (and the package's config types) need neither Triton nor a GPU;
    only the launchers import Triton, on first use."""
    code = (
        "import sys; sys.modules['triton'] = None; "
        "import layernorm_gpu.kernels.heuristics as h; h.forward_config(8, 4096, 2); "
        "from layernorm_gpu.kernels import NormConfig, Target; "
        "import layernorm_gpu.kernels.registry; "
        "import layernorm_gpu.kernels as k\n"
        "try:\n    k.norm_fwd\nexcept ImportError:\n    pass\n"
        "else:\n    raise AssertionError('the launcher imported without Triton')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# The sm_80 / sm_90 configs the byte figures, the compile report and batch invariance were
# measured with: (block_n, rows_per_tile, single_block, num_warps, grid) at 16384 rows.
PINNED = {
    ("fwd", 4096, 2, "sm_90"): (4096, 1, True, 8, 1024),
    ("bwd", 4096, 2, "sm_90"): (4096, 1, True, 8, 132),
    ("fwd", 16384, 2, "sm_90"): (16384, 1, True, 16, 512),
    ("fwd", 8192, 4, "sm_90"): (8192, 1, True, 32, 261),
    ("bwd", 8192, 4, "sm_90"): (8192, 1, True, 32, 132),
    # issue 10: the looped forward's grid keeps the rows it re-reads within half of L2
    ("fwd", 65536, 2, "sm_90"): (4096, 1, False, 16, 132),
    # and the looped backward's band of one row per program within 0.6 of it: 60 programs
    ("bwd", 65536, 4, "sm_90"): (4096, 1, False, 16, 60),
    ("fwd", 1024, 2, "sm_80"): (1024, 4, True, 8, 820),
    ("bwd", 1, 2, "sm_80"): (1, 64, True, 1, 86),
    ("fwd", 4096, 2, "sm_80"): (4096, 1, True, 8, 863),
}


@pytest.mark.parametrize("key", PINNED)
def test_sm_80_and_sm_90_configs_are_unchanged(key):
    op, n, elem_size, arch = key
    target = {t.arch: t for t in h.TARGETS}[arch]
    config = h.forward_config if op == "fwd" else h.backward_config
    cfg = config(16384, n, elem_size, target)
    blocking = (cfg.block_n, cfg.rows_per_tile, cfg.single_block, cfg.num_warps, cfg.grid)
    assert blocking == PINNED[key]


@pytest.mark.parametrize("target", h.TARGETS, ids=lambda t: t.arch)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", WIDTHS)
def test_every_lane_gets_128_bits_on_every_target(target, config, elem_size, n):
    """Threads, not warps, follow from the bytes of a tile, so 64-wide waves (gfx942, gfx950)
    keep >= 16 bytes per lane of each tensor, one 128-bit access, wherever a tile has that much
    for one warp; and a program stays inside the target's thread and register budget."""
    cfg = config(16384, n, elem_size, target)
    threads = cfg.num_warps * target.warp_size
    tile_bytes = cfg.rows_per_tile * cfg.block_n * elem_size
    if tile_bytes >= 16 * target.warp_size:
        assert tile_bytes // threads >= 16, (cfg, target.arch)
    assert threads <= target.max_threads_per_block
    assert target.registers_per_sm // threads >= h.REGISTERS_PER_THREAD[elem_size]
    assert threads <= target.max_threads_per_sm


def test_looped_kernels_issue_128_bit_loads_on_64_wide_waves():
    """Issue 10: 4096 columns over 16 x 64 lanes was 4 bf16 (64 bits) per lane; 512 threads
    (8 waves) give 8 (128 bits), as on 32-wide warps."""
    for target in (h.MI300X, h.MI355X):
        cfg = h.backward_config(16384, 65536, 2, target)
        assert not cfg.single_block and cfg.num_warps == 8
        assert cfg.block_n * 2 // (cfg.num_warps * target.warp_size) == 16


def test_targets():
    assert h.Target() == h.H100
    assert h.Target(sm_count=108, arch=80).arch == "sm_80"  # compute capability ints still work
    assert [t.arch for t in h.TARGETS] == ["sm_80", "sm_90", "sm_100", "sm_120", "gfx942", "gfx950"]
    assert {t.backend for t in h.TARGETS if t.warp_size == 64} == {"hip"}
    assert h.H100.capability == 90 and h.MI300X.capability == 0
    # Little's law, issue 10: about 11, 17 and 37 KiB per SM on A100, H100 and B200.
    needed = [round(t.bytes_in_flight_needed / 1024) for t in (h.A100, h.H100, h.B200)]
    assert needed == [11, 17, 37]
    with pytest.raises(ValueError, match="arch"):
        h.Target(arch="ampere")


# Little's law per SM (DRAM bandwidth per SM x loaded latency) and the issue's targets: bytes
# in flight per SM >= 1.5x on A100 and H100, >= 1.0x on B200; rows up to the widths each must
# read once (131072 columns on A100/H100, 262144 on B200).
B200 = h.B200
LITTLE = {  # target: (bytes needed in flight per SM, factor, widest row)
    h.A100: (2.0e12 / 108 * 600e-9, 1.5, 131072),
    h.H100: (3.35e12 / 132 * 700e-9, 1.5, 131072),
    B200: (8.0e12 / 148 * 700e-9, 1.0, 262144),
}
# (target, N) for every power of two from 1024 to the widest row of the target
FWD_CASES = [
    pytest.param(target, 1 << k, id=f"{name}-{1 << k}")
    for target, name in zip(LITTLE, ("A100", "H100", "B200"), strict=True)
    for k in range(10, 19)
    if 1 << k <= LITTLE[target][2]
]


def _fwd_tile_bytes(cfg: h.NormConfig, loaded_bytes_per_element: int) -> int:
    return cfg.rows_per_tile * cfg.block_n * loaded_bytes_per_element


@pytest.mark.parametrize("target, n", FWD_CASES)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("fused", (False, True))
def test_forward_keeps_littles_law_in_flight_with_one_program_per_sm(target, n, elem_size, fused):
    """Bytes of x (and residual) in flight per SM, counting S - 1 pipelined tiles per program
    (1 unpipelined) and the worst occupancy the registers could leave: one program per SM (or
    the grid's programs when the L2 window leaves fewer than SMs). M: 16 rows per SM."""
    needed, factor, _ = LITTLE[target]
    m = 16 * target.sm_count
    loaded = elem_size * (2 if fused else 1)
    cfg = h.forward_config(
        m,
        n,
        elem_size,
        target,
        residual_elem_size=elem_size if fused else 0,
        h_elem_size=elem_size if fused else 0,
        programs_per_sm=1,
    )
    tile = _fwd_tile_bytes(cfg, loaded)
    assert cfg.num_stages != 2  # Triton 3.9 overlaps nothing at two stages
    per_program = tile * max(1, cfg.num_stages - 1)
    assert per_program * min(1, cfg.grid / target.sm_count) >= factor * needed
    assert per_program <= h.FWD_MAX_PIPELINE_BYTES


@pytest.mark.parametrize("target", (h.A100, h.H100, B200), ids=("A100", "H100", "B200"))
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("h_elem_size", (0, 2, 4))
@pytest.mark.parametrize("n", (32768, 65536, 131072, 262144, 1 << 20))
@pytest.mark.parametrize("m", (1, 1000, 16384, 1 << 20))
def test_looped_forward_rereads_rows_within_the_l2_window(target, elem_size, h_elem_size, n, m):
    """Every resident program re-reads its own row: the grid keeps (programs) x (row bytes)
    within FWD_L2_WINDOW_FRACTION of L2, and uses all of it in whole programs per SM where one
    row per SM fits, for any M and any occupancy."""
    for per_sm in (None, 1, 4):
        cfg = h.forward_config(
            m, n, elem_size, target, h_elem_size=h_elem_size, programs_per_sm=per_sm
        )
        if cfg.single_block:
            continue
        row_bytes = n * max(elem_size, h_elem_size)
        budget = h.FWD_L2_WINDOW_FRACTION * target.l2_bytes
        assert cfg.grid == 1 or cfg.grid * row_bytes <= budget
        if budget // row_bytes >= target.sm_count:
            # as many programs as the window holds, rounded down to whole programs per SM
            whole = budget // row_bytes // target.sm_count * target.sm_count
            cap = min(whole, target.sm_count * (per_sm or target.max_threads_per_sm // 512))
            assert cfg.tiles_per_program == h.cdiv(m, min(m, cap))


@pytest.mark.parametrize("n", WIDTHS)
def test_forward_pipeline_depth(n):
    """Stages are 1 or 3..FWD_MAX_STAGES, the buffers fit FWD_MAX_PIPELINE_BYTES, and a tile
    smaller than FWD_BYTES_IN_FLIGHT is pipelined up to it (or to the stage cap)."""
    for elem_size in ELEM_SIZES:
        cfg = h.forward_config(16384, n, elem_size)
        tile = cfg.rows_per_tile * cfg.block_n * elem_size
        buffers = cfg.num_stages - 1
        assert cfg.num_stages == 1 or 3 <= cfg.num_stages <= h.FWD_MAX_STAGES
        assert buffers * tile <= h.FWD_MAX_PIPELINE_BYTES
        if cfg.num_stages == 1:
            assert tile >= h.FWD_BYTES_IN_FLIGHT
        else:
            assert buffers * tile >= h.FWD_BYTES_IN_FLIGHT or cfg.num_stages == h.FWD_MAX_STAGES


@pytest.mark.parametrize("target", h.TARGETS, ids=lambda t: t.arch)
@pytest.mark.parametrize("n", WIDTHS)
def test_pipeline_buffers_fit_each_target(target, n):
    """Plain loads on AMD (the in-flight model cannot count its pipeliner); elsewhere the stage
    buffers of the forward (a program of several per SM) and of the backward (one per SM) fit
    the target's shared memory."""
    for elem_size in ELEM_SIZES:
        fwd = h.forward_config(16384, n, elem_size, target)
        bwd = h.backward_config(16384, n, elem_size, target)
        if target.backend == "hip":
            assert fwd.num_stages == bwd.num_stages == 1
            continue
        tile = fwd.rows_per_tile * fwd.block_n * elem_size
        assert (fwd.num_stages - 1) * tile <= target.shared_memory_per_sm - 32 * 1024
        bwd_stage = bwd.rows_per_tile * bwd.block_n * elem_size * 2 + 4 * bwd.block_n
        assert (bwd.num_stages - 1) * bwd_stage <= target.shared_memory_per_sm - 16 * 1024
        assert bwd.num_stages == 1 or bwd.num_stages >= 3


@pytest.mark.parametrize("target, n", FWD_CASES)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("fused", (False, True))
def test_backward_keeps_littles_law_in_flight(target, n, elem_size, fused):
    """Bytes of x and dy the backward keeps in flight per SM (S - 1 pipelined tiles or chunks,
    1 unpipelined; a looped kernel's first pass, which streams from DRAM; its programs spread
    over the SMs: one per SM, or at least half as many whose pipelines are deeper) against
    Little's law, at every width up to the target's widest. M: 16 rows per SM."""
    needed, factor, _ = LITTLE[target]
    loaded = elem_size * (2 + fused)
    cfg = h.backward_config(16 * target.sm_count, n, elem_size, target, loaded_bytes=loaded)
    assert h.BWD_MIN_SM_FRACTION * target.sm_count <= cfg.grid <= target.sm_count
    assert cfg.num_stages != 2  # Triton 3.9 overlaps nothing at two stages
    tile = cfg.rows_per_tile * cfg.block_n * elem_size * 2
    per_sm = tile * max(1, cfg.num_stages - 1) * cfg.grid / target.sm_count
    assert per_sm >= factor * needed


def _band_fits(cfg: h.NormConfig, n: int, elem_size: int, target: h.Target) -> bool:
    """A band of the looped backward (one tile of x and dy per program) fits the L2 window."""
    band = cfg.grid * cfg.rows_per_tile * n * elem_size * 2
    return band <= h.BWD_L2_WINDOW_FRACTION * target.l2_bytes


@pytest.mark.parametrize("target", (h.A100, h.H100, B200), ids=("A100", "H100", "B200"))
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", (16384, 32768, 65536, 131072, 262144))
def test_looped_backward_fits_its_band_in_l2_or_says_it_does_not(target, elem_size, n):
    """The looped backward's grid: its band (one row of x and dy per program, re-read twice)
    fits in BWD_L2_WINDOW_FRACTION of L2, on one program per SM or as few as
    BWD_MIN_SM_FRACTION of the SMs; where it cannot, the column-parallel launch takes over.
    16-bit rows up to 131072 columns (A100, H100) and 262144 (B200) are read once (issue 10)."""
    m = (1 << 26) // n
    cfg = h.backward_config(m, n, elem_size, target)
    assert not cfg.single_block
    assert cfg.grid >= min(m, h.BWD_MIN_SM_FRACTION * target.sm_count)
    assert _band_fits(cfg, n, elem_size, target) == (cfg.columns is None)
    if elem_size == 2 and n <= (262144 if target is B200 else 131072):
        assert cfg.columns is None


@pytest.mark.parametrize("target", (h.A100, h.H100, B200), ids=("A100", "H100", "B200"))
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", (8192, 16384, 32768, 65536, 131072, 262144, 1 << 20))
@pytest.mark.parametrize("m", (1, 64, 1000, None))
def test_backward_goes_column_parallel_exactly_where_no_band_fits_l2(target, elem_size, n, m):
    """The looped backward computes c1, c2 only and a column-parallel launch the rest exactly
    where no band fits the L2 window: not one row per program on at least BWD_MIN_SM_FRACTION
    of the SMs, nor all of M's rows at once; 16-bit rows at M x N = 2**26: from 262144 columns on
    an A100 / H100 and 524288 on a B200."""
    m = m or (1 << 26) // n
    cfg = h.backward_config(m, n, elem_size, target)
    if cfg.single_block:
        assert cfg.columns is None
        return
    fit = int(h.BWD_L2_WINDOW_FRACTION * target.l2_bytes) // (n * elem_size * 2)
    fits = fit >= h.BWD_MIN_SM_FRACTION * target.sm_count or fit >= min(m, target.sm_count)
    assert (cfg.columns is None) == fits  # these targets' SMs all get a block of columns
    if cfg.columns is not None:
        assert cfg.columns == h.columns_config(m, n, elem_size, target, loaded_bytes=2 * elem_size)
    assert cfg.grid <= h.backward_config(1 << 20, n, elem_size, target).grid
    if elem_size == 2 and m == (1 << 26) // n:
        assert (cfg.columns is not None) == (n >= (524288 if target is B200 else 262144))


@pytest.mark.parametrize("n", (1000, 16384, 65536, 100000, 131072, 262144, 1 << 20))
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("target", (h.H100, B200, h.MI300X), ids=("H100", "B200", "MI300X"))
def test_looped_backward_slices_cover_every_column_once(target, elem_size, n):
    """The dW/dB slices of the looped backward: whole 128-byte lines each, together every column
    exactly once over at most the grid's programs, in tiles of at most SLICE_TILE_BYTES per
    tensor; the tile width depends on N, the dtype and the target only (a grid cut short by few
    rows walks its wider slices in several tiles)."""
    cfg = h.backward_config(16384, n, elem_size, target)
    if cfg.single_block:
        return
    for grid in (cfg.grid, 1, 7):
        slice_n, block, rows, stages = h.backward_slice(
            n, grid, elem_size, cfg.slice_block, cfg.num_stages
        )
        assert stages == min(cfg.num_stages, h.SLICE_MAX_STAGES)
        assert slice_n * elem_size % h.COLUMNS_MIN_BLOCK_BYTES == 0
        assert h.cdiv(n, slice_n) <= grid and grid * slice_n >= n
        assert block == cfg.slice_block and block & (block - 1) == 0
        assert rows == max(1, min(h.MAX_ROWS_PER_TILE, h.SLICE_TILE_BYTES // elem_size // block))
    assert cfg.slice_block * elem_size <= h.SLICE_TILE_BYTES
    assert h.backward_config(3, n, elem_size, target).slice_block == cfg.slice_block


@pytest.mark.parametrize("target", h.TARGETS, ids=lambda t: t.arch)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", (1000, 16384, 65536, 100000, 131072, 262144, 1 << 20, 1 << 22))
def test_columns_config(target, elem_size, n):
    """The column-parallel backward: the widest power-of-two blocks (one 128-byte line per row
    to LOOP_BLOCK_N) that give every SM a program, COLUMNS_TILE_BYTES tiles of BYTES_PER_THREAD
    per thread, stage buffers of all the programs an SM holds (as many as its registers allow,
    at most) within its shared memory, and nothing but the row indices' width depending on M."""
    loaded = 2 * elem_size
    cfg = h.columns_config(16384, n, elem_size, target, loaded_bytes=loaded)
    narrowest = h.COLUMNS_MIN_BLOCK_BYTES // elem_size
    assert narrowest <= cfg.block_n <= h.LOOP_BLOCK_N
    assert cfg.block_n & (cfg.block_n - 1) == 0
    assert cfg.grid == h.cdiv(n, cfg.block_n)
    assert cfg.grid >= target.sm_count or cfg.block_n == narrowest
    assert h.cdiv(n, 2 * cfg.block_n) < target.sm_count or cfg.block_n == h.LOOP_BLOCK_N
    tile = cfg.rows_per_tile * cfg.block_n * elem_size
    assert tile == max(h.COLUMNS_TILE_BYTES, cfg.block_n * elem_size)
    threads = cfg.num_warps * target.warp_size
    assert threads * h.BYTES_PER_THREAD == tile
    by_registers = target.registers_per_sm // (threads * h.REGISTERS_PER_THREAD[elem_size])
    per_sm = min(h.cdiv(cfg.grid, target.sm_count), by_registers)
    if target.backend == "cuda" and elem_size == 2 and tile == h.COLUMNS_TILE_BYTES:
        assert by_registers == 2  # 256 threads at 128 registers: two programs per SM
    stage = cfg.rows_per_tile * (cfg.block_n * loaded + 16)
    assert per_sm * (cfg.num_stages - 1) * stage <= h.BWD_SHARED_FRACTION * (
        target.shared_memory_per_sm
    )
    assert cfg.num_stages in (1, 3, 4) and (cfg.num_stages == 1 or target.backend == "cuda")
    for m in (1, 37, 1 << 20, 1 << 31):
        other = h.columns_config(m, n, elem_size, target, loaded_bytes=loaded)
        assert dataclasses.replace(other, int64_rows=False) == cfg
        assert other.int64_rows == (m > h.MAX_INT32_ROWS)


# A GPU with many SMs and little L2: rows from 8448 16-bit columns fit no band (74 rows in 0.6 of
# 4 MiB, under 40% of 304 SMs), but under 19456 columns their 64-column blocks would leave SMs
# without one.
MANY_SMS_SMALL_L2 = dataclasses.replace(h.MI300X, l2_bytes=4 * 2**20)


@pytest.mark.parametrize("target", (*h.TARGETS, MANY_SMS_SMALL_L2), ids=lambda t: t.arch)
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
@pytest.mark.parametrize("n", (8448, 11264, 16384, 19456, 32768, 65536))
def test_backward_stays_looped_where_column_blocks_would_idle_sms(target, elem_size, n):
    """Column-parallel only where every SM gets a block of columns: where no band fits L2 but
    blocks of 128 bytes per row would leave SMs idle, the looped backward stays (re-reading its
    rows from DRAM, as the traffic report's widths table would count)."""
    cfg = h.backward_config(16384, n, elem_size, target)
    if cfg.columns is not None:
        assert cfg.columns.grid >= target.sm_count
    elif not cfg.single_block:
        narrowest = h.COLUMNS_MIN_BLOCK_BYTES // elem_size
        assert _band_fits(cfg, n, elem_size, target) or h.cdiv(n, narrowest) < target.sm_count
    if target is MANY_SMS_SMALL_L2 and elem_size == 2:
        assert (cfg.columns is not None) == (n >= 19456)
        assert not _band_fits(cfg, n, elem_size, target)


@pytest.mark.parametrize("target", (h.A100, h.H100, B200), ids=("A100", "H100", "B200"))
@pytest.mark.parametrize("n", (16384, 32768, 65536, 131072, 262144, 1 << 20, 1 << 22))
@pytest.mark.parametrize("elem_size", ELEM_SIZES)
def test_column_parallel_backward_keeps_littles_law_in_flight(target, n, elem_size):
    """Bytes of x and dy the column-parallel launch keeps in flight per SM (one program per SM
    counted, each S - 1 tiles, or 1 unpipelined) against Little's law, wherever the backward
    uses it (M x N = 2**26), the widest rows included."""
    needed, factor, _ = LITTLE[target]
    cfg = h.backward_config(max(1, (1 << 26) // n), n, elem_size, target).columns
    if cfg is None:
        return
    tile = cfg.rows_per_tile * cfg.block_n * elem_size * 2
    per_sm = tile * max(1, cfg.num_stages - 1) * min(1, cfg.grid / target.sm_count)
    assert per_sm >= factor * needed


@pytest.mark.parametrize("target", h.TARGETS, ids=lambda t: t.arch)
def test_register_budget_is_a_programs_share_on_nvidia_only(target):
    """``.maxnreg`` = all the registers one program of that many warps may have (ptxas otherwise
    settled on half and spilled); AMD's Triton has no such option."""
    budget = h.register_budget(16, target)
    if target.backend == "cuda":
        assert budget == {"maxnreg": 128}  # 512 threads of a 64K-register SM
        assert h.register_budget(2, target) == {"maxnreg": 255}
    else:
        assert budget == {}
