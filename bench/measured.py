"""The measured part of ``bench/RESULTS.md``: one delimited section the GPU check rewrites.

``bench/RESULTS.md`` holds what was proven without a GPU, with the GPU times as the byte model's
predictions. :func:`render` turns a GPU check's results (:class:`GpuRun`: the test suites, the
benchmark's rows, the training step) into a Markdown section between :data:`BEGIN` and
:data:`END`; :func:`replace_section` swaps that section into the file's text and leaves every
other line as it was, so the predictions stay next to the measurements. Until a GPU has run the
check, the section is :func:`placeholder`, which says that the GPU figures are predictions.
Rendering is pure (no torch device, no clock), so the same results give the same file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .gpu import DTYPES, OURS, Row, geomean_speedups, training_table
from .proof.bytes_model import H100_BANDWIDTH, bytes_moved
from .pytest_run import FINISHED, NOT_RUN, SuiteResult
from .tables import Table, to_markdown

BEGIN = "<!-- gpu-check: begin (python -m bench.gpu_check rewrites this section) -->"
END = "<!-- gpu-check: end -->"
COMMAND = "python -m bench.gpu_check"
INSTALL_AND_RUN = "pip install -e '.[test,bench]' && python -m bench.gpu_check"
MODE_NAMES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}


@dataclass
class GpuRun:
    """What one run of the GPU check measured, and on what.

    ``copy_bandwidth``: bytes/s of a device-to-device copy; ``planned``: the benchmark cases
    (``"bf16 N=4096"``) of the plan, in order; ``not_run``: those the time budget left out;
    ``training``: (hidden size, transformers ms, layernorm_gpu ms) of the training step;
    ``finished``: the run reached its end (else the section says it stopped early)."""

    gpu: str
    date: str
    versions: str
    commit: str
    budget_s: float
    elapsed_s: float = 0.0
    finished: bool = False
    copy_bandwidth: float | None = None
    suites: list[SuiteResult] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    training: list[tuple[int, float, float]] = field(default_factory=list)
    stopped: str = ""


def placeholder() -> str:
    """The section before any GPU has run the check: the GPU figures are predictions."""
    return "\n".join(
        (
            BEGIN,
            "**Measured on a GPU: not yet**",
            "",
            "**Not measured yet: every GPU time in this file is a prediction** (the byte model "
            f"at an H100's {H100_BANDWIDTH / 1e12:.1f} TB/s), not a measurement. On a CUDA "
            f"machine `{INSTALL_AND_RUN}` runs the gpu-marked tests, the kernel tests compiled "
            "for that GPU and the benchmark (under 10 minutes) and replaces this section with "
            "the measured tables, next to the predictions below.",
            END,
        )
    )


def _us(ms: float) -> str:
    return f"{ms * 1e3:.1f} us"


def predicted_ms(mode: str, rows: int, cols: int, dtype: str, bandwidth: float) -> float:
    """The byte model's time of ``mode`` (``fwd_bwd``: both passes) at ``bandwidth`` bytes/s."""
    elem = DTYPES[dtype].itemsize
    passes = ("fwd", "bwd") if mode == "fwd_bwd" else (mode,)
    return sum(bytes_moved(m, rows, cols, elem).total for m in passes) / bandwidth * 1e3


def tests_table(suites: list[SuiteResult]) -> Table:
    """One row per test suite: its command, counts, time and verdict."""
    table = Table("GPU tests", ["suite", "command", "result", "time", "verdict"])
    for s in suites:
        verdict = "passed" if s.ok else ("-" if s.status == NOT_RUN else "FAILED")
        if s.status not in (FINISHED, NOT_RUN):
            verdict += f" ({s.status})"
        table.add(s.name, f"`{s.command}`", s.counts(), f"{s.seconds:.0f} s", verdict)
        if s.failures:
            shown = ", ".join(f"`{f}`" for f in s.failures[:10])
            more = f" and {len(s.failures) - 10} more" if len(s.failures) > 10 else ""
            table.notes.append(f"{s.name}, failing: {shown}{more}")
    table.notes.append(
        "passed: every selected test ran and none failed. skipped: tests needing what this "
        "machine lacks (the NCCL tests need two GPUs); the pytest log gives each reason."
    )
    return table


