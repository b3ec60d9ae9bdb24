"""``python -m bench``: the GPU benchmark on CUDA, the no-GPU reports elsewhere.

Without CUDA (or with ``--reports``) it says what it will run, shows a progress line for each
step and prints every figure beside its target with a verdict:

1. traffic: the real kernels run in Triton's interpreter with every load and store counted:
   each input read once and each output written once at small shapes, and the bytes of the
   16384 x 4096 bf16 problem against the minimum any implementation must move;
2. compile: every kernel specialisation compiled offline for sm_80 and sm_90 (no GPU needed):
   no register spills, 128-bit accesses, 64-bit row offsets (``--full``: every dtype, regime and
   flavour; the default is a representative subset);
3. cpu: the CPU fallback's speed against torch, and the kernels' accuracy against float64.

A summary closes the run: each target's verdict, what needs a GPU, what was cached where.
``--details`` adds the proof tools' own tables (per tensor, per kernel) with a glossary;
``--markdown`` prints the tables as Markdown.

Exit status: 0 when every target is met (a timing that the machine's noise left undecided is
"not judged" and does not fail), 1 when a target is missed; with ``--strict`` also 1 when a
target is not judged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

from .tables import Table

REPORTS = ("traffic", "compile", "cpu")
REPORT_NAMES = {
    "traffic": "memory-traffic",
    "compile": "offline-compile",
    "cpu": "CPU speed and accuracy",
}
# Seconds each report takes on two idle cores with an empty Triton cache (for the header);
# --full compiles about five times as many kernels.
REPORT_SECONDS = {"traffic": 25, "compile": 180, "cpu": 25}
FULL_COMPILE_FACTOR = 5


def _parser() -> argparse.ArgumentParser:
    from . import gpu

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="On a CUDA machine: time layernorm_gpu against torch and other kernels. "
        "Without a GPU (or with --reports): check memory traffic, offline compilation, CPU "
        "speed and accuracy against their targets.",
        epilog="Exit status: 0 when every target is met (or, for a CPU timing on a busy "
        "machine, not judged), 1 when one is missed. Compiled kernels are cached in "
        "Triton's cache (~/.triton/cache; TRITON_CACHE_DIR moves it).",
    )
    reports = parser.add_argument_group("no-GPU reports")
    reports.add_argument(
        "--reports",
        nargs="*",
        choices=REPORTS,
        default=None,
        help="run these reports (all when given alone) even on a CUDA machine",
    )
    reports.add_argument(
        "--full", action="store_true", help="compile every dtype x regime x flavour (slower)"
    )
    reports.add_argument(
        "--jobs", type=int, default=0, help="compile worker processes (default: one per CPU core)"
    )
    reports.add_argument(
        "--details",
        action="store_true",
        help="also print the proof tools' own tables (per tensor, per kernel) and a glossary",
    )
    reports.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    reports.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 also when a timing target could not be judged (busy machine)",
    )
    gpu.add_arguments(parser.add_argument_group("GPU benchmark (CUDA only)"))
    return parser


def header(args: argparse.Namespace, selected: tuple[str, ...]) -> str:
    """One line: what will run, why, and about how long it takes."""
    names = [REPORT_NAMES[r] for r in selected]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    why = (
        "--reports given"
        if args.reports is not None
        else f"No CUDA device (torch {torch.__version__}), so no GPU benchmark"
    )
    seconds = sum(REPORT_SECONDS[r] for r in selected)
    if args.full and "compile" in selected:
        seconds += (FULL_COMPILE_FACTOR - 1) * REPORT_SECONDS["compile"]
    took = f"{round(seconds / 60)} min" if seconds >= 90 else f"{seconds} s"
    report = "report" if len(names) == 1 else "reports"
    return f"{why}: running the {listed} {report} (about {took} on 2 idle cores)."


GLOSSARY = (
    ("DRAM model", "bytes that reach GPU memory (HBM), each address counted once"),
    ("requested", "every byte the GPU's cores ask for, re-reads served by the L2 cache included"),
    (
        "loads/elem, stores/elem",
        "how often elements were loaded / stored: 1x:48000 means 48000 elements once each; "
        "12x:1000 means 1000 elements 12 times each (weight and bias, once per program)",
    ),
    ("minimum", "what any implementation moves: x + y forward, x + dy + dx backward"),
    ("eager ...", "torch work between kernel launches (such as a zero fill)"),
    (
        "dW / dB partials",
        "per-program float32 partial sums of the weight / bias gradients, summed by a 2nd kernel",
    ),
    (
        "Big problem",
        "16384 x 4096 bf16: too large for the interpreter, measured on a few programs with the "
        "real launch configuration and scaled up",
    ),
    (
        "sm_80, sm_90, sm_100, sm_120, gfx942, gfx950",
        "A100, H100, B200, RTX 5090, MI300X, MI355X",
    ),
    ("regs", "registers per thread (at most 255)"),
    ("spill B", "bytes per thread spilled to slow local memory, stack/local: 0/0 is none"),
    ("warps/SM", "warps resident per SM (occupancy)"),
    ("v4 ld/st, 128b", "128-bit (vectorised) global loads / stores in the compiled PTX"),
    ("64-bit", "row offsets multiplied in 64 bits: tensors past 2^31 elements are safe"),
)


def _glossary() -> Table:
    table = Table("How to read the detailed tables", ["term", "meaning"])
    for term, meaning in GLOSSARY:
        table.add(term, meaning)
    return table


def _reports(args: argparse.Namespace) -> int:
    """Run the selected no-GPU reports with progress; print the tables and the summary; return
    the exit status."""
    from . import cpu, findings
    from .cache import folder_bytes, triton_cache_dir
    from .progress import Steps
    from .proof import compile_report, traffic
    from .tables import console, fmt_bytes, print_table
    from .verdicts import MET, MISSED, NOT_JUDGED, exit_status, summary_table

    selected = tuple(r for r in REPORTS if r in (args.reports or REPORTS))
    out = console()

    def say(text: str = "") -> None:
        if args.markdown:
            print(text)
        else:
            out.print(text, markup=False)

    def show(table) -> None:
        print_table(table, args.markdown)

    say(header(args, selected))
    say()
    steps = Steps(
        ("traffic" in selected)
        + ("compile" in selected)
        + 2 * ("cpu" in selected)
        + args.details * ("traffic" in selected)
    )
    outcomes = []
    detailed: list = []
    if "traffic" in selected:
        cases = traffic.STRUCTURAL_CASES
        with steps.step(
            "Memory traffic: running the kernels in Triton's interpreter", units=len(cases) + 2
        ) as step:
            traced = []
            for case in cases:
                step.say(f"counting loads and stores of {findings.problem(case)}")
                traced.append(findings.trace_case(case))
                step.advance()
            extrapolations = {}
            for mode in ("fwd", "bwd"):
                step.say(f"measuring the 16384 x 4096 bf16 {mode} on a few programs")
                extrapolations[mode] = traffic.extrapolate(mode)
                step.advance()
        for table, outcome in (
            findings.read_write_table(traced),
            findings.big_problem_table(extrapolations),
            findings.widths_table(),
        ):
            show(table)
            outcomes.append(outcome)
        if args.details:
            with steps.step("Memory traffic, per tensor (--details)", units=2) as step:
                tables, _ = traffic.structural_tables()
                step.advance()
                big, _ = traffic.big_shape_table()
                step.advance()
            detailed += [*tables, big, traffic.prediction_table()]
    cache = triton_cache_dir()
    cache_before = folder_bytes(cache)
    if "compile" in selected:
        variants = compile_report.variants(args.full)
        alignment = compile_report.alignment_variants(args.full)
        flight = compile_report.in_flight_variants()
        archs = ", ".join(t.arch for t in compile_report.ARCHS)
        with steps.step(
            "Compiling the kernels for every GPU family, no GPU needed", units=3
        ) as step:
            step.say(f"{len(variants)} launches x {archs} (the first run takes minutes)")
            reports = compile_report.compile_all(variants, jobs=args.jobs)
            step.advance(f"{len(alignment)} row widths for sm_90")
            aligned = compile_report.compile_all(
                alignment, archs=(90,), jobs=args.jobs, unique=False
            )
            step.advance(f"{len(flight)} launches of issue 10's in-flight table")
            in_flight = compile_report.compile_all(
                flight, archs=compile_report.IN_FLIGHT_TARGETS, jobs=args.jobs, unique=False
            )
            step.advance()
        table, compiled = findings.compile_table(reports, aligned, alignment)
        show(table)
        outcomes += compiled
        table, latency = findings.in_flight_table(in_flight, reports)
        show(table)
        outcomes.append(latency)
        if args.details:
            title = (
                f"Compile report ({'full' if args.full else 'representative subset'}), "
                f"offline for {archs}"
            )
            detailed += [
                compile_report.report_table(reports, title)[0],
                compile_report.alignment_table(aligned)[0],
                compile_report.in_flight_checks(findings.distinct(in_flight + reports))[0],
            ]
    if "cpu" in selected:
        with steps.step(
            "CPU fallback speed: timing the reference against torch", units=2 * cpu.PAIRS
        ) as step:
            table, timed = cpu.timing_table(on_pair=step.advance)
        show(table)
        outcomes += timed
        with steps.step("Kernel accuracy: fp32, fp16, bf16 against float64"):
            table, accuracy = cpu.accuracy_table()
        show(table)
        outcomes.append(accuracy)
    if detailed:
        say("Details (--details): the proof tools' own tables")
        say()
        for table in (_glossary(), *detailed):
            show(table)

    show(summary_table(outcomes))
    counts = {v: sum(o.verdict == v for o in outcomes) for v in (MET, MISSED, NOT_JUDGED)}
    say(
        f"Proven without a GPU: {counts[MET]} of {len(outcomes)} targets met. "
        "Needs a GPU: the kernels' real speed and the GPU tests. On a CUDA machine "
        "python -m bench.gpu_check runs both (pytest -m gpu, and the benchmark against torch "
        "and torch.compile, and apex, Liger and quack when installed) in under 10 minutes and "
        "writes the measured tables into bench/RESULTS.md."
    )
    if "compile" in selected:
        after = folder_bytes(cache)
        say(
            f"Cached: Triton keeps the compiled kernels in {cache} ({fmt_bytes(after)}, "
            f"{fmt_bytes(max(after - cache_before, 0))} from this run; reruns reuse them). "
            "Set TRITON_CACHE_DIR to put them elsewhere; deleting the folder is safe."
        )
    status = exit_status(outcomes, args.strict)
    if counts[MISSED]:
        say(f"Exit status {status}: {counts[MISSED]} target(s) missed.")
    elif counts[NOT_JUDGED]:
        say(
            f"Exit status {status}: {counts[NOT_JUDGED]} timing target(s) not judged "
            f"({'failing under --strict' if args.strict else '--strict would fail them'})."
        )
    else:
        say(f"Exit status {status}: every target met.")
    return status


def main() -> None:
    if not torch.cuda.is_available():
        # The kernels choose between compiled and interpreted when they are imported (the
        # parser's imports reach them): say "interpreted" first.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args = _parser().parse_args()
    if torch.cuda.is_available() and args.reports is None:
        from . import gpu

        gpu.run(args)
        return
    if torch.cuda.is_available():
        # The reports run the kernels in the interpreter on CPU tensors: use a fresh process
        # that sees no GPU, so that the kernels are imported interpreted.
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1")
        sys.exit(
            subprocess.run(
                [sys.executable, "-m", "bench", *sys.argv[1:]], env=env, check=False
            ).returncode
        )
    sys.exit(_reports(args))


if __name__ == "__main__":
    main()
