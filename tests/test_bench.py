"""The issue's "prove the speed without a GPU" targets, checked on measured numbers.

Traffic: the real kernels run in Triton's interpreter with every load and store counted
(:mod:`bench.proof.trace`). Compile: a representative subset compiled offline for sm_90, with
spills from cuobjdump, 128-bit accesses and 64-bit offsets from the PTX and 64-bit row indices
from the TTIR (:mod:`bench.proof.compile_report`). Each check also runs on a counter-example
that must fail it, so a check that cannot fail would show.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.proof import compile_report, l2, occupancy, trace, traffic
from bench.proof.bytes_model import bytes_moved
from layernorm_gpu.kernels.heuristics import (
    H100,
    NormConfig,
    Target,
    backward_config,
    forward_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def interpreted():
    """Skip where the kernels are compiled (CUDA): the traffic counts need the interpreter."""
    try:
        trace.require_interpreter()
    except RuntimeError as e:
        pytest.skip(str(e))


# A ragged single-block row with 4-row tiles (LayerNorm), and the fused residual path (RMSNorm).
@pytest.mark.parametrize("case", traffic.STRUCTURAL_CASES[:2], ids=lambda c: c.describe())
def test_single_block_reads_and_writes_each_element_once(interpreted, case):
    fwd, bwd = traffic.op_traffic(case)
    elems = case.n_rows * case.n_cols
    # The forward: one launch; x (and residual) read once, y (and h) written once.
    assert [lc.kernel for lc in fwd.launches] == ["norm_fwd_single_block"]
    assert fwd.get("x").loads_per_element == {1: elems}
    assert fwd.get("x").loaded == elems * case.elem_size
    assert fwd.get("y").stores_per_element == {1: elems}
    if case.fused_residual:
        assert fwd.get("residual").loads_per_element == {1: elems}
        assert fwd.get("h").stores_per_element == {1: elems}
    # The backward: the main kernel and the partial sum; x (h when fused) and dy read once,
    # dx written once.
    assert [lc.kernel for lc in bwd.launches] == ["norm_bwd_single_block", "sum_partials"]
    for role in ("x", "dy"):
        assert bwd.get(role).loads_per_element == {1: elems}, role
    assert bwd.get("dx").stores_per_element == {1: elems}
    assert fwd.unattributed_bytes == bwd.unattributed_bytes == 0
    assert all(check.passed for check in traffic.structural_checks(case, fwd, bwd))


@pytest.mark.parametrize(
    "case",
    (traffic.Case(8, 256), traffic.Case(8, 256, is_rms=True, has_bias=False)),
    ids=lambda c: c.describe(),
)
def test_launchers_do_nothing_but_their_launches(interpreted, case):
    """Forward: exactly one launch, backward: exactly two, and no torch work around them (no
    fill of a mean RMSNorm does not have)."""
    for mode, config, launches in (("fwd", forward_config, 1), ("bwd", backward_config, 2)):
        cfg = config(case.n_rows, case.n_cols, case.elem_size, H100)
        measured = traffic.launcher_traffic(mode, case, cfg, case.n_rows)
        assert len(measured.launches) == launches, mode
        assert measured.eager == [], mode


def test_backward_in_bands_is_one_launch_with_its_sums_in_registers(interpreted, monkeypatch):
    """A looped backward in bands (12 rows of 8200 columns on a 4-SM GPU: three bands of four
    rows, slices of one tile) through autograd passes the structural checks: one launch, no
    partial rows or running-sum rows (the sums stay in registers), every access attributed. A
    backward that launched twice, or kept a row of sums per program, fails them."""
    import importlib

    target = Target(sm_count=4)
    for module in ("norm_fwd", "norm_bwd"):
        launcher = importlib.import_module(f"layernorm_gpu.kernels.{module}")
        monkeypatch.setattr(launcher, "device_target", lambda device: target)
    case = traffic.Case(12, 8200, torch.bfloat16)
    fwd, bwd = traffic.op_traffic(case)
    assert [(lc.kernel, lc.grid) for lc in bwd.launches] == [("norm_bwd_looped", (4,))]
    assert not {"dw_acc", "db_acc", "dw_partial", "db_partial"} & set(bwd.tensors)
    checks = traffic.structural_checks(case, fwd, bwd, target)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    launch_check = "backward in bands: 1 Triton launch (it stores dW/dB itself)"
    assert launch_check in {c.name for c in checks}
    launches = [
        trace.Launch("norm_bwd_looped", (4,), {"dw_acc": (4, 8200), "db_acc": (8200,)}),
        trace.Launch("sum_partials", (257,), {}),
    ]
    twice = trace.Traffic(launches, {}, [], 0)
    failed = {c.name for c in traffic.structural_checks(case, fwd, twice, target) if not c.passed}
    assert failed == {launch_check, "dW running sums: one N-wide float32 row"}


def test_persistent_backward_partials_are_one_row_per_sm(interpreted):
    # 4 "SMs" and 40 one-row tiles: each program walks 10 tiles, and the partial buffers have
    # exactly one float32 row per program.
    case = traffic.Case(40, 4096, torch.bfloat16)
    cfg = backward_config(case.n_rows, case.n_cols, case.elem_size, Target(sm_count=4))
    assert (cfg.grid, cfg.tiles_per_program) == (4, 10)
    bwd = traffic.launcher_traffic("bwd", case, cfg, case.n_rows)
    for role in ("dw_partial", "db_partial"):
        assert bwd.launches[0].shapes[role] == (4, case.n_cols)
        assert bwd.get(role).stores_per_element == {1: 4 * case.n_cols}
    assert bwd.get("x").loads_per_element == {1: case.n_rows * case.n_cols}
    assert bwd.get("dy").loads_per_element == {1: case.n_rows * case.n_cols}


# A single-block problem (partial rows, read back from L2), and a looped backward in three bands
# of four rows on a 4-SM GPU (its running dW/dB sums in registers).
BYTE_MODEL_CASES = (
    (traffic.Case(64, 2048, torch.float16), H100),
    (traffic.Case(12, 8200, torch.bfloat16), Target(sm_count=4)),
)


@pytest.mark.parametrize("case, target", BYTE_MODEL_CASES, ids=("single-block", "bands"))
def test_byte_model_matches_the_measured_traffic(interpreted, case, target):
    """DRAM model = distinct bytes each kernel touches (no loads of what the launches stored just
    before: loads_from_l2) + eager fills, at the heuristics' config."""
    for mode in ("fwd", "bwd"):
        config = traffic.launch_config(mode, case, target)
        measured = traffic.launcher_traffic(mode, case, config, case.n_rows)
        from_l2 = case.loads_from_l2(mode, target)
        distinct = sum(
            t.distinct_stored + (0 if role in from_l2 else t.distinct_loaded)
            for role, t in measured.tensors.items()
        )
        assert distinct + measured.eager_bytes == case.byte_model(mode, target).total, mode
    if config.single_block:
        assert from_l2 == {"dw_partial", "db_partial"}
        assert "dW/dB partials read" in case.byte_model("bwd", target).terms
    else:
        assert config.tiles_per_program == 3 and from_l2 == frozenset()
        assert [lc.kernel for lc in measured.launches] == ["norm_bwd_looped"]
        assert "dw_acc" not in measured.tensors
        assert "dW/dB running sums" not in case.byte_model("bwd", target).terms


