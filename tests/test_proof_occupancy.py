"""The in-flight model (bench/proof/occupancy.py) on hand-computed numbers, the AMD
LLVM IR reader (bench/proof/llir.py) on a hand-written kernel, and the compile report's
in-flight tables on reports made by hand (no compile)."""

from __future__ import annotations

import pytest

from bench.proof import compile_report, llir, occupancy
from layernorm_gpu.kernels.heuristics import B200, H100, MI300X


def test_little_s_law_ratios_reproduce_issue_10():
    """Issue 10's figures from its inputs: bytes needed per SM (3.35e12 / 132 x 700 ns on
    H100, 8e12 / 148 x 700 ns on B200) and what the kernels keep in flight."""
    assert H100.bytes_in_flight_needed == pytest.approx(17765.15, abs=0.01)
    assert B200.bytes_in_flight_needed == pytest.approx(37837.84, abs=0.01)
    # 16384 x 4096 LN backward: one program per SM (grid 132), x and dy tiles 2 x 8 KiB.
    bwd = occupancy.in_flight(H100, resident=2, grid=132, tile_load_bytes=16384)
    assert bwd.programs_per_sm == 1.0 and bwd.bytes_per_sm == 16384
    assert round(bwd.ratio, 2) == 0.92
    # LN forward: 3 resident of 1024 programs (7.8 per SM), 8 KiB of x each.
    fwd = occupancy.in_flight(H100, resident=3, grid=1024, tile_load_bytes=8192)
    assert fwd.bytes_per_sm == 3 * 8192 and round(fwd.ratio, 2) == 1.38
    # 1024 x 65536 forward on B200: 512 programs on 148 SMs (3.46 each), 8 KiB each.
    wide = occupancy.in_flight(B200, resident=4, grid=512, tile_load_bytes=8192)
    assert wide.programs_per_sm == pytest.approx(512 / 148)
    assert round(wide.ratio, 2) == 0.75
    # A pipeline of depth 2 doubles each program's bytes in flight.
    deep = occupancy.in_flight(H100, resident=2, grid=132, tile_load_bytes=16384, depth=2)
    assert deep.ratio == pytest.approx(2 * bwd.ratio)


def test_pipeline_depth_is_counted_from_the_wait_groups():
    """Loops of two commit groups per iteration (x, then dy): a prologue of (S - 1) x 2
    commits, then a loop block that waits for (S - 2) x 2 and commits the next 2."""
    copy = "cp.async.cg.shared.global [ %r4 + 0 ], [ %rd5 + 0 ], 0x10, %r9;\n"
    stage = f"{copy}cp.async.commit_group;\n{copy}cp.async.commit_group;\n"

    def loop(stages: int, label: str) -> str:
        prologue = stage * (stages - 1)
        body = f"$L__BB0_{label}:\ncp.async.wait_group \t{2 * (stages - 2)};\n{stage}"
        return prologue + body + f"$L__BB0_{label}9:\ncp.async.wait_group 0;\n"

    assert occupancy.pipeline_depth(loop(3, "1")) == 2
    assert occupancy.pipeline_depth(loop(4, "1")) == 3
    # several loops in one kernel (the looped backward's first pass, its band's column sums and
    # its second pass): each is counted, the first loop's body commits do not add to the next
    # one's prologue, and the kernel's depth is its first loop's (the one streaming from DRAM),
    # deeper or shallower than the others
    assert occupancy.pipeline_depths(loop(4, "1") + loop(3, "2") + loop(5, "3")) == [3, 2, 4]
    assert occupancy.pipeline_depth(loop(4, "1") + loop(3, "2")) == 3
    assert occupancy.pipeline_depth(loop(3, "1") + loop(4, "2")) == 2
    plain = "ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];"
    assert occupancy.pipeline_depths(plain) == [] and occupancy.pipeline_depth(plain) == 1


def test_tile_load_bytes():
    tile = 4096
    assert occupancy.tile_load_bytes({"x": 2, "dy": 2}, tile, looped=False) == 16384
    assert occupancy.tile_load_bytes({"x": 2, "dy": 2, "dh": 2}, tile, looped=False) == 24576
    # Looped: the first pass, which streams from DRAM (the second, and the backward's column
    # sums over its band, re-read from L2). Fused forward: x + residual (then h from L2).
    fused_fwd = {"x": 2, "residual": 2, "h": 2}
    assert occupancy.tile_load_bytes(fused_fwd, tile, looped=True) == 16384
    # Backward with dh: x + dy (dh comes with the second pass: left out, a lower bound).
    assert occupancy.tile_load_bytes({"x": 4, "dy": 4, "dh": 4}, tile, looped=True) == 32768


