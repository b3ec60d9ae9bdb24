"""Launch heuristics: the properties the kernels rely on, for every width and dtype."""

from __future__ import annotations

import subprocess
import sys

import pytest

from layernorm_gpu.kernels import heuristics as h

WIDTHS = (1, 3, 64, 100, 1000, 4096, 5000, 8192, 8193, 16384, 16385, 65536, 1 << 20)
ROW_COUNTS = (1, 7, 37, 1000, 16384, 1 << 20)
ELEM_SIZES = (2, 4)
CONFIGS = (h.forward_config, h.backward_config)


def _blocking(cfg: h.NormConfig) -> tuple:
    return cfg.block_n, cfg.rows_per_tile, cfg.single_block, cfg.num_warps


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
    ("fwd", 65536, 2, "sm_90"): (4096, 1, False, 16, 512),
    ("bwd", 65536, 4, "sm_90"): (4096, 1, False, 16, 132),
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