def test_running_sums_of_slices_wider_than_a_tile_go_through_one_scratch_row(interpreted):
    """Slices wider than one tile (here 2112 columns in 1024-wide tiles): the running dW/dB sums
    go through one N-wide float32 row per gradient, stored at each band but the last and loaded
    back at each band but the first."""
    case = traffic.Case(12, 8200, torch.bfloat16)
    target = Target(sm_count=4)
    config = dataclasses.replace(traffic.launch_config("bwd", case, target), slice_block=1024)
    measured = traffic.launcher_traffic("bwd", case, config, case.n_rows)
    assert measured.launches[0].shapes["dw_acc"] == (case.n_cols,)
    assert measured.get("dw_acc").stores_per_element == {2: case.n_cols}
    assert measured.get("dw_acc").loads_per_element == {2: case.n_cols}


def test_partial_rows_past_the_l2_window_are_read_back_from_dram():
    """The single-block backward's partial rows (grid x N float32 per gradient) are read back
    from L2 where all of them fit BWD_L2_WINDOW_FRACTION of it, from DRAM where they do not."""
    fits = bytes_moved("bwd", 16384, 8192, 2)
    assert fits.terms["dW/dB partials read"] == 0
    assert fits.terms["dW/dB partials write"] == 2 * 132 * 8192 * 4
    small_l2 = Target(l2_bytes=8 * 2**20)
    spills = bytes_moved("bwd", 16384, 8192, 2, target=small_l2)
    assert spills.terms["dW/dB partials read"] == spills.terms["dW/dB partials write"] > 0


