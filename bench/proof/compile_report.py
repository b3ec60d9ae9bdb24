"""Compile report: every kernel specialisation the heuristics pick, compiled offline for every
GPU family Triton targets (sm_80, sm_90, sm_100, sm_120, gfx942, gfx950: no GPU, no driver),
with its registers, spills, shared memory, occupancy, 128-bit accesses, 64-bit row offsets and
the bytes it keeps in flight against Little's law (:mod:`bench.proof.occupancy`).

How a specialisation is made exactly as a real launch would make it: the real launcher
(``norm_fwd`` / ``norm_bwd``) runs on ``meta`` tensors with its launches intercepted and
recorded instead of run (``layernorm_gpu.kernels.registry``), so the grid, arguments and
constexprs are the ones a CUDA call would pass; Triton's own JIT binder then specialises them
(pointers 16-byte aligned, as PyTorch's CUDA allocator guarantees, get ``tt.divisibility=16``;
so do ints divisible by 16; ints equal to 1 become constexprs) and the specialisation is
compiled for the target's ``GPUTarget`` (:mod:`bench.proof.triton_private`), with the config
the heuristics pick for that target (its SM count, warp size and limits).

Per kernel on NVIDIA: ``cuobjdump --dump-resource-usage`` (the copy shipped in the Triton wheel)
gives registers per thread, STACK and LOCAL bytes (spills) and shared memory; the PTX gives the
128-bit (``.v4.b32``) global loads/stores, which tensor each access touches and whether its
row offset was computed with 64-bit multiplies (:mod:`bench.proof.ptx`). On AMD the assembly's
metadata gives VGPRs (arch + accumulation), scratch bytes (spills) and LDS, its
``*_dwordx4`` instructions the 128-bit accesses, and the LLVM IR the tensor and offset math of
each access (:mod:`bench.proof.llir`). In launches over more rows than int32 indexes, the TTIR
shows every row index formed in 64-bit arithmetic (:mod:`bench.proof.ttir`). Tensors are known
by the role the registry gives each pointer argument. Occupancy (resident programs per SM) and
the pipeline depth come from the compiled kernel (:mod:`bench.proof.occupancy`).

The kernels must be compiled kernels (``triton.jit``), not the interpreter's: when this process
runs them interpreted (``TRITON_INTERPRET=1``), the compiles run in a child process.
"""

from __future__ import annotations

import argparse
import json
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
from layernorm_gpu.kernels.heuristics import (
    A100,
    B200,
    H100,
    MAX_INT32_ROWS,
    MI300X,
    TARGETS,
    Target,
)

from ..tables import Table
from . import llir, occupancy, ptx, triton_private
from .ptx import widths_by_pointer
from .ttir import narrow_program_id_ops

# Every target the report compiles for by default (sm_80, sm_90, sm_100, sm_120, gfx942, gfx950).
ARCHS: tuple[Target, ...] = TARGETS
# The targets of the in-flight (Little's law) table.
IN_FLIGHT_TARGETS = (A100, H100, B200, MI300X)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
MAX_WARPS_PER_SM = 64  # sm_80 to sm_100 (the summary's occupancy percentages)
# The roles whose tile accesses must be 128-bit (x, residual, h, dy, dh loaded; y, h, dx
# stored); row-addressed roles are the registry's.
TILE_LOADS = {"x", "residual", "h", "dy", "dh"}
TILE_STORES = {"y", "h", "dx"}
REPO = Path(__file__).resolve().parents[2]
# More rows than int32 can index (a (2**31 + 5, N) tensor, on meta: nothing is allocated): the
# launches that need int64 row indices.
HUGE_ROWS = 2**31 + 5
DEFAULT_ROWS = 16384


