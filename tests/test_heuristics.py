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
    assert 1 <= cfg.num_warps * h.WARP_SIZE <= 1024
    if cfg.single_block:
        assert cfg.block_n >= n
    else:
        assert cfg.rows_per_tile == 1


@pytest.mark.parametrize("target", (h.H100, h.A100, h.Target(sm_count=4)))
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