def test_big_problem_meets_the_traffic_targets(interpreted):
    # 16384 x 4096 bfloat16, extrapolated from measured per-program and per-row bytes.
    for mode, target in traffic.BIG_TARGETS.items():
        ex = traffic.extrapolate(mode)
        assert ex.validated, mode
        minimum = traffic.BIG_CASE.byte_model(mode).minimum
        ratio = ex.total(distinct=True) / minimum
        assert ratio <= target, (mode, ratio)
        assert ratio == pytest.approx(traffic.BIG_CASE.byte_model(mode).ratio, rel=1e-12)
    # The counter-examples: a backward whose band does not fit its L2 window reads x and dy
    # again and must miss the target: column-parallel at 262144 columns (not even 53 programs'
    # rows fit 60% of an H100's L2), and in bands on a GPU of many SMs and little L2 (an MI300X
    # with 4 MiB: 304 rows of 2 x 16 KiB); the widest band that fits (131072 columns, 57
    # programs) and a narrower one are read once.
    for n_cols, target in ((262144, H100), (8448, Target(sm_count=304, l2_bytes=4 * 2**20))):
        spills = bytes_moved("bwd", 2**26 // n_cols, n_cols, 2, target=target)
        assert "pass-2 re-read" in spills.terms, n_cols
        assert spills.ratio > traffic.BIG_TARGETS["bwd"], n_cols
    assert "band re-read" in spills.terms and spills.ratio > 1.6
    for n_cols in (16384, 131072):
        assert "pass-2 re-read" not in bytes_moved("bwd", 2**26 // n_cols, n_cols, 2).terms


# (is_rms, x, weight, bias requires grad): every non-empty subset
GRAD_SUBSETS = [
    (is_rms, *needs)
    for is_rms in (False, True)
    for needs in itertools.product((False, True), repeat=3)
    if any(needs) and not (is_rms and needs[2])
]


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float32))
@pytest.mark.parametrize("is_rms, x_grad, weight_grad, bias_grad", GRAD_SUBSETS)
def test_every_op_is_exactly_its_triton_launches(
    interpreted, dtype, is_rms, x_grad, weight_grad, bias_grad
):
    """For every requires_grad subset of (x, weight, bias): the forward is one Triton launch,
    the backward one (dx alone) or two (with dW/dB partials), and no eager torch kernel runs
    around them, inside the custom ops included (a TorchDispatchMode sees their CPU bodies)."""
    import layernorm_gpu as lg

    n = 300
    x = torch.randn(6, n).to(dtype).requires_grad_(x_grad)
    weight = torch.randn(n).to(dtype).requires_grad_(weight_grad)
    bias = None if is_rms else torch.randn(n).to(dtype).requires_grad_(bias_grad)
    out = []
    if is_rms:
        fwd = trace.trace(lambda: out.append(lg.rms_norm(x, (n,), weight, backend="triton")))
    else:
        fwd = trace.trace(
            lambda: out.append(lg.layer_norm(x, (n,), weight, bias, backend="triton"))
        )
    dy = torch.randn_like(out[0])
    bwd = trace.trace(lambda: out[0].backward(dy))
    assert len(fwd.launches) == 1 and not fwd.eager, (fwd.launches, fwd.eager)
    kernels = [lc.kernel for lc in bwd.launches]
    assert kernels == ["norm_bwd_single_block"] + ["sum_partials"] * (weight_grad or bias_grad)
    assert not bwd.eager, bwd.eager


@pytest.mark.parametrize("is_rms, x_grad, weight_grad, bias_grad", GRAD_SUBSETS)
def test_column_parallel_backward_is_two_launches_and_no_eager_kernel(
    interpreted, monkeypatch, is_rms, x_grad, weight_grad, bias_grad
):
    """Rows too wide for L2 (here a GPU whose L2 is 64 KiB): the backward is the c1/c2 launch
    and the column-parallel launch, nothing else, for every requires_grad subset; its gradients
    are the float64 reference's."""
    import importlib

    import layernorm_gpu as lg
    from helpers import assert_close

    launcher = importlib.import_module("layernorm_gpu.kernels.norm_bwd")
    monkeypatch.setattr(
        launcher, "device_target", lambda device: Target(sm_count=8, l2_bytes=2**16)
    )
    n = 8200  # past the single-block backward
    x = torch.randn(6, n).to(torch.bfloat16).requires_grad_(x_grad)
    weight = torch.randn(n).to(torch.bfloat16).requires_grad_(weight_grad)
    bias = None if is_rms else torch.randn(n).to(torch.bfloat16).requires_grad_(bias_grad)
    inputs = [t for t in (x, weight, bias) if t is not None and t.requires_grad]

    def norm(x, weight, bias, backend):
        if is_rms:
            return lg.rms_norm(x, (n,), weight, backend=backend)
        return lg.layer_norm(x, (n,), weight, bias, backend=backend)

    out = []
    trace.trace(lambda: out.append(norm(x, weight, bias, "triton")))
    dy = torch.randn_like(out[0])
    bwd = trace.trace(lambda: out.append(torch.autograd.grad(out[0], inputs, dy)))
    assert [lc.kernel for lc in bwd.launches] == ["norm_bwd_looped", "norm_bwd_columns"]
    assert not bwd.eager, bwd.eager
    f64 = [
        None if t is None else t.detach().double().requires_grad_(t.requires_grad)
        for t in (x, weight, bias)
    ]
    want = torch.autograd.grad(
        norm(*f64, "reference"), [t for t in f64 if t is not None and t.requires_grad], dy.double()
    )
    for got, expected in zip(out[1], want, strict=True):
        assert_close(got, expected, reduction=1 if got.dim() == 2 else 6)