def target_of(arch: Target | int | str) -> Target:
    """The :class:`Target` named by ``arch``: a Target, its arch string (``"sm_90"``,
    ``"gfx942"``) or a CUDA compute capability x 10 (``90``)."""
    if isinstance(arch, Target):
        return arch
    name = f"sm_{arch}" if isinstance(arch, int) else arch
    for target in TARGETS:
        if target.arch == name:
            return target
    raise ValueError(f"no target {arch!r}; known: {', '.join(t.arch for t in TARGETS)}")


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
    n_rows: int = DEFAULT_ROWS

    def label(self) -> str:
        kind = ("add+" if self.fused_residual else "") + ("RMS" if self.is_rms else "LN")
        affine = "".join(n for n, on in (("w", self.has_weight), ("b", self.has_bias)) if on)
        rows = f" M={self.n_rows}" if self.n_rows != DEFAULT_ROWS else ""
        return f"{kind} {SHORT[self.dtype]} N={self.n_cols} {affine or 'no-affine'}{rows}"


@dataclass
class KernelReport:
    """What one compiled specialisation costs on one architecture."""

    variant: str
    kernel: str
    arch: str  # "sm_90", "gfx942", ...
    num_warps: int
    config: str
    regs: int = 0  # per thread (VGPRs, arch + accumulation, on AMD)
    stack: int = 0  # bytes per thread (scratch per lane on AMD)
    local: int = 0
    shared: int = 0  # bytes per program (LDS on AMD)
    warps_per_sm: int = 0
    resident: int = 0  # programs an SM (CU) holds: registers, threads, shared memory
    grid: int = 0
    tile_load_bytes: int = 0  # x/residual/dy/dh bytes one loop iteration loads
    pipeline_depth: int = 1  # loop iterations in flight (PTX cp.async), 1 without
    loop_depths: str = ""  # every pipelined loop's depth, in PTX order (the first counts)
    depth_counted: bool = True  # False where the depth cannot be read (AMD)
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

    @property
    def target(self) -> Target:
        return target_of(self.arch)

    def in_flight(self) -> occupancy.InFlight:
        """Bytes in flight per SM against Little's law (:mod:`bench.proof.occupancy`)."""
        return occupancy.in_flight(
            self.target, self.resident, self.grid, self.tile_load_bytes, self.pipeline_depth
        )


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


def launches_of(variant: Variant, arch: Target | int | str) -> list[registry.Launch]:
    """The launches the real launcher makes for ``variant`` on ``arch`` (meta tensors),
    recorded instead of run."""
    from layernorm_gpu.kernels import norm_bwd, norm_fwd

    target = target_of(arch)
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


def _amd_resource_usage(amdgcn: str) -> dict[str, int]:
    """VGPRs (arch + accumulation), scratch bytes per lane and LDS bytes from the AMDGPU
    assembly's metadata; spilled VGPRs/SGPRs (which land in scratch) as ``local``."""

    def field(pattern: str) -> int:
        match = re.search(pattern, amdgcn, re.M)
        if match is None:
            raise RuntimeError(f"no {pattern!r} in the AMDGPU assembly's metadata")
        return int(match.group(1))

    spilled = field(r"^\s*\.vgpr_spill_count:\s+(\d+)") + field(r"^\s*\.sgpr_spill_count:\s+(\d+)")
    return {
        "regs": field(r"^; TotalNumVgprs: (\d+)"),
        "stack": field(r"^\s*\.private_segment_fixed_size:\s+(\d+)"),
        "shared": field(r"^\s*\.group_segment_fixed_size:\s+(\d+)"),
        "local": spilled,
    }


def warps_per_sm(regs: int, num_warps: int, shared: int, arch: Target | int | str) -> int:
    """Resident warps per SM of a kernel using ``regs`` registers per thread."""
    return occupancy.resident_programs(target_of(arch), regs, num_warps, shared) * num_warps