# A kernel as Triton's AMD backend writes it: X (%0) read through a buffer resource with a
# 32-bit row offset ``row * stride`` (%2); Y (%1) written through a global pointer whose row
# offset is a 64-bit multiply; W (%3) read narrowly.
AMD_KERNEL = """
define amdgpu_kernel void @k(ptr addrspace(1) inreg nofree readonly captures(none) %0, \
ptr addrspace(1) inreg %1, i32 inreg %2, ptr addrspace(1) inreg %3) local_unnamed_addr #0 {
  %5 = tail call i32 @llvm.amdgcn.workgroup.id.x()
  %6 = mul i32 %5, %2
  %7 = tail call ptr addrspace(8) @llvm.amdgcn.make.buffer.rsrc.p8.p1(ptr addrspace(1) %0, \
i16 0, i64 2147483646, i32 159744)
  %8 = tail call <4 x i32> @llvm.amdgcn.raw.ptr.buffer.load.v4i32(ptr addrspace(8) %7, \
i32 %6, i32 0, i32 0)
  %9 = sext i32 %5 to i64
  %10 = sext i32 %2 to i64
  %11 = mul nsw i64 %9, %10
  %12 = getelementptr bfloat, ptr addrspace(1) %1, i64 %11
  store <4 x i32> %8, ptr addrspace(1) %12, align 16
  %13 = load bfloat, ptr addrspace(1) %3, align 2
  ret void
}
"""


def test_llir_accesses_name_their_tensor_width_and_offset_math():
    accesses = llir.global_accesses(AMD_KERNEL, pointer_params={0, 1, 3}, stride_params={2})
    summary = [(a.is_store, a.bits, a.pointer, a.narrow_muls, a.wide_muls) for a in accesses]
    assert summary == [(False, 128, 0, 1, 0), (True, 128, 1, 0, 1), (False, 16, 3, 0, 0)]
    isa = "\tbuffer_load_dwordx4 v[0:3], v14, s[0:3], 0 offen\n\tglobal_store_dwordx4 v[0:1]\n"
    assert llir.isa_vector_accesses(isa) == {False: 1, True: 1}


def _report(
    op: str, variant: compile_report.Variant, target, **model
) -> compile_report.KernelReport:
    kernel = f"norm_{op}_{'looped' if variant.n_cols > 8192 else 'single_block'}"
    return compile_report.KernelReport(
        variant.label(), kernel, target.arch, 8, "", depth_counted=target.backend == "cuda", **model
    )


def test_in_flight_table_opens_with_issue_10_and_checks_each_launch():
    reports = []
    for _, case in compile_report.IN_FLIGHT_CASES:
        for variant in case:
            for target in (H100, B200):
                grid = target.sm_count
                reports.append(
                    _report(
                        variant.op, variant, target, resident=2, grid=grid, tile_load_bytes=16384
                    )
                )
    table = compile_report.in_flight_table(reports, (H100, B200))
    assert [row[0] for row in table.rows][:2] == [
        "16384 x 4096 LayerNorm backward",
        "16384 x 4096 LayerNorm forward",
    ]
    # One program per SM with 16 KiB in flight: 0.92 of H100's need, 0.43 of B200's.
    assert table.rows[0][1:] == ["0.92", "0.43"]
    checks, checked, missed = compile_report.in_flight_checks(reports)
    # Checked: launches with >= 8 rows per SM (16384, 4096 and 2048 rows: 6 variants x 2
    # targets); 1024 rows are fewer than 8 x 132 (reported).
    assert checked == missed == 12
    assert [row[-1] for row in checks.rows].count("reported") == len(reports) - 12
    assert {row[-1] for row in checks.rows} == {"MISS", "reported"}
    # AMD is reported, never checked; the depth it cannot count is marked.
    mi300x = _report("fwd", compile_report.Variant("fwd", "bfloat16", 4096), MI300X, resident=7)
    mi300x.grid, mi300x.tile_load_bytes = 2341, 8192
    checks, checked, _ = compile_report.in_flight_checks([mi300x])
    assert checked == 0 and checks.rows[0][-1] == "reported" and "*" in checks.rows[0][4]