def test_l2_model_serves_a_re_read_only_within_its_capacity():
    """Sectors a (10) then b (10) then a again: a 20-sector LRU cache serves the re-read of a,
    a 15-sector one evicted a's sectors before it came back."""
    sector = l2.SECTOR_BYTES

    def access(role: str, first: int) -> trace.Access:
        addresses = np.arange(first * sector, (first + 10) * sector, 4, dtype=np.uint64)
        return trace.Access(role, addresses, 4, False, 0, 0)

    seq = [access("x", 0), access("dy", 10), access("x", 0)]
    distinct = {"x": 10 * sector, "dy": 10 * sector}
    assert l2.dram_loaded(seq, 20 * sector) == (distinct, distinct)
    assert l2.dram_loaded(seq, 15 * sector) == ({"x": 20 * sector, "dy": 10 * sector}, distinct)


def test_lockstep_interleaves_the_programs_of_each_launch():
    """The interpreter's order (program after program) becomes step after step, the i-th access
    of every program at step i (a program with fewer accesses drops out), launch after launch."""

    def access(launch: int, program: int, i: int) -> trace.Access:
        return trace.Access(
            f"{launch}.{program}.{i}", np.zeros(0, np.uint64), 2, False, launch, program
        )

    interpreted = [access(0, 0, 0), access(0, 0, 1), access(0, 1, 0), access(1, 0, 0)]
    interpreted += [access(0, 2, 0), access(0, 2, 1), access(0, 2, 2)]
    order = [a.role for a in l2.lockstep(interpreted)]
    assert order == ["0.0.0", "0.1.0", "0.2.0", "0.0.1", "0.2.1", "0.2.2", "1.0.0"]


# A looped backward in bands small enough to trace whole: 4 programs, 2 bands of one row each,
# rows of 256 bf16 columns in 4 chunks of 64, LayerNorm with weight and bias. A band is 4 rows
# of x and dy (4 KiB); between a row's first read and its last the programs also write up to
# a band of dx (2 KiB) and keep 3.5 KiB of column vectors (weight, dW/dB sums, dW, dB).
BAND_CASE = traffic.Case(8, 256, torch.bfloat16)


def _band_config() -> NormConfig:
    cfg = backward_config(8, 256, 2, Target(sm_count=4))
    return dataclasses.replace(cfg, block_n=64, rows_per_tile=1, single_block=False, grid=4,
                               tiles_per_program=2, slice_block=0, columns=None)  # fmt: skip


@pytest.mark.parametrize("l2_kib, fits", ((16, True), (4, False)))
def test_looped_backward_reads_its_band_once_where_it_fits_l2(interpreted, l2_kib, fits):
    """Every program of the launch through one L2: with 16 KiB, x and dy come from DRAM once
    (the column sums read rows their programs just read, pass 2 its own); with 4 KiB (the band
    alone fills it) the column sums and pass 2 fetch them again."""
    target = Target(sm_count=4, l2_bytes=l2_kib * 1024)
    check = traffic.window_check("bwd", BAND_CASE, target, _band_config())
    # traced as it is: no programs, bands or columns to scale down, the L2 not scaled
    assert check.traced == check.config and check.traced_cols == 256
    assert check.cache_bytes == target.l2_bytes
    assert set(check.distinct) == {"x", "dy"}
    assert check.distinct["x"] == 8 * 256 * 2
    if fits:
        assert check.reads <= 1.02, check.reads
    else:
        assert check.reads >= 1.5, check.reads


@pytest.mark.parametrize("l2_kib, fits", ((16, True), (2, False)))
def test_fused_forward_reads_h_back_from_l2_where_its_rows_fit(interpreted, l2_kib, fits):
    """The looped fused forward (4 programs, 2 rows each of 256 fp16 columns in chunks of 64)
    stores h in its first pass and reads it back in its second: counted with x and the
    residual, read once in all where the rows fit L2, h fetched again where they do not."""
    case = traffic.Case(8, 256, torch.float16, is_rms=True, has_bias=False, fused_residual=True)
    cfg = dataclasses.replace(
        forward_config(8, 256, 2),
        block_n=64,
        rows_per_tile=1,
        single_block=False,
        grid=4,
        tiles_per_program=2,
    )
    check = traffic.window_check("fwd", case, Target(sm_count=4, l2_bytes=l2_kib * 1024), cfg)
    assert set(check.distinct) == {"x", "residual"} and "h" in check.from_dram
    if fits:
        assert check.reads == 1.0 and check.from_dram["h"] == 0, check
    else:
        assert check.reads >= 1.4 and check.from_dram["h"] > 0, check