def dtype_table(run: GpuRun, dtype: str) -> Table:
    """layernorm_gpu's measured time of each (N, pass) in ``dtype``, the byte model's prediction
    beside it, and every baseline's time with our speedup over it."""
    rows = [r for r in run.rows if r.dtype == dtype]
    baselines = list(dict.fromkeys(r.provider for r in rows if r.provider != OURS))
    table = Table(
        f"LayerNorm {dtype} on {run.gpu}: measured, next to the byte model's prediction",
        ["N", "rows", "pass", "predicted", OURS, "measured / predicted", "GB/s (of copy)"]
        + baselines,
    )
    by_key = {(r.cols, r.mode, r.provider): r for r in rows}
    keys = sorted(
        {(r.cols, r.mode) for r in rows}, key=lambda k: (k[0], list(MODE_NAMES).index(k[1]))
    )
    for cols, mode in keys:
        ours = by_key.get((cols, mode, OURS))
        n_rows = next(r.rows for r in rows if r.cols == cols)
        predicted = (
            predicted_ms(mode, n_rows, cols, dtype, run.copy_bandwidth)
            if run.copy_bandwidth
            else None
        )
        cells = [
            cols,
            n_rows,
            MODE_NAMES[mode],
            _us(predicted) if predicted else "-",
            _us(ours.ms) if ours else "failed",
            f"{ours.ms / predicted:.2f}x" if ours and predicted else "-",
            f"{ours.gbps:.0f} ({ours.copy_fraction:.0%})" if ours else "-",
        ]
        for name in baselines:
            theirs = by_key.get((cols, mode, name))
            if theirs is None:
                cells.append("-")
            elif ours is None:
                cells.append(_us(theirs.ms))
            else:
                cells.append(f"{_us(theirs.ms)} ({theirs.ms / ours.ms:.2f}x)")
        table.add(*cells)
    copy = f"{run.copy_bandwidth / 1e9:.0f} GB/s" if run.copy_bandwidth else "not measured"
    table.notes += [
        "Times: medians of triton.testing.do_bench (L2 cleared before every repetition, inputs "
        "rotated over 3x the L2). rows: fewer than 16384 where x would pass 256 MB.",
        "predicted: the byte model's DRAM bytes for the launch configuration the heuristics "
        f"pick (bench/proof/bytes_model.py) over this GPU's measured copy bandwidth ({copy}); "
        f"the tables below predict the same at {H100_BANDWIDTH / 1e12:.1f} TB/s and 16384 rows.",
        "GB/s: the minimum bytes (x + y forward, x + dy + dx backward) over the measured time; "
        "of copy: as a share of the copy bandwidth. Baselines: their time and, in brackets, "
        "their time over layernorm_gpu's (above 1.00x layernorm_gpu is faster).",
    ]
    return table


def speedup_table(rows: list[Row]) -> Table:
    """Geometric-mean speedup of layernorm_gpu over each baseline, per pass."""
    modes = [m for m in MODE_NAMES if any(r.mode == m for r in rows)]
    table = Table(
        "Speed of layernorm_gpu against each baseline (geometric mean over dtypes and sizes)",
        ["baseline", *(MODE_NAMES[m] for m in modes)],
    )
    for baseline, by_mode in geomean_speedups(rows).items():
        table.add(baseline, *(f"{by_mode[m]:.2f}x" if m in by_mode else "-" for m in modes))
    table.notes.append("baseline time / layernorm_gpu time: above 1.00x layernorm_gpu is faster.")
    return table


def render(run: GpuRun) -> str:
    """The section (markers included) for ``run``."""
    measured = len({(r.dtype, r.cols) for r in run.rows})
    if run.finished:
        status = f"complete: {measured} of {len(run.planned)} benchmark cases measured"
        if run.not_run:
            status += f"; left out for the time budget: {', '.join(run.not_run)}"
    else:
        status = (
            f"**incomplete**: the run stopped before its end ({run.stopped or 'still running'}); "
            f"the tables hold what was measured until then ({measured} of {len(run.planned)} "
            "benchmark cases)"
        )
    copy = f"{run.copy_bandwidth / 1e9:.0f} GB/s" if run.copy_bandwidth else "not measured"
    lines = [
        BEGIN,
        f"**Measured on a GPU: {run.gpu}, {run.date}**",
        "",
        f"- **On what:** {run.gpu}, {run.versions}, commit `{run.commit}`; device-to-device "
        f"copy bandwidth {copy}.",
        f"- **How:** `{COMMAND}` (time budget {run.budget_s:.0f} s, took "
        f"{run.elapsed_s:.0f} s); {status}.",
        "- **Measured here, predicted elsewhere:** the tables in this section are measurements; "
        "the GPU times in the rest of this file are the byte model's predictions for an H100, "
        "made without a GPU, left as they were for comparison.",
        "",
    ]
    tables = []
    if run.suites:
        tables.append(tests_table(run.suites))
    for dtype in DTYPES:
        if any(r.dtype == dtype for r in run.rows):
            tables.append(dtype_table(run, dtype))
    if len({r.provider for r in run.rows}) > 1:
        tables.append(speedup_table(run.rows))
    if run.training:
        tables.append(training_table(run.training))
    lines += [to_markdown(t) for t in tables]
    lines.append(END)
    return "\n".join(lines)


def _marker_lines(lines: list[str], marker: str) -> list[int]:
    key = marker.split("(")[0].strip()
    return [i for i, line in enumerate(lines) if line.startswith(key)]


def replace_section(text: str, section: str) -> str:
    """``text`` with its section between :data:`BEGIN` and :data:`END` replaced by ``section``
    (markers included). A text without the markers gets the section before its first table (the
    first line in bold), or at its end. Raises ValueError when the markers are not one begin
    followed by one end."""
    lines = text.splitlines()
    begins, ends = _marker_lines(lines, BEGIN), _marker_lines(lines, END)
    new = section.splitlines()
    if not begins and not ends:
        at = next((i for i, line in enumerate(lines) if line.startswith("**")), len(lines))
        lines[at:at] = [*new, ""] if at < len(lines) else ["", *new]
    elif len(begins) == 1 and len(ends) == 1 and begins[0] < ends[0]:
        lines[begins[0] : ends[0] + 1] = new
    else:
        raise ValueError(
            f"expected one {BEGIN!r} line followed by one {END!r} line; found begin markers on "
            f"lines {[i + 1 for i in begins]} and end markers on lines {[i + 1 for i in ends]}"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Swap ``section`` into the file at ``path`` (created when missing) atomically: a run killed
    mid-write leaves the previous file whole."""
    exists = path.exists()
    text = replace_section(path.read_text() if exists else "", section)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, path.stat().st_mode if exists else 0o644)
    os.replace(tmp, path)
