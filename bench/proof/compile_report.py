"""Compile report: every kernel specialisation the heuristics pick, compiled offline for sm_80
and sm_90 (no GPU, no driver), with its registers, spills, shared memory, occupancy, 128-bit
accesses and 64-bit row offsets.

How a specialisation is made exactly as a real launch would make it: the real launcher
(``norm_fwd`` / ``norm_bwd``) runs on ``meta`` tensors with its launches intercepted and
recorded instead of run (``layernorm_gpu.kernels.registry``), so the grid, arguments and
constexprs are the ones a CUDA call would pass; Triton's own JIT binder then specialises them
(pointers 16-byte aligned, as PyTorch's CUDA allocator guarantees, get ``tt.divisibility=16``;
so do ints divisible by 16; ints equal to 1 become constexprs) and the specialisation is
compiled for ``GPUTarget("cuda", arch, 32)`` (:mod:`bench.proof.triton_private`).

Per kernel: ``cuobjdump --dump-resource-usage`` (the copy shipped in the Triton wheel) gives
registers per thread, STACK and LOCAL bytes (spills) and shared memory; the PTX gives the
128-bit (``.v4.b32``) global loads/stores, which tensor each access touches and whether its
row offset was computed with 64-bit multiplies (:mod:`bench.proof.ptx`); in launches over more
rows than int32 indexes, the TTIR shows every row index formed in 64-bit arithmetic
(:mod:`bench.proof.ttir`). Tensors are known by the role the registry gives each pointer
argument. Occupancy is warps per SM from registers (65536 per SM, allocated per warp in units
of 256), shared memory and the 64-warp / 32-block limits of sm_80 and sm_90.

The kernels must be compiled kernels (``triton.jit``), not the interpreter's: when this process
runs them interpreted (``TRITON_INTERPRET=1``), the compiles run in a child process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from layernorm_gpu.kernels import registry
from layernorm_gpu.kernels.heuristics import MAX_INT32_ROWS

from ..tables import Table
from . import triton_private
from .ptx import global_accesses, widths_by_pointer
from .ttir import narrow_program_id_ops

ARCHS = (80, 90)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are allocated per warp in multiples of 256
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_RESERVED_PER_BLOCK = 1024
# The roles whose tile accesses must be 128-bit (x, residual, h, dy, dh loaded; y, h, dx
# stored); row-addressed roles are the registry's.
TILE_LOADS = {"x", "residual", "h", "dy", "dh"}
TILE_STORES = {"y", "h", "dx"}
REPO = Path(__file__).resolve().parents[2]
# More rows than int32 can index (a (2**31 + 5, N) tensor, on meta: nothing is allocated): the
# launches that need int64 row indices.
HUGE_ROWS = 2**31 + 5


@dataclass(frozen=True)
class Variant:
    """One op call whose launches are compiled: forward or backward of one norm flavour."""

    op: str  # "fwd" or "bwd" (the backward also launches the partial-sum kernel)
    dtype: str
    n_cols: int
    is_rms: bool = False
    has_weight: bool = True
    has_bias: bool = True
    fused_residual: bool = False
    n_rows: int = 16384

    def label(self) -> str:
        kind = ("add+" if self.fused_residual else "") + ("RMS" if self.is_rms else "LN")
        affine = "".join(n for n, on in (("w", self.has_weight), ("b", self.has_bias)) if on)
        huge = f" M={self.n_rows}" if self.n_rows == HUGE_ROWS else ""
        return f"{kind} {SHORT[self.dtype]} N={self.n_cols} {affine or 'no-affine'}{huge}"


@dataclass
class KernelReport:
    """What one compiled specialisation costs on one architecture."""

    variant: str
    kernel: str
    arch: int
    num_warps: int
    config: str
    regs: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    warps_per_sm: int = 0
    ld_v4: int = 0
    st_v4: int = 0
    tile_widths: str = ""
    vectorized: bool = True
    offsets_64bit: bool = True
    narrow_row_index: str = ""  # 32-bit ops on the program id's row index (TTIR), if any
    error: str = ""
    key: str = ""  # the specialisation's hash: equal keys are the same cubin

    @property
    def spills(self) -> bool:
        """Registers spilled to the stack or local memory."""
        return self.stack > 0 or self.local > 0


def _flavours(full: bool) -> list[dict]:
    """Norm flavours: LayerNorm affine (w+b, w, none), RMSNorm (w, none), each with and without
    the fused residual; the default subset keeps LayerNorm w+b and RMSNorm w."""
    affine = [
        dict(is_rms=False, has_weight=True, has_bias=True),
        dict(is_rms=True, has_weight=True, has_bias=False),
    ]
    if full:
        affine += [
            dict(is_rms=False, has_weight=True, has_bias=False),
            dict(is_rms=False, has_weight=False, has_bias=False),
            dict(is_rms=True, has_weight=False, has_bias=False),
        ]
    return [dict(a, fused_residual=fused) for a in affine for fused in (False, True)]


def variants(full: bool = False) -> list[Variant]:
    """Every (op, dtype, regime, flavour) to compile. Regimes: 4-row tiles (N=1024), one row
    per tile (4096), the widest single blocks (forward: 8192 float32 and 16384 16-bit columns,
    FWD_MAX_ROW_BYTES; backward: 8192; most registers; 16384 float32 is looped) and looped rows
    (65536), all over 16384 rows; and HUGE_ROWS rows (int64 row indices) of 1, 4096 and 65536
    columns. The default keeps bfloat16 and float32, drops the 4-row tiles and compiles the
    HUGE_ROWS regime for unfused LayerNorm and RMSNorm only."""
    from layernorm_gpu.kernels import heuristics as h

    dtypes = list(DTYPES) if full else ["bfloat16", "float32"]
    widest_fwd = [h.FWD_MAX_ROW_BYTES // 4, h.FWD_MAX_ROW_BYTES // 2]
    widths = {"fwd": [4096, *widest_fwd, 65536], "bwd": [4096, h.BWD_MAX_SINGLE_BLOCK, 65536]}
    if full:
        widths = {op: [1024, *cols] for op, cols in widths.items()}
    flavours = _flavours(full)
    huge_flavours = flavours if full else [f for f in flavours if not f["fused_residual"]]
    return [
        Variant(op, dtype, n_cols, **flavour)
        for op in ("fwd", "bwd")
        for dtype in dtypes
        for n_cols in widths[op]
        for flavour in flavours
    ] + [
        Variant(op, dtype, n_cols, n_rows=HUGE_ROWS, **flavour)
        for op in ("fwd", "bwd")
        for dtype in dtypes
        for n_cols in (1, 4096, 65536)
        for flavour in huge_flavours
    ]


def launches_of(variant: Variant, arch: int) -> list[registry.Launch]:
    """The launches the real launcher makes for ``variant`` on ``arch`` (meta tensors),
    recorded instead of run."""
    from layernorm_gpu.kernels import A100, H100, norm_bwd, norm_fwd

    target = {80: A100, 90: H100}[arch]
    dtype = DTYPES[variant.dtype]

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta")

    x = meta(variant.n_rows, variant.n_cols)
    residual = meta(variant.n_rows, variant.n_cols) if variant.fused_residual else None
    weight = meta(variant.n_cols) if variant.has_weight else None
    bias = meta(variant.n_cols) if variant.has_bias and not variant.is_rms else None
    launches: list[registry.Launch] = []
    with registry.intercepted(lambda launch, run: launches.append(launch)):
        if variant.op == "fwd":
            norm_fwd(
                x,
                residual,
                weight,
                bias,
                n_norm_dims=1,
                eps=1e-5,
                is_rms=variant.is_rms,
                h_dtype=dtype if residual is not None else None,
                target=target,
            )
        else:
            stats = torch.empty(variant.n_rows, device="meta")
            norm_bwd(
                x,
                x,
                weight,
                stats,
                stats,
                residual,
                n_norm_dims=1,
                is_rms=variant.is_rms,
                dweight_dtype=dtype if weight is not None else None,
                dbias_dtype=dtype if bias is not None else None,
                target=target,
            )
    return launches


def _resource_usage(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [str(triton_private.cuobjdump()), "--dump-resource-usage", f.name],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    regs, stack, shared, local = map(int, usage.groups())
    return {"regs": regs, "stack": stack, "shared": shared, "local": local}


def warps_per_sm(regs: int, num_warps: int, shared: int, arch: int) -> int:
    """Resident warps per SM of a kernel using ``regs`` registers per thread."""
    regs_per_warp = math.ceil(regs * 32 / REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    blocks = min(
        MAX_BLOCKS_PER_SM,
        MAX_WARPS_PER_SM // num_warps,
        REGS_PER_SM // max(regs_per_warp * num_warps, 1),
        SHARED_PER_SM[arch] // (shared + SHARED_RESERVED_PER_BLOCK),
    )
    return blocks * num_warps


def _analyse_ptx(
    ptx: str,
    signature: dict[str, str],
    launch: registry.Launch,
    dtype_bytes: dict[str, int],
    report: KernelReport,
) -> None:
    """Fill the 128-bit and 64-bit-offset fields of ``report`` from the PTX."""
    kernel, kwargs = launch.kernel, launch.kwargs
    runtime_args = [name for name, ty in signature.items() if ty != "constexpr"]
    index = {name: i for i, name in enumerate(runtime_args)}
    pointers = {i: name for name, i in index.items() if signature[name].startswith("*")}
    row_scales = {i for name, i in index.items() if name in kernel.row_scales}
    accesses = global_accesses(ptx, set(pointers), row_scales)
    report.ld_v4 = sum(a.bits == 128 and not a.is_store for a in accesses)
    report.st_v4 = sum(a.bits == 128 and a.is_store for a in accesses)
    # A row offset with no multiply at all (every row scale specialised to 1, as at N = 1) is
    # the row index itself, whose width the TTIR check establishes.
    for a in accesses:
        role = kernel.pointers.get(pointers.get(a.pointer, ""))
        if role in registry.ROW_ADDRESSED_ROLES and a.narrow_muls:
            report.offsets_64bit = False
    rows, block_n = kwargs.get("ROWS_PER_TILE", 1), kwargs.get("BLOCK_N", 0)
    # The looped LayerNorm forward loads one element per row (its pivot) of x and residual
    # besides the tiles.
    looped_ln = kernel.op == "fwd" and kernel.looped and not kwargs["IS_RMS"]
    pivots = rows if looped_ln else 0
    described = []
    for (pointer, is_store), widths in sorted(
        widths_by_pointer(accesses).items(), key=lambda kv: (str(kv[0][0]), kv[0][1])
    ):
        name = pointers.get(pointer, "?")
        role = kernel.pointers.get(name)
        if role not in (TILE_STORES if is_store else TILE_LOADS):
            continue
        per_thread = rows * block_n * dtype_bytes[name] // (32 * report.num_warps)
        wide = widths[128] * 16
        narrow = sum(n for bits, n in widths.items() if bits != 128)
        allowed = pivots if role in ("x", "residual") and not is_store else 0
        if per_thread >= 16 and (wide < per_thread or narrow > allowed):
            report.vectorized = False
        described.append(
            f"{'st' if is_store else 'ld'} {name}: "
            + " ".join(f"{n}x{bits}b" for bits, n in sorted(widths.items()))
        )
    report.tile_widths = "; ".join(described)


def _rows_covered(launch: registry.Launch) -> int:
    """The rows a launch's programs walk (grid x tiles per program x rows per tile; 0 for the
    partial sum, whose programs walk columns): past MAX_INT32_ROWS its row indices must be
    formed in 64-bit arithmetic."""
    if not launch.kernel.programs_walk_rows:
        return 0
    named = launch.named_args()
    return launch.grid[0] * named["tiles_per_program"] * named["ROWS_PER_TILE"]


def compile_launch(variant: Variant, arch: int, launch: registry.Launch) -> KernelReport:
    """Compile one launch for ``arch`` and measure it."""
    kernel, kwargs = launch.kernel, launch.kwargs
    label = variant.label()
    if kernel.op == "sum_partials":
        config = f"{kwargs['BLOCK_P']}x{kwargs['BLOCK_N']}"
        sums = "+".join(g for g in ("dW", "dB") if kwargs[f"COMPUTE_{g.upper()}"])
        label = f"{sums} -> {SHORT[variant.dtype]}"
    else:
        loop = " loop" if kernel.looped else ""
        wide = " int64 rows" if kwargs["INT64_ROWS"] else ""
        config = f"{kwargs['ROWS_PER_TILE']}x{kwargs['BLOCK_N']}{loop}{wide}"
    report = KernelReport(
        label,
        kernel.name,
        arch,
        kwargs["num_warps"],
        f"{config} {kwargs['num_warps']}w grid {launch.grid[0]}",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Triton 3.9's FP-fusion default notice
            src, options, signature = triton_private.specialise(
                kernel.fn, launch.args, kwargs, arch
            )
            report.key = src.hash()
            asm = triton_private.compile_for(src, arch, options)
        report.__dict__.update(_resource_usage(asm["cubin"]))
        report.warps_per_sm = warps_per_sm(report.regs, report.num_warps, report.shared, arch)
        dtype_bytes = {
            name: t.element_size()
            for name, t in launch.named_args().items()
            if isinstance(t, torch.Tensor)
        }
        _analyse_ptx(asm["ptx"], signature, launch, dtype_bytes, report)
        if _rows_covered(launch) > MAX_INT32_ROWS:  # else its rows fit int32
            report.narrow_row_index = "; ".join(narrow_program_id_ops(asm["ttir"]))
            report.offsets_64bit &= not report.narrow_row_index
    except Exception as e:  # a failed compile is a result to report, not a crash
        report.error = f"{type(e).__name__}: {e}"[:300]
    return report


def _compile_variant(variant: Variant, arch: int) -> list[KernelReport]:
    return [compile_launch(variant, arch, launch) for launch in launches_of(variant, arch)]


def _kernels_interpreted() -> bool:
    return any(triton_private.is_interpreted(kernel.fn) for kernel in registry.KERNELS)


def compile_all(
    variants_: list[Variant], archs: tuple[int, ...] = ARCHS, jobs: int = 0, unique: bool = True
) -> list[KernelReport]:
    """Compile every launch of every variant for every arch. ``unique``: report a
    specialisation once even when several variants launch it (the partial-sum kernel, row
    widths that specialise alike). ``jobs``: worker processes (0: one per CPU core)."""
    if _kernels_interpreted():
        return _compile_in_child(variants_, archs, jobs, unique)
    tasks = [(v, a) for v in variants_ for a in archs]
    # Forked workers touch no CUDA (meta tensors, an explicit compile target), so a CUDA
    # context in the caller is no obstacle.
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count()) as pool:
        nested = list(pool.map(_compile_variant, *zip(*tasks, strict=True)))
    seen, reports = set(), []
    for report in (r for batch in nested for r in batch):
        key = (report.key or report.variant, report.arch, report.num_warps)
        if key not in seen or not unique:
            seen.add(key)
            reports.append(report)
    return reports


def _compile_in_child(
    variants_: list[Variant], archs: tuple[int, ...], jobs: int, unique: bool
) -> list[KernelReport]:
    """Run :func:`compile_all` in a fresh process whose kernels are compiled, not interpreted."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    request = json.dumps(
        {
            "variants": [asdict(v) for v in variants_],
            "archs": list(archs),
            "jobs": jobs,
            "unique": unique,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.proof.compile_report", "--json"],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"compile report child failed:\n{done.stderr[-3000:]}")
    return [KernelReport(**r) for r in json.loads(done.stdout)]


def report_table(reports: list[KernelReport], title: str) -> tuple[Table, bool]:
    """The report as a table; True when every kernel compiled with no spills, 128-bit tile
    accesses and 64-bit row offsets."""
    table = Table(
        title,
        [
            "kernel",
            "variant",
            "sm",
            "tile, warps, grid",
            "regs",
            "spill B",
            "smem",
            "warps/SM",
            "v4 ld/st",
            "tile accesses (static)",
            "64-bit",
            "ok",
        ],
    )
    all_ok = True
    for r in reports:
        ok = not r.error and not r.spills and r.vectorized and r.offsets_64bit
        all_ok &= ok
        if r.error:
            table.add(
                r.kernel, r.variant, r.arch, r.config, "", "", "", "", "", r.error, "", "FAIL"
            )
            continue
        table.add(
            r.kernel,
            r.variant,
            r.arch,
            r.config,
            r.regs,
            f"{r.stack}/{r.local}",
            r.shared,
            f"{r.warps_per_sm} ({r.warps_per_sm / MAX_WARPS_PER_SM:.0%})",
            f"{r.ld_v4}/{r.st_v4}",
            r.tile_widths or "-",
            "yes" if r.offsets_64bit else "NO",
            "PASS" if ok else "FAIL",
        )
    table.notes += [
        "spill B: STACK/LOCAL bytes per thread from cuobjdump (0/0 = no spills); warps/SM: "
        "resident warps from registers, shared memory and the 64-warp limit.",
        "tile accesses: static global loads/stores of x, residual, h, dy, dh (ld) and y, h, dx "
        "(st) by width; the looped LayerNorm forward also loads one element per row (the "
        "pivot).",
        "64-bit: every multiply of a row index by a stride or N that reaches a global address "
        "is a 64-bit multiply in the PTX; and in launches over more rows than int32 indexes "
        f"(M={HUGE_ROWS}), every row index is formed from the program id in 64-bit arithmetic "
        "(TTIR). Other launches keep int32 row indices, which their grid provably fits.",
    ]
    return table, all_ok


# Row widths per dtype: N divisible by 16 (16-byte-aligned rows Triton can prove aligned),
# 16-byte-aligned rows with N not divisible by 16, and rows that are not 16-byte aligned.
ALIGNMENT_WIDTHS = {
    "bfloat16": (4096, 4104, 4100),
    "float16": (4096, 4104, 4100),
    "float32": (4096, 4100, 4098),
}


def alignment_variants(full: bool = False) -> list[Variant]:
    """LayerNorm forward and backward at the :data:`ALIGNMENT_WIDTHS` (default: bfloat16 and
    float32)."""
    dtypes = list(ALIGNMENT_WIDTHS) if full else ["bfloat16", "float32"]
    return [
        Variant(op, dtype, n_cols)
        for dtype in dtypes
        for n_cols in ALIGNMENT_WIDTHS[dtype]
        for op in ("fwd", "bwd")
    ]


def alignment_table(reports: list[KernelReport]) -> tuple[Table, bool]:
    """Whether x/dy/y/dx move in 128-bit accesses at each row alignment; True when every
    16-byte-aligned row width is vectorised."""
    table = Table(
        "128-bit accesses against row alignment (LayerNorm w+b, sm_90)",
        [
            "kernel",
            "variant",
            "row bytes",
            "16-byte aligned",
            "tile accesses (static)",
            "128-bit",
            "ok",
        ],
    )
    all_ok = True
    for r in reports:
        if r.kernel == "sum_partials" or r.arch != 90:
            continue
        dtype = next(d for d, short in SHORT.items() if f" {short} " in f" {r.variant} ")
        n_cols = int(re.search(r"N=(\d+)", r.variant).group(1))
        row_bytes = n_cols * DTYPES[dtype].itemsize
        aligned = row_bytes % 16 == 0
        ok = r.vectorized or not aligned
        all_ok &= ok
        table.add(
            r.kernel,
            r.variant,
            row_bytes,
            "yes" if aligned else "no",
            r.tile_widths,
            "yes" if r.vectorized else "no",
            "PASS" if ok else "MISS",
        )
    table.notes.append(
        "Triton's JIT learns only divisibility by 16 of integer arguments; the "
        "kernels assert the rest (ALIGN, the largest power of two up to 16 "
        "dividing N and every row stride), so a 16-byte-aligned row whose N is "
        "not a multiple of 16 still gets 128-bit accesses, and an 8-byte-aligned "
        "one 64-bit accesses."
    )
    return table, all_ok


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json",
        action="store_true",
        help="read a request as JSON on stdin, write reports as JSON (internal)",
    )
    parser.add_argument("--full", action="store_true", help="every dtype, regime and flavour")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (0: CPU count)")
    args = parser.parse_args()
    if args.json:
        request = json.loads(sys.stdin.read())
        reports = compile_all(
            [Variant(**v) for v in request["variants"]],
            tuple(request["archs"]),
            request["jobs"],
            request["unique"],
        )
        print(json.dumps([asdict(r) for r in reports]))
        return
    from ..tables import print_table

    table, ok = report_table(
        compile_all(variants(args.full), jobs=args.jobs),
        "Compile report (offline, sm_80 and sm_90)",
    )
    print_table(table)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    _main()