def test_window_check_takes_only_looped_configs_in_bands_or_rows(interpreted):
    """The column-parallel backward reads x and dy twice by construction, a single block once:
    no L2 window to check."""
    for config in (backward_config(16, 4096, 2), backward_config(4096, 262144, 2)):
        with pytest.raises(ValueError, match="looped config"):
            traffic.window_check("bwd", BAND_CASE, H100, config)


@pytest.mark.slow
def test_real_looped_backward_configs_through_the_l2_model(interpreted):
    """The heuristics' own looped backwards on an H100, scaled down and replayed through the L2
    scaled with them: at 16384 bf16 columns (a band of 128 rows, 16% of L2) and 131072 (57
    programs, the fullest band: 57% of L2) x and dy come from DRAM once; the 131072 config on
    half the L2 (the band over 100% of it) fetches them again."""
    for n_cols in (16384, 131072):
        fits = traffic.window_check("bwd", traffic.Case(2**26 // n_cols, n_cols), H100)
        assert fits.traced.grid == traffic.TRACED_PROGRAMS < fits.config.grid, n_cols
        assert fits.reads <= 1.01, (n_cols, fits.reads)
    half = dataclasses.replace(H100, l2_bytes=H100.l2_bytes // 2)
    spills = traffic.window_check("bwd", traffic.Case(512, 131072), half, fits.config)
    assert spills.reads >= 1.5, spills.reads


def test_widths_table_judges_every_width_up_to_the_widest_read_once(interpreted):
    table, _ = traffic.widths_table((H100,), (4096, 262144))
    results = {(int(row[0]), row[2]): row[-1] for row in table.rows}
    assert results[(4096, "fwd")] == results[(4096, "bwd")] == "PASS"
    # 262144: column-parallel, x and dy read twice, reported
    assert table.rows[3][5] == "2" and results[(262144, "bwd")] == "(reported)"
    # 16384: one launch in bands of 128 rows (16% of L2), read once (the model, and traced);
    # no partial rows, the running dW/dB sums one row: 1.0007 x the minimum
    table, ok = traffic.widths_table((H100,), (16384,), trace="all")
    band = table.rows[1]
    assert "bands of 128 rows, slices of 128 cols" in band[3] and band[4] == "16% of L2"
    assert band[5] == "1 (traced 1.00)" and band[6] == "1.0003" and band[-1] == "PASS"
    assert ok


# Compiled for sm_90: the bfloat16 LayerNorm of the big problem (one row per tile), the widest
# single blocks in bfloat16 (most registers per thread), the widest float32 RMSNorm forward, and
# a looped fused backward.
COMPILED = [
    compile_report.Variant("fwd", "bfloat16", 4096),
    compile_report.Variant("bwd", "bfloat16", 4096),
    compile_report.Variant("fwd", "bfloat16", 16384),
    compile_report.Variant("bwd", "bfloat16", 8192),
    compile_report.Variant("fwd", "float32", 16384, is_rms=True, has_bias=False),
    compile_report.Variant("bwd", "float16", 65536, fused_residual=True),
]
# 4100 bfloat16 elements is 8200 bytes: rows not 16-byte aligned, accesses must stay narrow.
UNALIGNED = compile_report.Variant("fwd", "bfloat16", 4100)
# 4104 bfloat16 elements is 8208 bytes: 16-byte-aligned rows that Triton's JIT cannot prove
# aligned (N % 16 != 0) until the kernels assert it (ALIGN). And the widest float32 LayerNorm
# forward, which spilled at 16 warps (128-register cap) before float32 rows got 32 warps.
ALIGNED_NOT_PROVEN = compile_report.Variant("fwd", "bfloat16", 4104)
WIDEST_FP32_LN = compile_report.Variant("fwd", "float32", 16384)
# More rows than int32 indexes: the (2**31 + 5, 1) tensor of issue 8.6 (tiles of 64 rows), a
# looped backward in bands (whose bands start at band x grid rows) and the c1/c2 launch of a
# column-parallel one (whose scratch is addressed at n_rows + row), on meta tensors.
HUGE = [
    compile_report.Variant("fwd", "bfloat16", 1, n_rows=compile_report.HUGE_ROWS),
    compile_report.Variant("bwd", "bfloat16", 1, n_rows=compile_report.HUGE_ROWS),
    compile_report.Variant("bwd", "float32", 65536, is_rms=True, n_rows=compile_report.HUGE_ROWS),
    compile_report.Variant("bwd", "float32", 131072, is_rms=True, n_rows=compile_report.HUGE_ROWS),
]


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, str], compile_report.KernelReport]:
    """{(kernel, variant label): report} of everything above, compiled once for sm_90."""
    variants = [*COMPILED, UNALIGNED, ALIGNED_NOT_PROVEN, WIDEST_FP32_LN, *HUGE]
    reports = compile_report.compile_all(variants, archs=(90,), jobs=2, unique=False)
    return {(r.kernel, r.variant): r for r in reports}


def _report(compiled, variant: compile_report.Variant) -> compile_report.KernelReport:
    config = forward_config if variant.op == "fwd" else backward_config
    elem_size = compile_report.DTYPES[variant.dtype].itemsize
    single = config(variant.n_rows, variant.n_cols, elem_size).single_block
    kernel = f"norm_{variant.op}_{'single_block' if single else 'looped'}"
    report = compiled[(kernel, variant.label())]
    assert not report.error, report.error
    return report


def test_compiled_kernels_have_no_spills_128_bit_tiles_and_64_bit_offsets(compiled):
    partial_sums = [r for (kernel, _), r in compiled.items() if kernel == "sum_partials"]
    for report in [_report(compiled, v) for v in COMPILED] + partial_sums:
        assert 0 < report.regs <= 255, report
        assert (report.stack, report.local) == (0, 0), report
        assert report.vectorized and report.offsets_64bit, report
    big_forward = _report(compiled, COMPILED[0])
    # 4096 bfloat16 over 8 warps: 16 per thread, two 128-bit loads of w and b (hoisted), two
    # 128-bit stores of y, and x in two 128-bit cp.async copies per tile, written once in the
    # pipeline's prologue for each of the S - 1 tiles it issues ahead and once in the loop.
    stages = forward_config(16384, 4096, 2).num_stages
    assert big_forward.tile_widths == f"ld X: {2 * stages}x128b; st Y: 2x128b"
    assert big_forward.ld_v4 == 4 + 2 * stages and big_forward.st_v4 == 2


def test_more_rows_than_int32_indexes_get_64_bit_row_indices(compiled):
    """Issue 8.6: past 2**31 rows every row index is formed in 64-bit arithmetic (TTIR: no
    32-bit op on the program id's rows; the kernels' int32 rows of before fail this), while
    launches whose rows fit int32 keep their int32 indices and registers."""
    for variant in HUGE:
        report = _report(compiled, variant)
        assert "int64 rows" in report.config, report
        assert report.offsets_64bit and not report.narrow_row_index, report
        assert (report.stack, report.local) == (0, 0), report
    assert all("int64 rows" not in _report(compiled, v).config for v in COMPILED)


def test_unaligned_rows_fail_the_128_bit_check(compiled):
    report = _report(compiled, UNALIGNED)
    # 8200-byte rows are only 8-byte aligned: 64-bit accesses (ALIGN = 4 elements), not 128
    # (x: 4 cp.async copies per tile, in the prologue for S - 1 tiles and in the loop)
    stages = forward_config(16384, 4100, 2).num_stages
    assert not report.vectorized
    assert report.tile_widths == f"ld X: {4 * stages}x64b; st Y: 4x64b"


def test_aligned_rows_with_n_not_a_multiple_of_16_are_128_bit(compiled):
    assert _report(compiled, ALIGNED_NOT_PROVEN).vectorized


def test_widest_float32_layer_norm_forward_does_not_spill(compiled):
    report = _report(compiled, WIDEST_FP32_LN)
    assert (report.stack, report.local) == (0, 0), report


# Counter-examples for the 64-bit checks, compiled in a child process (this one may run the
# kernels interpreted). row_copy: the load's row offset ``row * stride`` is int32, the store's
# is int64 (PTX check). tile_copy: rows formed as ``(pid * tiles_per_program + i) * ROWS``,
# int32 unless the program id is made int64 first (TTIR check; the kernels' form before they
# took 64-bit row indices).
COUNTER_EXAMPLE = """
import triton
import triton.language as tl


@triton.jit
def row_copy(X, Y, stride, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    x = tl.load(X + row * stride + cols, mask=cols < N)
    tl.store(Y + row.to(tl.int64) * stride + cols, x, mask=cols < N)


@triton.jit
def tile_copy(X, Y, n_rows, tiles_per_program, ROWS: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    for i in range(tiles_per_program):
        rows = (pid * tiles_per_program + i) * ROWS + tl.arange(0, ROWS)
        tl.store(Y + rows, tl.load(X + rows, mask=rows < n_rows), mask=rows < n_rows)
"""
ANALYSE = """
import json, sys
import torch
from bench.proof.ptx import global_accesses
from bench.proof.triton_private import compile_for, specialise
from bench.proof.ttir import narrow_program_id_ops
from counter_example import row_copy, tile_copy


def compiled(fn, args, kwargs):
    src, options, _ = specialise(fn, args, {**kwargs, "num_warps": 4}, 90)
    return compile_for(src, 90, options)


x = torch.empty(8, 4096, dtype=torch.bfloat16, device="meta")
ptx = compiled(row_copy, (x, x, 4096, 4096), {"BLOCK_N": 4096})["ptx"]
accesses = global_accesses(ptx, pointer_params={0, 1}, stride_params={2, 3})
tiles = {wide: compiled(tile_copy, (x, x, 32768, 3), {"ROWS": 4, "WIDE": wide}) for wide in (0, 1)}
narrow_rows = {wide: narrow_program_id_ops(asm["ttir"]) for wide, asm in tiles.items()}
print(json.dumps({
    "ptx": [[a.is_store, a.narrow_muls, a.wide_muls] for a in accesses],
    "ttir": {"int32": narrow_rows[0], "int64": narrow_rows[1]},
}))
"""


def _compiled(script: str, *paths: Path, timeout: int = 300):
    """Run ``script`` in a child process whose kernels are compiled, not interpreted (with
    ``paths`` and the repository importable); what it prints, as JSON."""
    path = os.pathsep.join([*map(str, paths), str(REPO)])
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=timeout,
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def counter_examples(tmp_path_factory) -> dict:
    """What the PTX and TTIR checks find in the counter-examples."""
    tmp_path = tmp_path_factory.mktemp("counter_examples")
    (tmp_path / "counter_example.py").write_text(COUNTER_EXAMPLE)
    return _compiled(ANALYSE, tmp_path)


def test_32_bit_row_offsets_fail_the_64_bit_check(counter_examples):
    accesses = counter_examples["ptx"]
    loads = [(narrow, wide) for is_store, narrow, wide in accesses if not is_store]
    stores = [(narrow, wide) for is_store, narrow, wide in accesses if is_store]
    assert loads and all(narrow for narrow, _ in loads)
    assert stores and all(wide and not narrow for narrow, wide in stores)


def test_32_bit_row_indices_fail_the_64_bit_check(counter_examples):
    """pid * tiles_per_program in int32 wraps past 2**31 rows: the TTIR check names it."""
    narrow = counter_examples["ttir"]
    assert any("arith.muli %pid" in op and ": i32" in op for op in narrow["int32"]), narrow
    assert narrow["int64"] == []


COLUMN_ROWS = """
import dataclasses, json, warnings
from bench.proof import compile_report, triton_private
from bench.proof.ttir import narrow_program_id_ops

warnings.simplefilter("ignore", UserWarning)
variant = compile_report.Variant("bwd", "float32", 131072, is_rms=True, n_rows=2**30 + 5)
launch = [l for l in compile_report.launches_of(variant, 90) if l.kernel.name == "norm_bwd_columns"]
narrow = {}
for wide in (True, False):
    kwargs = {**launch[0].kwargs, "INT64_ROWS": wide}
    src, options, _ = triton_private.specialise(launch[0].kernel.fn, launch[0].args, kwargs, 90)
    ttir = triton_private.compile_for(src, 90, options)["ttir"]
    narrow[wide] = narrow_program_id_ops(ttir, "n_rows")
chosen = launch[0].kwargs["INT64_ROWS"]
print(json.dumps({"int64": narrow[True], "int32": narrow[False], "chosen": chosen}))
"""


def test_column_parallel_backward_forms_row_indices_in_64_bit_past_2_30_rows():
    """The column-parallel backward's rows come from its loop over every row, not the program
    id: past MAX_INT32_ROWS its launch is int64 and the TTIR check, followed from that loop,
    finds no 32-bit op on a row index; forced int32, it names the wrapping add."""
    found = _compiled(COLUMN_ROWS)
    assert found["chosen"] is True and found["int64"] == []
    assert any("arith.addi" in op and "i32" in op for op in found["int32"]), found


# Every other GPU family: the widest 16-bit single block (most registers per thread) and a
# looped backward (on 64-wide waves these issued 64-bit loads before warps followed threads).
NEW_TARGETS = ("sm_100", "sm_120", "gfx942", "gfx950")
ACROSS_TARGETS = [
    compile_report.Variant("fwd", "bfloat16", 16384),
    compile_report.Variant("bwd", "bfloat16", 65536, is_rms=True, has_bias=False),
]


@pytest.fixture(scope="module")
def compiled_across_targets() -> list[compile_report.KernelReport]:
    return compile_report.compile_all(ACROSS_TARGETS, archs=NEW_TARGETS, jobs=2, unique=False)


def test_every_gpu_family_compiles_without_spills_with_128_bit_tiles(compiled_across_targets):
    reports = [r for r in compiled_across_targets if r.kernel != "sum_partials"]
    assert sorted({r.arch for r in reports}) == sorted(NEW_TARGETS)
    launches = [
        launch
        for variant in ACROSS_TARGETS
        for arch in NEW_TARGETS
        for launch in compile_report.launches_of(variant, arch)
        if launch.kernel.name != "sum_partials"
    ]
    assert len(reports) == len(launches)
    # this RMSNorm backward (16384 x 65536) is column-parallel where no band of its rows fits
    # L2: on the 32 MiB of MI300X / MI355X (not even 40% of their 304 / 256 CUs' rows of x and
    # dy, 256 KiB each, fit in 60% of it), not on the NVIDIA GPUs (bands of 96 to 169 rows)
    columns = {r.arch for r in reports if r.kernel == "norm_bwd_columns"}
    assert columns == {"gfx942", "gfx950"}
    for r in compiled_across_targets:
        assert not r.error, r
        assert 0 < r.regs and (r.stack, r.local) == (0, 0), r
        assert r.vectorized and r.offsets_64bit, r
    for r in reports:
        widths = re.findall(r"\d+x(\d+)b", r.tile_widths)
        # Every x / dy / y / dx access is 128-bit (the looped LN forward's pivot aside: RMS here).
        assert widths and set(widths) == {"128"}, r
        assert r.resident >= 1 and r.tile_load_bytes > 0 and r.pipeline_depth >= 1, r
    amd = [r for r in reports if r.arch.startswith("gfx")]
    assert amd and all(r.ld_v4 > 0 and not r.depth_counted for r in amd)


def test_compiled_kernels_feed_the_in_flight_model(compiled):
    """The model's inputs come from the compiled kernel and the launch: x and dy tiles of the
    16384 x 4096 backward (2 x 8 KiB), x of the forward (8 KiB), the resident programs from the
    cubin's registers, the grid from the launch."""
    backward, forward = _report(compiled, COMPILED[1]), _report(compiled, COMPILED[0])
    assert backward.tile_load_bytes == 2 * 4096 * 2 and backward.grid == 132
    assert forward.tile_load_bytes == 4096 * 2 and forward.grid == 1024
    for r in (backward, forward):
        assert r.resident == occupancy.resident_programs(H100, r.regs, r.num_warps, r.shared)
        model = r.in_flight()
        expected = min(r.resident, r.grid / 132) * r.tile_load_bytes * r.pipeline_depth
        assert model.bytes_per_sm == pytest.approx(expected)


# The backward's stage buffers hold everything a tile loads, in each tensor's own dtype: y, dy,
# weight and bias all float32 in the memory-efficient backward under CUDA autocast, dy float32
# with 16-bit x under "llama" casting with float32 weights. Compiled offline (a child process:
# the kernels are interpreted here), their shared memory must fit a block on its target.
SHARED_PER_BLOCK = {"sm_80": 166912, "sm_90": 232448, "sm_100": 232448, "sm_120": 101376}
MIXED_BACKWARDS = r"""
import json, warnings
import torch
from bench.proof import triton_private
from layernorm_gpu.kernels import registry, norm_bwd
from layernorm_gpu.kernels.heuristics import TARGETS

warnings.simplefilter("ignore")
out = []
for target in (t for t in TARGETS if t.backend == "cuda"):
    for n, x_dtype, dy_dtype, x_is_y in (
        (4096, torch.float32, torch.float32, True),
        (8192, torch.bfloat16, torch.float32, False),
        (8192, torch.bfloat16, torch.bfloat16, True),
    ):
        meta = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device="meta")
        x, dy, w = meta(4096, n, dtype=x_dtype), meta(4096, n, dtype=dy_dtype), meta(n)
        stats = meta(4096)
        launches = []
        with registry.intercepted(lambda launch, run: launches.append(launch)):
            norm_bwd(dy, x, w, stats, stats, n_norm_dims=1, is_rms=False,
                     dweight_dtype=torch.float32, dbias_dtype=torch.float32,
                     bias=meta(n) if x_is_y else None, x_is_y=x_is_y, target=target)
        launch = launches[0]
        src, options, _ = triton_private.specialise(
            launch.kernel.fn, launch.args, launch.kwargs, target)
        kernel = triton_private.compile_kernel(src, target, options)
        out.append([target.arch, n, launch.kwargs["NUM_STAGES"], kernel.metadata.shared])
print(json.dumps(out))
"""


def test_backward_stage_buffers_fit_a_block_with_mixed_dtypes():
    results = _compiled(MIXED_BACKWARDS, timeout=600)
    assert len(results) == 12
    for arch, n, stages, shared in results:
        assert shared <= SHARED_PER_BLOCK[arch], (arch, n, stages, shared)
    # pipelined where it fits: float32 memory-efficient 4096 columns on an H100
    assert ["sm_90", 4096] in [r[:2] for r in results if r[2] >= 3]