def _analyse_accesses(
    asm: dict,
    signature: dict[str, str],
    launch: registry.Launch,
    dtype_bytes: dict[str, int],
    report: KernelReport,
    ranged: frozenset[str] = frozenset(),
) -> None:
    """Fill the 128-bit, 64-bit-offset and tile-load fields of ``report`` from the PTX (CUDA)
    or the LLVM IR and assembly (AMD). ``ranged``: pointer arguments specialised as spanning
    under 2 GiB (``tt.pointer_range = 32``, Triton's AMD specialisation of smaller tensors:
    their 32-bit buffer offsets cannot wrap, and larger tensors compile another variant)."""
    kernel, kwargs = launch.kernel, launch.kwargs
    runtime_args = [name for name, ty in signature.items() if ty != "constexpr"]
    index = {name: i for i, name in enumerate(runtime_args)}
    pointers = {i: name for name, i in index.items() if signature[name].startswith("*")}
    row_scales = {i for name, i in index.items() if name in kernel.row_scales}
    if "ptx" in asm:
        accesses = ptx.global_accesses(asm["ptx"], set(pointers), row_scales)
        report.ld_v4 = sum(a.bits == 128 and not a.is_store for a in accesses)
        report.st_v4 = sum(a.bits == 128 and a.is_store for a in accesses)
    else:
        accesses = llir.global_accesses(asm["llir"], set(pointers), row_scales)
        isa = llir.isa_vector_accesses(asm["amdgcn"])
        report.ld_v4, report.st_v4 = isa[False], isa[True]
    # A row offset with no multiply at all (every row scale specialised to 1, as at N = 1) is
    # the row index itself, whose width the TTIR check establishes.
    for a in accesses:
        role = kernel.pointers.get(pointers.get(a.pointer, ""))
        name = pointers.get(a.pointer, "")
        if role in registry.ROW_ADDRESSED_ROLES and a.narrow_muls and name not in ranged:
            report.offsets_64bit = False
    rows, block_n = kwargs.get("ROWS_PER_TILE", 1), kwargs.get("BLOCK_N", 0)
    warp_size = report.target.warp_size
    # The looped LayerNorm forward loads one element per row (its pivot) of x and residual
    # besides the tiles.
    looped_ln = kernel.op == "fwd" and kernel.looped and not kwargs["IS_RMS"]
    pivots = rows if looped_ln else 0
    described = []
    loaded: dict[str, int] = {}
    for (pointer, is_store), widths in sorted(
        widths_by_pointer(accesses).items(), key=lambda kv: (str(kv[0][0]), kv[0][1])
    ):
        name = pointers.get(pointer, "?")
        role = kernel.pointers.get(name)
        if role not in (TILE_STORES if is_store else TILE_LOADS):
            continue
        if not is_store:
            loaded[role] = dtype_bytes[name]
        per_thread = rows * block_n * dtype_bytes[name] // (warp_size * report.num_warps)
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
    report.tile_load_bytes = occupancy.tile_load_bytes(loaded, rows * block_n, kernel.looped)


