"""What the proof tools found, in plain words: one table per question, each figure next to its
target and a verdict.

The numbers come from the proof tools' public functions (:mod:`bench.traffic`,
:mod:`bench.compile_report`); their own detailed tables (per tensor, per kernel) print with
``python -m bench --details``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .proof import compile_report, traffic
from .proof.trace import Traffic
from .tables import Table, fmt_bytes
from .verdicts import Outcome, judge

READ_ROLES = ("x", "residual", "dy", "dh")
WRITTEN_ROLES = ("y", "h", "dx")


def problem(case: traffic.Case) -> str:
    """``case`` as a PyTorch user would say it: "LayerNorm, bf16, 48 x 1000, weight+bias"."""
    kind = "RMSNorm" if case.is_rms else "LayerNorm"
    if case.fused_residual:
        kind = f"residual add + {kind}"
    dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[
        str(case.dtype).removeprefix("torch.")
    ]
    params = [name for name, on in (("weight", case.has_weight), ("bias", case.has_bias)) if on]
    if case.is_rms:
        params = [p for p in params if p != "bias"]
    return f"{kind}, {dtype}, {case.n_rows} × {case.n_cols}, {'+'.join(params) or 'no weight'}"


@dataclass(frozen=True)
class TracedCase:
    """One small problem traced forward and backward, with the structural checks on it."""

    case: traffic.Case
    fwd: Traffic
    bwd: Traffic
    checks: list[traffic.Check]


def trace_case(case: traffic.Case) -> TracedCase:
    fwd, bwd = traffic.op_traffic(case)
    return TracedCase(case, fwd, bwd, traffic.structural_checks(case, fwd, bwd))


def _once(checks: list[traffic.Check], roles: tuple[str, ...], verb: str) -> list[str]:
    return [r for r in roles if any(c.name.endswith(f": {r} {verb} once") for c in checks)]


def read_write_table(traced: list[TracedCase]) -> tuple[Table, Outcome]:
    """Per small problem: launches, which tensors were read / written exactly once, verdict."""
    table = Table(
        "Memory traffic of the real kernels, counted in Triton's interpreter",
        [
            "problem",
            "launches fwd + bwd (target 1 + ≤ 2)",
            "each element read / written once",
            "verdict",
        ],
    )
    passed = total = 0
    for t in traced:
        failed = [c for c in t.checks if not c.passed]
        passed += len(t.checks) - len(failed)
        total += len(t.checks)
        read = _once(t.checks, READ_ROLES, "read")
        written = _once(t.checks, WRITTEN_ROLES, "written")
        once = (
            f"read: {', '.join(read)}; written: {', '.join(written)}"
            if read or written
            else "not checked: wider than one block, read more than once (the later reads from "
            "L2: see the widths table)"
        )
        table.add(
            problem(t.case),
            f"{len(t.fwd.launches)} + {len(t.bwd.launches)}",
            once,
            judge(not failed) + ("" if not failed else ": " + "; ".join(c.name for c in failed)),
        )
        table.notes += [f"{problem(t.case)}: {c.name}: {c.detail}" for c in failed]
    table.notes += [
        "Every load and store of every program is counted, forward and backward (through "
        "autograd). 'Read once': each element of the tensor was loaded exactly once, so the "
        "kernels make a single pass over memory; x, dy (and the residual stream when fused) are "
        "the large inputs, y, dx (and h) the large outputs.",
        "Also checked: the weight-gradient partial sums take at most one float32 row per SM "
        "(rows up to 8192 columns), the wider rows' backward runs in one launch (where its band "
        "fits L2), with at most one row of running sums per gradient, and every access falls "
        "inside a known tensor. --details prints the per-tensor counts.",
    ]
    outcome = Outcome(
        f"Memory traffic, {len(traced)} small problems",
        "inputs read once, outputs written once, 1 + ≤ 2 launches",
        f"{passed} of {total} checks hold",
        judge(passed == total),
    )
    return table, outcome


def big_problem_table(
    extrapolations: dict[str, traffic.Extrapolation], case: traffic.Case = traffic.BIG_CASE
) -> tuple[Table, Outcome]:
    """The big problem's bytes against the minimum any implementation must move."""
    table = Table(
        f"Bytes to and from GPU memory: {problem(case)} on an H100",
        ["pass", "minimum", "the kernels move", "over the minimum", "target", "verdict"],
    )
    ok = True
    measured, predicted = [], []
    for mode, ex in extrapolations.items():
        model = case.byte_model(mode)
        moved = ex.total(distinct=True)
        over = moved / model.minimum - 1
        limit = traffic.BIG_TARGETS[mode] - 1
        met = ex.validated and over <= limit
        ok &= met
        name = {"fwd": "forward", "bwd": "backward"}[mode]
        table.add(
            name,
            fmt_bytes(model.minimum),
            fmt_bytes(moved),
            f"+{over:.2%}",
            f"≤ +{limit:.0%}",
            judge(met) + ("" if ex.validated else ": the scaled-up count did not check out"),
        )
        measured.append(f"{name} +{over:.2%}")
        predicted.append(f"{name} {model.seconds() * 1e6:.0f} µs")
    table.notes += [
        "minimum: what any implementation must move: read x and write y (forward); read x and "
        "dy, write dx (backward). The kernels' bytes are those that reach GPU memory (HBM), "
        "each address counted once: weight and bias, re-read by every program, stay in the L2 "
        "cache.",
        "Measured in the interpreter on runs of 1 to 3 programs with the real launch "
        "configuration, scaled up to the full grid (a fifth run checks the scaling exactly).",
        f"At an H100's 3.0 TB/s this predicts {', '.join(predicted)}: a prediction until "
        "python -m bench.gpu_check, on a CUDA machine, measures the real time and writes it into "
        "bench/RESULTS.md.",
    ]
    outcome = Outcome(
        f"Bytes moved, {problem(case)}",
        "≤ +1% (forward), ≤ +4% (backward) over the minimum",
        ", ".join(measured),
        judge(ok),
    )
    return table, outcome


