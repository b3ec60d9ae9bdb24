"""``python -m bench``: the GPU benchmark on CUDA, the no-GPU reports elsewhere.

Without CUDA (or with ``--reports``) it prints, as tables:

1. the traffic report: the real kernels run in Triton's interpreter with every load and store
   counted (structural targets at small shapes, the 16384 x 4096 bfloat16 problem extrapolated
   from measured per-program bytes, the byte model's predicted H100 times);
2. the compile report: every specialisation compiled offline for sm_80 and sm_90, with
   registers, spills, occupancy, 128-bit accesses and 64-bit row offsets (``--full``: every
   dtype, regime and flavour; the default is a representative subset), and which row
   alignments get 128-bit accesses;
3. CPU figures: the reference fallback against torch on CPU, and the interpreted kernels
   against float64.

Exit status 0; with ``--strict``, 1 when any target is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

REPORTS = ("traffic", "compile", "cpu")


def _parser() -> argparse.ArgumentParser:
    from . import gpu

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
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
    reports.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    reports.add_argument(
        "--strict", action="store_true", help="exit with status 1 when any target is missed"
    )
    gpu.add_arguments(parser.add_argument_group("GPU benchmark (CUDA only)"))
    return parser


def _reports(args: argparse.Namespace) -> bool:
    """Print the selected no-GPU reports; True when every target they check is met."""
    from . import cpu
    from .proof import compile_report, traffic
    from .tables import Table, print_table

    selected = args.reports or REPORTS
    outcomes: dict[str, bool] = {}
    if "traffic" in selected:
        tables, outcomes["traffic: structural targets"] = traffic.structural_tables()
        big, outcomes["traffic: 16384x4096 bf16 totals"] = traffic.big_shape_table()
        for table in (*tables, big, traffic.prediction_table()):
            print_table(table, args.markdown)
    if "compile" in selected:
        reports = compile_report.compile_all(compile_report.variants(args.full), jobs=args.jobs)
        title = (
            f"Compile report ({'full' if args.full else 'representative subset'}), "
            "offline for sm_80 and sm_90"
        )
        table, outcomes["compile: no spills, 128-bit tiles, 64-bit offsets"] = (
            compile_report.report_table(reports, title)
        )
        print_table(table, args.markdown)
        aligned = compile_report.compile_all(
            compile_report.alignment_variants(args.full), archs=(90,), jobs=args.jobs, unique=False
        )
        table, outcomes["compile: 128-bit x/dy for every 16-byte-aligned row"] = (
            compile_report.alignment_table(aligned)
        )
        print_table(table, args.markdown)
    if "cpu" in selected:
        table, outcomes["cpu: reference within 2x of torch"] = cpu.timing_table()
        print_table(table, args.markdown)
        print_table(cpu.interpreter_table(), args.markdown)
    summary = Table("Targets", ["target", "result"])
    for name, met in outcomes.items():
        summary.add(name, "met" if met else "MISSED")
    print_table(summary, args.markdown)
    return all(outcomes.values())


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
    met = _reports(args)
    sys.exit(1 if args.strict and not met else 0)


if __name__ == "__main__":
    main()
