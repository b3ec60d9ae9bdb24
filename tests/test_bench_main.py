"""The main job's reporting (``python -m bench`` without a GPU): the header, tables that fit the
terminal, timing verdicts that state their noise, and the exit status."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import __main__ as main
from bench import cpu, tables
from bench.tables import Table
from bench.verdicts import MET, MISSED, NOT_JUDGED, Outcome, exit_status


@pytest.fixture
def terminal(monkeypatch):
    """A terminal of ``width`` columns for the report's console."""

    def resize(width: int) -> None:
        monkeypatch.setenv("COLUMNS", str(width))
        tables.console.cache_clear()

    yield resize
    tables.console.cache_clear()


def _wide_table() -> Table:
    table = Table("A report", ["problem", "what was measured", "target", "verdict"])
    table.add("LayerNorm, bf16, 16384 × 4096", "forward moves 268 MB of 268 MB", "≤ +1%", "met")
    table.add("RMSNorm, fp16, 48 × 1000", "x read once, y written once " * 3, "once", "MISSED")
    table.notes.append("a note long enough to wrap " * 8)
    return table


@pytest.mark.parametrize("width", [60, 80, 120])
def test_tables_fit_the_terminal_without_splitting_words(terminal, capsys, width):
    terminal(width)
    tables.print_table(_wide_table())
    lines = capsys.readouterr().out.splitlines()
    assert lines and max(len(line.rstrip()) for line in lines) <= width
    text = " ".join(lines)
    for word in ("LayerNorm,", "16384", "MISSED", "268"):
        assert word in text


def test_a_table_too_wide_for_the_terminal_prints_one_block_per_row(terminal, capsys):
    terminal(40)
    table = Table("Per kernel", ["kernel", *(f"column{i}" for i in range(8))])
    table.add("norm_fwd", *(f"value{i}" for i in range(8)))
    tables.print_table(table)
    out = capsys.readouterr().out
    assert "kernel: norm_fwd" in out and "column7" in out and "value7" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 40


def _args(**overrides) -> argparse.Namespace:
    defaults = dict(reports=None, full=False, details=False, markdown=False, strict=False)
    return argparse.Namespace(**{**defaults, **overrides})


def test_header_says_what_runs_and_why():
    line = main.header(_args(), main.REPORTS)
    assert line.startswith("No CUDA device") and "memory-traffic" in line and "CPU" in line
    line = main.header(_args(reports=["compile"]), ("compile",))
    assert line.startswith("--reports given") and "offline-compile report" in line


def _timing(ratios: list[float]) -> cpu.PairedTiming:
    return cpu.PairedTiming(reference=[2.0 * r for r in ratios], torch=[2.0] * len(ratios))


@pytest.mark.parametrize(
    "ratios, busy, verdict",
    [
        ([1.5, 1.6, 1.7, 1.8, 1.9], None, MET),
        ([2.2, 2.3, 2.4, 2.5, 2.6], None, MISSED),
        ([1.7, 1.9, 2.0, 2.1, 2.3], None, NOT_JUDGED),  # the spread straddles 2x
        ([1.5, 1.6, 1.7, 1.8, 1.9], "busy machine", NOT_JUDGED),
    ],
)
def test_timing_verdicts_state_their_noise(ratios, busy, verdict):
    got, why = cpu.timing_verdict(_timing(ratios), 2.0, busy)
    assert got == verdict
    assert bool(why) == (verdict == NOT_JUDGED)


def test_paired_timing_alternates_which_side_goes_first():
    order: list[str] = []
    timing = cpu.time_pairs(lambda: order.append("ref"), lambda: order.append("torch"), pairs=4)
    # one warm-up call each, then ref first in even pairs and torch first in odd ones
    assert order == ["ref", "torch"] + ["ref", "torch", "torch", "ref"] * 2
    assert len(timing.reference) == len(timing.torch) == 4
    assert all(t > 0 for t in timing.reference + timing.torch)


def test_cpu_timing_and_accuracy_tables_give_a_verdict_per_figure():
    table, outcomes = cpu.timing_table(shape=(64, 256), pairs=3)
    assert len(table.rows) == len(outcomes) == 2
    assert all(o.verdict in (MET, MISSED, NOT_JUDGED) and o.target for o in outcomes)
    table, outcome = cpu.accuracy_table(rows=5, cols=64)
    assert [row[0] for row in table.rows] == ["fp32", "fp16", "bf16"]
    assert outcome.verdict == MET and all(row[-1] == MET for row in table.rows)


def test_share_of_tolerance_is_one_at_assert_closes_limit():
    expected = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    rtol, atol = cpu.ASSERT_CLOSE_DEFAULTS[torch.float32]
    at_limit = (expected + (atol + rtol * expected.abs())).float()
    assert cpu._share_of_tolerance(at_limit, expected) == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize(
    "verdicts, strict, status",
    [
        ([MET, MET], False, 0),
        ([MET, NOT_JUDGED], False, 0),
        ([MET, NOT_JUDGED], True, 1),
        ([MISSED, MET], False, 1),
    ],
)
def test_exit_status(verdicts, strict, status):
    outcomes = [Outcome("check", "target", "measured", v) for v in verdicts]
    assert exit_status(outcomes, strict) == status


def test_a_missed_target_ends_the_main_job_with_status_1(monkeypatch, capsys, terminal):
    terminal(80)
    missed = Outcome("CPU fallback speed, forward", "within 2x of torch", "2.50x", MISSED)
    met = Outcome("Kernel accuracy", "within tolerance", "48%", MET)
    monkeypatch.setattr(cpu, "timing_table", lambda on_pair: (Table("speed", ["a"]), [missed]))
    monkeypatch.setattr(cpu, "accuracy_table", lambda: (Table("accuracy", ["a"]), met))
    assert main._reports(_args(reports=["cpu"])) == 1
    out = capsys.readouterr().out
    assert out.startswith("--reports given: running the CPU speed and accuracy report")
    assert "Summary" in out and "Exit status 1: 1 target(s) missed." in out