def _fast(r: compile_report.KernelReport) -> bool:
    """Compiled, without spills, with 128-bit tile accesses and 64-bit row offsets."""
    return not r.error and not r.spills and r.vectorized and r.offsets_64bit


def _counted(reports: list[compile_report.KernelReport], holds) -> str:
    return f"{sum(1 for r in reports if holds(r))} of {len(reports)}"


def compile_table(
    reports: list[compile_report.KernelReport],
    aligned: list[compile_report.KernelReport],
    alignment_variants: list[compile_report.Variant],
) -> tuple[Table, list[Outcome]]:
    """The compile report's targets over every compiled kernel, and the row-alignment check."""
    built = [r for r in reports if not r.error]
    present = {r.arch for r in reports}
    archs = [t.arch for t in compile_report.ARCHS if t.arch in present]
    gpus = ", ".join(f"{compile_report.target_of(a).name} ({a})" for a in archs)
    table = Table(
        f"{len(reports)} kernel specialisations compiled for {gpus}, without a GPU",
        ["check", "target", "measured", "verdict"],
    )
    checks = [
        ("compiles", "every kernel", lambda r: not r.error),
        ("register spills to slow local memory", "none", lambda r: not r.error and not r.spills),
        (
            "x, dy, y, dx moved in 128-bit (vectorised) loads and stores",
            "every kernel",
            lambda r: not r.error and r.vectorized,
        ),
        (
            "64-bit row offsets (tensors past 2^31 elements)",
            "every kernel",
            lambda r: not r.error and r.offsets_64bit,
        ),
    ]
    kernels_ok = True
    for what, target, holds in checks:
        met = all(holds(r) for r in reports)
        kernels_ok &= met
        measured = _counted(reports, holds)
        if what.startswith("register"):
            measured = f"{_counted(reports, lambda r: r.spills or r.error)} spill"
        table.add(what, target, measured, judge(met))

    # The alignment check: LayerNorm at row widths 16-byte aligned or not (sm_90 only).
    by_label = {v.label(): v for v in alignment_variants}
    rows = [r for r in aligned if r.kernel != "sum_partials" and r.arch == "sm_90"]

    def row_aligned(r: compile_report.KernelReport) -> bool:
        v = by_label[r.variant]
        return v.n_cols * compile_report.DTYPES[v.dtype].itemsize % 16 == 0

    aligned_rows = [r for r in rows if row_aligned(r)]
    unaligned_rows = [r for r in rows if not row_aligned(r)]
    aligned_ok = all(r.vectorized and not r.error for r in aligned_rows)
    table.add(
        "128-bit accesses at every row width that is a multiple of 16 bytes (H100)",
        "every such width",
        f"{_counted(aligned_rows, lambda r: r.vectorized)} "
        f"(the {len(unaligned_rows)} others: narrower, as they must)",
        judge(aligned_ok),
    )
    if built:
        regs = [r.regs for r in built]
        warps = [r.warps_per_sm for r in built]
        shares = [r.warps_per_sm / r.target.max_warps_per_sm for r in built]
        table.notes.append(
            f"Registers per thread {min(regs)}-{max(regs)} (the limit is 255 on NVIDIA, 512 "
            f"VGPRs on AMD); {min(warps)}-{max(warps)} warps (waves) resident per SM (CU) "
            f"({min(shares):.0%}-{max(shares):.0%} occupancy)."
        )
    table.notes.append(
        "Each specialisation is the one a real launch picks (the launchers run on meta tensors), "
        "compiled by Triton for the GPU's architecture; no GPU or driver is needed. Spills come "
        "from cuobjdump, access widths and offsets from the PTX. --details lists every kernel."
    )
    table.notes += [
        f"failed to compile: {r.kernel} {r.variant}: {r.error}" for r in reports if r.error
    ]
    outcomes = [
        Outcome(
            f"Compiled for {gpus}",
            "no spills, 128-bit x/dy/y/dx, 64-bit row offsets",
            f"{_counted(reports, _fast)} kernels",
            judge(kernels_ok),
        ),
        Outcome(
            "Row alignment",
            "128-bit accesses for every 16-byte-aligned row",
            f"{_counted(aligned_rows, lambda r: r.vectorized)} aligned widths",
            judge(aligned_ok),
        ),
    ]
    return table, outcomes


