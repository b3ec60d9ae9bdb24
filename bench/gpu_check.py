"""``python -m bench.gpu_check``: the GPU check, one command, under 10 minutes.

On a CUDA machine (after ``pip install -e '.[test,bench]'``) it runs, in order:

1. the gpu-marked tests (``pytest -m gpu``: every test that needs CUDA, the slow ones included),
   then the kernel tests (``tests/test_kernels.py``, compiled for this GPU rather than run in
   Triton's interpreter), as child processes sharing a time limit (:mod:`bench.pytest_run`);
2. the benchmark of :mod:`bench.gpu` (LayerNorm forward and backward against torch,
   ``torch.compile`` and apex / Liger / quack when installed) over :data:`BENCH_CASES`, most
   telling first, as many as the time budget allows, then the training step;

and rewrites the measured section of ``bench/RESULTS.md`` (:mod:`bench.measured`) after every
step, so a run cut short still leaves what it measured, marked incomplete. Logs, JUnit XML, the
CSV and the plots go to ``bench/out/gpu_check_<time>/``. ``--dry-run`` lists the plan and the
time estimate on any machine. Without a GPU it says so and leaves ``RESULTS.md`` alone.

Exit status: 0 when every test that ran passed and layernorm_gpu ran every benchmarked case;
1 when a test failed, a suite was cut short at its time limit, layernorm_gpu failed a case or
the run was stopped; 2 when it could not run (no GPU, a missing package, a ``RESULTS.md``
whose section markers are broken).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import gpu
from .measured import (
    MODE_NAMES,
    GpuRun,
    dtype_table,
    render,
    replace_section,
    speedup_table,
    tests_table,
    training_table,
    write_section,
)
from .progress import Steps
from .pytest_run import NOT_RUN, Suite, SuiteResult, run_suite
from .tables import console, print_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SAVE_PATH = Path(__file__).resolve().parent / "out"

SUITES = (
    Suite("gpu-marked tests", ("-q", "-p", "no:cacheprovider", "-m", "gpu")),
    Suite("kernel tests", ("-q", "-p", "no:cacheprovider", "tests/test_kernels.py")),
)
# (dtype, N), most telling first, so that a run cut short has measured those: the headline
# shape, the widest whole-row forward, a narrow width, the looped kernels, the other powers of
# two up to 262144 (2048 left out for time: between 1024 and 4096), then float32.
BENCH_CASES = (
    ("bf16", 4096),
    ("bf16", 16384),
    ("bf16", 1024),
    ("bf16", 65536),
    ("bf16", 8192),
    ("bf16", 32768),
    ("bf16", 131072),
    ("bf16", 262144),
    ("fp32", 4096),
    ("fp32", 16384),
)
BENCH_MODES = ("fwd", "bwd")

# The whole run stays under 10 minutes: BUDGET_S for the steps, the rest for start-up and the
# last write. The tests share TESTS_BUDGET_S; a suite starts only with MIN_SUITE_S left of it.
BUDGET_S = 540.0
TESTS_BUDGET_S = 210.0
MIN_SUITE_S = 30.0
# The watchdog stops a benchmark step still running this long past the budget.
GRACE_S = 30.0
# Rough seconds on an H100 for the estimate and the budget (guesses until measured on a GPU;
# the budget also uses each case's measured time for the next one):
TIMING_S = 0.5  # one do_bench: 25 ms warm-up, 100 ms of repetitions, L2 clears, launches
OURS_COMPILE_S = 3.0  # Triton compiles forward, backward and partial sums per (dtype, N)
INDUCTOR_COMPILE_S = 10.0  # torch.compile per (pass, dtype, N): dynamo is reset each time
COPY_S = 2.0
TRAIN_S = 30.0


class Stopped(BaseException):
    """The run was stopped (budget watchdog, SIGTERM); a BaseException so that the benchmark's
    per-provider ``except Exception`` does not swallow it."""


@dataclass(frozen=True)
class Plan:
    """What the check runs: test suites, benchmark cases, passes and providers, budgets."""

    suites: tuple[Suite, ...]
    cases: tuple[tuple[str, int], ...]
    modes: tuple[str, ...]
    providers: tuple[str, ...]
    train: bool
    budget_s: float
    tests_budget_s: float

    def case_seconds(self) -> float:
        """Estimated seconds of one benchmark case (every provider, every pass)."""
        compiles = INDUCTOR_COMPILE_S * ("torch.compile" in self.providers)
        return OURS_COMPILE_S + len(self.modes) * (len(self.providers) * TIMING_S + compiles)

    def estimate(self) -> tuple[float, float]:
        """(at most the tests' seconds, about the benchmark's seconds)."""
        bench = COPY_S + len(self.cases) * self.case_seconds() + TRAIN_S * self.train
        return (self.tests_budget_s if self.suites else 0.0), bench

    def describe(self, results: Path, save_path: Path) -> list[str]:
        """The plan as lines: each step with its command or cases and its time."""
        tests, bench = self.estimate()
        lines = []
        for i, suite in enumerate(self.suites, 1):
            share = f"at most {self.tests_budget_s:.0f} s" if i == 1 else "what is left of it"
            lines.append(f"{i}. {suite.name}: {suite.command}  ({share})")
        step = len(self.suites) + 1
        lines.append(f"{step}. device-to-device copy bandwidth (about {COPY_S:.0f} s)")
        lines.append(
            f"{step + 1}. benchmark, {', '.join(MODE_NAMES[m] for m in self.modes)}; "
            f"{', '.join(self.providers)}:"
        )
        for dtype, cols in self.cases:
            rows = gpu.rows_for(cols, gpu.DTYPES[dtype])
            lines.append(
                f"   {case_name(dtype, cols)} ({rows} rows): about {self.case_seconds():.0f} s"
            )
        if self.train:
            lines.append(f"{step + 2}. training step (about {TRAIN_S:.0f} s)")
        lines += [
            f"Estimate: at most about {(tests + bench) / 60:.0f} min (tests at most {tests:.0f} s, "
            f"benchmark about {bench:.0f} s); budget {self.budget_s:.0f} s: cases that would "
            "pass it are left out and listed.",
            f"Writes: {results} (the section between the gpu-check markers, after every step); "
            f"{save_path}/gpu_check_<time>/ (pytest logs and JUnit XML, CSV, plots).",
        ]
        return lines


def case_name(dtype: str, cols: int) -> str:
    return f"{dtype} N={cols}"


def make_plan(args: argparse.Namespace, providers: list[str]) -> Plan:
    return Plan(
        suites=() if args.no_tests else SUITES,
        cases=BENCH_CASES,
        modes=BENCH_MODES,
        providers=tuple(providers),
        train=not args.no_train,
        budget_s=args.budget,
        tests_budget_s=args.tests_budget,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description="On a CUDA machine: run the GPU tests and the benchmark (under 10 minutes) "
        "and write the measured tables into bench/RESULTS.md next to the predictions.",
        epilog="Exit status: 0 all tests that ran passed and layernorm_gpu ran every case "
        "measured; 1 a test failed, a "
        "suite hit its time limit, layernorm_gpu failed a case or the run was stopped; 2 it "
        "could not run (no GPU, missing package, broken RESULTS.md markers).",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the plan and exit")
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help="seconds for all steps (default %(default)s)"
    )
    parser.add_argument(
        "--tests-budget",
        type=float,
        default=TESTS_BUDGET_S,
        help="seconds the test suites share (default %(default)s)",
    )
    parser.add_argument("--no-tests", action="store_true", help="skip the test suites")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="the Markdown file to write into"
    )
    parser.add_argument(
        "--save-path", type=Path, default=SAVE_PATH, help="folder for logs, CSV and plots"
    )
    return parser


def no_gpu_message() -> str:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"No GPU: torch {torch.__version__} ({build}) sees no CUDA device, so the GPU check "
        "cannot run. Nothing was run and bench/RESULTS.md was left as it is: its GPU figures "
        "stay predictions. `python -m bench.gpu_check --dry-run` lists what it would run; "
        "`python -m bench` runs the no-GPU reports."
    )


def missing_packages(train: bool) -> list[str]:
    """The packages the check needs that do not import here."""
    needed = ["triton", "pytest", "rich"] + (["transformers"] if train else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`Stopped` in the main thread after ``seconds``, or on SIGTERM."""

    def stop(signum, frame) -> None:
        raise Stopped("past the time budget" if signum == signal.SIGALRM else "terminated")

    previous = signal.signal(signal.SIGALRM, stop), signal.signal(signal.SIGTERM, stop)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _versions() -> str:
    import triton

    backend = f"HIP {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
    return f"torch {torch.__version__} ({backend}), triton {triton.__version__}"