def _rows_covered(launch: registry.Launch) -> int:
    """The rows a launch's programs walk (grid x tiles per program x rows per tile; every row,
    in whole tiles, for the column-parallel backward; 0 for the partial sum, which walks no
    rows): past MAX_INT32_ROWS its row indices must be formed in 64-bit arithmetic."""
    named = launch.named_args()
    if launch.kernel.programs_walk_rows:
        return launch.grid[0] * named["tiles_per_program"] * named["ROWS_PER_TILE"]
    if "n_rows" in named:
        return -(-named["n_rows"] // named["ROWS_PER_TILE"]) * named["ROWS_PER_TILE"]
    return 0


def compile_launch(
    variant: Variant, arch: Target | int | str, launch: registry.Launch
) -> KernelReport:
    """Compile one launch for ``arch`` and measure it."""
    target = target_of(arch)
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
        target.arch,
        kwargs["num_warps"],
        f"{config} {kwargs['num_warps']}w grid {launch.grid[0]}",
        grid=launch.grid[0],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Triton 3.9's FP-fusion default notice
            src, options, signature = triton_private.specialise(
                kernel.fn, launch.args, kwargs, target
            )
            report.key = src.hash()
            compiled = triton_private.compile_kernel(src, target, options)
            asm = compiled.asm
        if target.backend == "hip":
            report.__dict__.update(_amd_resource_usage(asm["amdgcn"]))
            report.depth_counted = False
        else:
            report.__dict__.update(_resource_usage(asm["cubin"]))
            # the launch's shared memory: the cubin's static part or Triton's dynamic allocation
            # (pipeline buffers, reduction scratch), whichever is larger
            report.shared = max(report.shared, compiled.metadata.shared)
            # the first pipelined loop streams from DRAM (the looped kernels' first pass)
            report.pipeline_depth = occupancy.pipeline_depth(asm["ptx"])
            report.loop_depths = ", ".join(map(str, occupancy.pipeline_depths(asm["ptx"])))
        report.resident = occupancy.resident_programs(
            target, report.regs, report.num_warps, report.shared
        )
        report.warps_per_sm = report.resident * report.num_warps
        dtype_bytes = {
            name: t.element_size()
            for name, t in launch.named_args().items()
            if isinstance(t, torch.Tensor)
        }
        ranged = frozenset(
            kernel.arg_names[key[0]]
            for key, attrs in src.attrs.items()
            if ["tt.pointer_range", 32] in attrs
        )
        _analyse_accesses(asm, signature, launch, dtype_bytes, report, ranged)
        if _rows_covered(launch) > MAX_INT32_ROWS:  # else its rows fit int32
            loop = None if kernel.programs_walk_rows else "n_rows"
            report.narrow_row_index = "; ".join(narrow_program_id_ops(asm["ttir"], loop))
            report.offsets_64bit &= not report.narrow_row_index
    except Exception as e:  # a failed compile is a result to report, not a crash
        report.error = f"{type(e).__name__}: {e}"[:300]
    return report


def _compile_variant(variant: Variant, arch: Target) -> list[KernelReport]:
    return [compile_launch(variant, arch, launch) for launch in launches_of(variant, arch)]


def _kernels_interpreted() -> bool:
    return any(triton_private.is_interpreted(kernel.fn) for kernel in registry.KERNELS)


def compile_all(
    variants_: list[Variant],
    archs: tuple[Target | int | str, ...] = ARCHS,
    jobs: int = 0,
    unique: bool = True,
) -> list[KernelReport]:
    """Compile every launch of every variant for every target (``archs``: Targets, arch
    names or CUDA compute capabilities). ``unique``: report a specialisation once even when
    several variants launch it (the partial-sum kernel, row widths that specialise alike).
    ``jobs``: worker processes (0: one per CPU core)."""
    targets = tuple(target_of(a) for a in archs)
    if _kernels_interpreted():
        return _compile_in_child(variants_, targets, jobs, unique)
    tasks = [(v, t) for v in variants_ for t in targets]
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
    variants_: list[Variant], targets: tuple[Target, ...], jobs: int, unique: bool
) -> list[KernelReport]:
    """Run :func:`compile_all` in a fresh process whose kernels are compiled, not interpreted."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    request = json.dumps(
        {
            "variants": [asdict(v) for v in variants_],
            "archs": [asdict(t) for t in targets],
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
            "arch",
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
            f"{r.warps_per_sm} ({r.warps_per_sm / r.target.max_warps_per_sm:.0%})",
            f"{r.ld_v4}/{r.st_v4}",
            r.tile_widths or "-",
            "yes" if r.offsets_64bit else "NO",
            "PASS" if ok else "FAIL",
        )
    table.notes += [
        "spill B: STACK/LOCAL bytes per thread from cuobjdump (0/0 = no spills; on AMD: "
        "scratch bytes per lane / spilled VGPRs + SGPRs); warps/SM: resident warps (waves per "
        "CU on AMD) from registers, shared memory (LDS) and the thread limit.",
        "tile accesses: static global loads/stores of x, residual, h, dy, dh (ld) and y, h, dx "
        "(st) by width; the looped LayerNorm forward also loads one element per row (the "
        "pivot).",
        "64-bit: every multiply of a row index by a stride or N that reaches a global address "
        "is a 64-bit multiply in the PTX; and in launches over more rows than int32 indexes "
        f"(M={HUGE_ROWS}), every row index is formed from the program id (or the column-parallel "
        "backward's loop over the rows) in 64-bit arithmetic (TTIR). Other launches keep int32 "
        "row indices, which their grid provably fits.",
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
        if r.kernel == "sum_partials" or r.arch != "sm_90":
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


# Issue 10's table, the in-flight section's first output: bfloat16 launches at the shapes where
# latency hiding decides the speed (LN and RMS where the issue groups them).
IN_FLIGHT_CASES: tuple[tuple[str, tuple[Variant, ...]], ...] = (
    ("16384 x 4096 LayerNorm backward", (Variant("bwd", "bfloat16", 4096),)),
    ("16384 x 4096 LayerNorm forward", (Variant("fwd", "bfloat16", 4096),)),
    *(
        (
            f"{m} x {n} {'forward' if op == 'fwd' else 'backward'} (LN / RMS)",
            (
                Variant(op, "bfloat16", n, n_rows=m),
                Variant(op, "bfloat16", n, is_rms=True, has_bias=False, n_rows=m),
            ),
        )
        for op, m, n in (
            ("bwd", 4096, 16384),
            ("fwd", 1024, 65536),
            ("bwd", 1024, 65536),
            # past issue 10's table: the widest backward whose band fits L2 on A100 / H100,
            # on fewer programs than SMs (47 / 57) with deeper pipelines
            ("bwd", 2048, 131072),
        )
    ),
)
# Streaming launches the in-flight targets hold for: rows at least this wide, and at least
# this many rows per SM (issue 10, goal 1).
IN_FLIGHT_MIN_COLS = 1024
IN_FLIGHT_MIN_ROWS_PER_SM = 8


def in_flight_variants() -> list[Variant]:
    """Every launch of :data:`IN_FLIGHT_CASES`."""
    return [v for _, case in IN_FLIGHT_CASES for v in case]


def _shape(label: str) -> tuple[int, int]:
    """(n_rows, n_cols) of a variant label."""
    rows = re.search(r"M=(\d+)", label)
    return (int(rows.group(1)) if rows else DEFAULT_ROWS), int(re.search(r"N=(\d+)", label)[1])


def _ratio(r: KernelReport) -> str:
    """In flight / needed, marked where the pipeline depth could not be counted (AMD)."""
    return f"{r.in_flight().ratio:.2f}" + ("" if r.depth_counted else "*")


def in_flight_table(
    reports: list[KernelReport], targets: tuple[Target, ...] = IN_FLIGHT_TARGETS
) -> Table:
    """Issue 10's table: bytes in flight per SM over Little's law for each case and target
    (LN / RMS when they differ), from the compiled streaming kernels of ``reports``."""
    by_key: dict[tuple[str, str, str], list[KernelReport]] = {}
    for r in reports:
        if r.kernel != "sum_partials":
            by_key.setdefault((r.kernel.split("_")[1], r.variant, r.arch), []).append(r)
    table = Table(
        "Bytes in flight per SM / Little's law (bf16; compiled kernels, offline)",
        ["shape, op", *(f"{t.name} ({t.arch})" for t in targets)],
    )
    for what, case in IN_FLIGHT_CASES:
        cells = []
        for t in targets:
            found = [by_key.get((v.op, v.label(), t.arch), []) for v in case]
            if any(not rs or any(r.error for r in rs) for rs in found):
                cells.append("not compiled")
                continue
            weakest = [min(rs, key=lambda r: r.in_flight().ratio) for rs in found]
            ratios = list(dict.fromkeys(_ratio(r) for r in weakest))
            cells.append(" / ".join(ratios))
        table.add(what, *cells)
    table.notes += [
        "in flight per SM = programs per SM (resident from the compiled kernel's registers, "
        "warps and shared memory, capped by grid / SMs) x tile bytes one loop iteration loads "
        "(x, residual, dy, dh) x pipeline depth (cp.async wait groups in the PTX, else 1), both "
        "of the loop that streams from DRAM (looped kernels: the first pass, the first "
        "pipelined loop in the PTX; the backward's column sums and second pass re-read the "
        "band from L2); "
        "needed = DRAM bandwidth per SM x loaded latency ("
        + ", ".join(f"{t.name} {t.bytes_in_flight_needed / 1024:.1f} KiB" for t in targets)
        + "). Targets: >= 1.5 on A100 and H100, >= 1.0 on B200 (bench/proof/occupancy.py).",
        "* AMD: depth 1 assumed (the ISA has no cp.async to count).",
        "A backward of two streaming launches (c1/c2 by rows, then column-parallel, where its "
        "rows do not fit L2) shows the lower of the two.",
    ]
    return table


def in_flight_checks(reports: list[KernelReport]) -> tuple[Table, int, int]:
    """Per streaming launch and target, the in-flight model and its check; (table, checked,
    missed). Checked: rows of >= IN_FLIGHT_MIN_COLS columns and >= IN_FLIGHT_MIN_ROWS_PER_SM
    rows per SM on the targets of :data:`occupancy.RATIO_TARGETS`; others are reported."""
    table = Table(
        "Latency hiding per launch: bytes in flight per SM against Little's law",
        [
            "kernel",
            "variant",
            "arch",
            "programs/SM (resident)",
            "tile B x depth (loops)",
            "in flight KiB",
            "needed KiB",
            "ratio",
            "target",
            "verdict",
        ],
    )
    checked = missed = 0
    for r in reports:
        if r.kernel == "sum_partials" or r.error:
            continue
        model = r.in_flight()
        n_rows, n_cols = _shape(r.variant)
        goal = occupancy.RATIO_TARGETS.get(r.arch)
        applies = n_cols >= IN_FLIGHT_MIN_COLS and n_rows >= 8 * r.target.sm_count
        verdict = "reported"
        if goal is not None and applies:
            checked += 1
            met = model.ratio >= goal
            missed += not met
            verdict = "met" if met else "MISS"
        table.add(
            r.kernel,
            r.variant,
            r.arch,
            f"{model.programs_per_sm:.2f} ({model.resident})",
            f"{r.tile_load_bytes} x {r.pipeline_depth}{'' if r.depth_counted else '*'}"
            + (f" ({r.loop_depths})" if "," in r.loop_depths else ""),
            f"{model.bytes_per_sm / 1024:.1f}",
            f"{model.needed / 1024:.1f}",
            f"{model.ratio:.2f}",
            f">= {goal}" if goal is not None and applies else "-",
            verdict,
        )
    table.notes += [
        "tile B x depth: bytes one iteration of the loop that streams from DRAM loads, and the "
        "iterations in flight (the first pipelined loop in the PTX: the looped kernels' first "
        "pass); (loops): every pipelined loop's depth in PTX order where there are several (the "
        "looped backward's first pass, its band's column sums and its second pass).",
        f"{missed} of {checked} checked launches miss their target. A miss is reported, not a "
        "failure of this report's exit status (which covers compiles, spills, 128-bit accesses "
        "and 64-bit offsets).",
    ]
    return table, checked, missed


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json",
        action="store_true",
        help="read a request as JSON on stdin, write reports as JSON (internal)",
    )
    parser.add_argument("--full", action="store_true", help="every dtype, regime and flavour")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (0: CPU count)")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=[t.arch for t in ARCHS],
        help="archs to compile for (default: all of sm_80 sm_90 sm_100 sm_120 gfx942 gfx950)",
    )
    args = parser.parse_args()
    if args.json:
        request = json.loads(sys.stdin.read())
        reports = compile_all(
            [Variant(**v) for v in request["variants"]],
            tuple(Target(**t) for t in request["archs"]),
            request["jobs"],
            request["unique"],
        )
        print(json.dumps([asdict(r) for r in reports]))
        return
    from ..tables import print_table

    targets = tuple(target_of(a) for a in args.targets)
    flight_targets = tuple(t for t in IN_FLIGHT_TARGETS if t in targets)
    if flight_targets:
        flying = compile_all(in_flight_variants(), flight_targets, args.jobs, unique=False)
        print_table(in_flight_table(flying, flight_targets))
    reports = compile_all(variants(args.full), targets, args.jobs)
    table, ok = report_table(
        reports, f"Compile report (offline, {', '.join(t.arch for t in targets)})"
    )
    print_table(table)
    print_table(in_flight_checks(reports)[0])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    _main()