def distinct(reports: list[compile_report.KernelReport]) -> list[compile_report.KernelReport]:
    """Each compiled specialisation once per target (the first report of it)."""
    seen: dict[tuple[str, str, str], compile_report.KernelReport] = {}
    for r in reports:
        seen.setdefault((r.key or r.variant, r.kernel, r.arch), r)
    return list(seen.values())


def in_flight_table(
    cases: list[compile_report.KernelReport], reports: list[compile_report.KernelReport]
) -> tuple[Table, Outcome]:
    """Issue 10's latency table (bytes in flight per SM over Little's law) from the compiled
    ``cases``, and the verdict of the per-launch checks over those and ``reports`` (>= 1.5x on
    A100 and H100, >= 1.0x on B200, for rows of >= 1024 columns and >= 8 rows per SM)."""
    table = compile_report.in_flight_table(cases)
    _, checked, missed = compile_report.in_flight_checks(distinct(cases + reports))
    table.notes.append(
        f"Checked per launch: {checked - missed} of {checked} streaming launches keep enough "
        "bytes in flight (--details lists each)."
    )
    outcome = Outcome(
        "Latency hiding (Little's law, compiled kernels)",
        ">= 1.5x on A100 and H100, >= 1.0x on B200",
        f"{checked - missed} of {checked} launches",
        judge(missed == 0),
    )
    return table, outcome


def widths_table() -> tuple[Table, Outcome]:
    """One read at every width (issue 10, goal 2): bf16 LayerNorm at M x N = 2**26 on A100,
    H100 and B200, from the byte model and its L2-window rule (the traffic report's
    :func:`traffic.widths_table`), with, per GPU and op, the fullest L2 window traced: a
    scaled-down launch's programs replayed in lockstep through one L2."""
    table, ok = traffic.widths_table(traffic.WINDOW_TARGETS, trace="fullest")
    judged = [row for row in table.rows if row[-1] != "(reported)"]
    once = [row for row in judged if row[5].split()[0] == "1"]
    under = [row for row in judged if row[-1] == "PASS"]
    outcome = Outcome(
        "One read at every width (bf16 LayerNorm, N = 1024 to 131072 / 262144 on B200)",
        "x, dy read from DRAM once; bytes <= 1.01x (fwd), 1.04x (bwd) the minimum",
        f"read once in {len(once)} of {len(judged)}; both in {len(under)} of {len(judged)}",
        judge(ok),
    )
    return table, outcome