def run(plan: Plan, results: Path, save_path: Path) -> int:
    """Run ``plan`` on the GPU, writing ``results`` after every step; the exit status."""
    start = time.monotonic()
    deadline = start + plan.budget_s
    env = gpu._environment()
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    out_dir = save_path / f"gpu_check_{stamp}"
    csv_path = out_dir / "benchmark.csv"
    record = GpuRun(
        gpu=env["gpu"],
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        versions=_versions(),
        commit=env["commit"],
        budget_s=plan.budget_s,
        planned=[case_name(*c) for c in plan.cases],
        suites=[SuiteResult(s.name, s.command) for s in plan.suites],
    )
    out = console()

    def save() -> None:
        record.elapsed_s = time.monotonic() - start
        write_section(results, render(record))

    out.print(
        f"GPU check on {record.gpu} ({record.versions}), commit {record.commit}:", markup=False
    )
    for line in plan.describe(results, save_path):
        out.print(line, markup=False)
    out.print()
    steps = Steps(len(plan.suites) + 2 + plan.train)
    providers = gpu.available_providers(list(plan.providers))
    ours_failed: list[str] = []
    try:
        with _watchdog(plan.budget_s + GRACE_S):
            tests_deadline = start + plan.tests_budget_s
            for i, suite in enumerate(plan.suites):
                left = tests_deadline - time.monotonic()
                if left < MIN_SUITE_S:
                    _skip(steps, f"{suite.name}: {NOT_RUN}")
                    continue
                with steps.step(f"{suite.name}: {suite.command}") as step:
                    record.suites[i] = run_suite(
                        suite,
                        left,
                        out_dir,
                        REPO,
                        on_tick=lambda s, step=step, left=left: step.say(
                            f"{s:.0f} s (limit {left:.0f} s)"
                        ),
                    )
                    step.print(f"{suite.name}: {record.suites[i].counts()}")
                save()
            with steps.step("Measuring the GPU's copy bandwidth (the reference for GB/s)"):
                record.copy_bandwidth = gpu.copy_bandwidth()
            units = len(plan.modes) * len(providers)
            with steps.step(
                "Benchmark: every provider and pass per case", units=units * len(plan.cases)
            ) as step:
                last = 0.0
                for dtype, cols in plan.cases:
                    name = case_name(dtype, cols)
                    if time.monotonic() + max(plan.case_seconds(), last) > deadline:
                        record.not_run.append(name)
                        step.print(f"left out for the time budget: {name}")
                        for _ in range(units):
                            step.advance()
                        continue
                    began = time.monotonic()
                    rows = gpu.run_sweep(
                        providers, plan.modes, [dtype], (cols,), record.copy_bandwidth, step
                    )
                    last = time.monotonic() - began
                    record.rows += rows
                    ours_failed += [
                        f"{name} {m}"
                        for m in plan.modes
                        if not any(r.provider == gpu.OURS and r.mode == m for r in rows)
                    ]
                    gpu.write_csv(record.rows, csv_path)
                    save()
            if plan.train:
                if time.monotonic() + TRAIN_S > deadline:
                    _skip(steps, "training step: left out for the time budget")
                else:
                    with steps.step("Training step: one Llama layer, its RMSNorm and ours") as step:
                        try:
                            record.training = gpu.training_step()
                        except Exception as e:  # said; the tables before it stand
                            step.print(f"training step failed: {type(e).__name__}: {e}"[:300])
        record.finished = True
    except (Stopped, KeyboardInterrupt) as stop:
        record.stopped = str(stop) or "interrupted"
    except Exception as error:  # said in the section, then raised with its traceback
        record.stopped = f"{type(error).__name__}: {error}"[:300]
        raise
    finally:
        save()
    plots = gpu.plot(record.rows, record.copy_bandwidth, out_dir) if _can_plot(record) else []
    written = f"{results} (the measured section), {out_dir} (logs, JUnit XML, CSV, "
    return _summary(record, ours_failed, written + f"{len(plots)} plots)")


def _skip(steps: Steps, what: str) -> None:
    """Count a step that is left out, and say so."""
    steps.done += 1
    steps.console.print(f"[{steps.done}/{steps.total}] {what}", markup=False)


def _can_plot(record: GpuRun) -> bool:
    return bool(record.rows) and importlib.util.find_spec("matplotlib") is not None


def _summary(record: GpuRun, ours_failed: list[str], written: str) -> int:
    """Print the measured tables and a closing line; return the exit status."""
    out = console()
    if record.suites:
        print_table(tests_table(record.suites))
    for dtype in gpu.DTYPES:
        if any(r.dtype == dtype for r in record.rows):
            print_table(dtype_table(record, dtype))
    if record.rows:
        print_table(speedup_table(record.rows))
    if record.training:
        print_table(training_table(record.training))
    failed = [s for s in record.suites if s.status != NOT_RUN and not s.ok]
    problems = [f"{s.name}: {s.counts()} ({s.status}; log {s.log})" for s in failed]
    if ours_failed:
        problems.append(f"layernorm_gpu failed: {', '.join(ours_failed)}")
    if not record.finished:
        problems.append(f"stopped before the end: {record.stopped}")
    measured = len({(r.dtype, r.cols) for r in record.rows})
    out.print(
        f"Tests: {'; '.join(f'{s.name} {s.counts()}' for s in record.suites) or 'skipped'}. "
        f"Benchmark: {measured} of {len(record.planned)} cases measured"
        + (f" ({len(record.not_run)} left out for the time budget)" if record.not_run else "")
        + f". Written: {written}. Took {record.elapsed_s:.0f} s.",
        markup=False,
    )
    if problems:
        out.print("Exit status 1: " + "; ".join(problems), markup=False)
        return 1
    out.print(
        "Exit status 0: every test that ran passed, layernorm_gpu ran every case measured.",
        markup=False,
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``; list the plan (``--dry-run``), or check that the run can start and run
    it, exiting with its status."""
    args = _parser().parse_args(argv)
    plan = make_plan(args, [p.name for p in gpu.available_providers()])
    if args.dry_run:
        print("The GPU check would run (on a CUDA machine; --dry-run runs nothing):")
        print("\n".join(plan.describe(args.results, args.save_path)))
        if not torch.cuda.is_available():
            print("This machine has no CUDA device: without --dry-run the check stops here.")
        return
    if not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        sys.exit(2)
    missing = missing_packages(plan.train)
    if missing:
        print(
            f"The GPU check needs {', '.join(missing)}: pip install -e '.[test,bench]'",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        replace_section(args.results.read_text() if args.results.exists() else "", "")
    except ValueError as e:
        print(f"{args.results}: {e}; nothing was run.", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(plan, args.results, args.save_path))


if __name__ == "__main__":
    main()
