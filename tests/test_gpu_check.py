"""The GPU check (``python -m bench.gpu_check``) without a GPU: its plan, its no-GPU exit, the
pytest runner under a time limit, and the measured section of bench/RESULTS.md (rendered from
fake measurements, swapped in without touching the rest of the file, idempotently)."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from bench import gpu, gpu_check, measured
from bench.gpu import Row
from bench.measured import BEGIN, END, GpuRun, render, replace_section, write_section
from bench.proof.bytes_model import bytes_moved
from bench.pytest_run import CUT_SHORT, FINISHED, NOT_RUN, Suite, SuiteResult, run_suite


def _row(mode: str, cols: int, provider: str, ms: float, dtype: str = "bf16") -> Row:
    rows = gpu.rows_for(cols, gpu.DTYPES[dtype])
    gbps = gpu.minimum_bytes(mode, rows, cols, gpu.DTYPES[dtype]) / (ms * 1e-3) / 1e9
    return Row(
        "Fake GPU", "2.x", "3.x", "abc1234", "now", mode, dtype, rows, cols, provider, ms, ms, ms,
        gbps, gbps * 1e9 / 3e12,
    )  # fmt: skip


def _run(**overrides) -> GpuRun:
    run = GpuRun(
        gpu="Fake GPU",
        date="2030-01-02 03:04 UTC",
        versions="torch 2.x (CUDA 12.8), triton 3.x",
        commit="abc1234",
        budget_s=540,
        elapsed_s=321,
        finished=True,
        copy_bandwidth=3e12,
        suites=[
            SuiteResult(
                "gpu-marked tests", "python -m pytest -m gpu", FINISHED, 50, 0, 0, 2, 60, 0
            ),
            SuiteResult("kernel tests", "python -m pytest tests/test_kernels.py"),
        ],
        rows=[
            _row("fwd", 4096, gpu.OURS, 0.100),
            _row("fwd", 4096, "torch", 0.150),
            _row("bwd", 4096, gpu.OURS, 0.200),
            _row("bwd", 4096, "torch", 0.500),
            _row("bwd", 4096, "torch.compile", 0.300),
        ],
        planned=["bf16 N=4096", "bf16 N=262144"],
        not_run=["bf16 N=262144"],
        training=[(1024, 2.0, 1.6)],
    )
    for name, value in overrides.items():
        setattr(run, name, value)
    return run


def test_section_puts_measurements_next_to_the_byte_models_prediction():
    section = render(_run())
    lines = section.splitlines()
    assert lines[0] == BEGIN and lines[-1] == END
    assert "**Measured on a GPU: Fake GPU, 2030-01-02 03:04 UTC**" in section
    assert "complete: 1 of 2 benchmark cases measured" in section
    assert "left out for the time budget: bf16 N=262144" in section
    predicted_us = bytes_moved("fwd", 16384, 4096, 2).total / 3e12 * 1e6
    forward = next(line for line in lines if line.startswith("| 4096 | 16384 | forward |"))
    cells = [c.strip() for c in forward.strip("|").split("|")]
    # N, rows, pass, predicted, ours, measured / predicted, GB/s (of copy), torch, torch.compile
    assert cells[3] == f"{predicted_us:.1f} us"
    assert cells[4] == "100.0 us"
    assert cells[5] == f"{100 / predicted_us:.2f}x"
    assert cells[7] == "150.0 us (1.50x)" and cells[8] == "-"
    backward = next(line for line in lines if line.startswith("| 4096 | 16384 | backward |"))
    assert "500.0 us (2.50x)" in backward and "300.0 us (1.50x)" in backward
    assert (
        "| gpu-marked tests | `python -m pytest -m gpu` | 50 passed, 2 skipped | 60 s | passed |"
        in (section)
    )
    assert f"| kernel tests | `python -m pytest tests/test_kernels.py` | {NOT_RUN} |" in section
    assert "| 1024 | 2.000 ms | 1.600 ms | 1.250x |" in section


def test_an_unfinished_run_says_so_and_a_failed_suite_is_named():
    failed = SuiteResult(
        "gpu-marked tests", "python -m pytest -m gpu", CUT_SHORT, 3, 1, 0, 0, 200, 2,
        ["tests/test_large.py::test_big"],
    )  # fmt: skip
    section = render(_run(finished=False, stopped="terminated", suites=[failed]))
    assert "**incomplete**: the run stopped before its end (terminated)" in section
    assert "FAILED (cut short at the time limit)" in section
    assert "`tests/test_large.py::test_big`" in section


TEXT = textwrap.dedent(
    """\
    # Results

    - intro: the GPU figures below are predictions

    {section}

    **Byte model: predicted H100 time**

    | N | time |
    |---|---|
    | 4096 | 89.5 us |
    """
)


def test_replace_section_changes_only_the_section_and_is_idempotent():
    text = TEXT.format(section=measured.placeholder())
    once = replace_section(text, render(_run()))
    assert replace_section(once, render(_run())) == once
    assert replace_section(replace_section(once, measured.placeholder()), render(_run())) == once
    assert replace_section(once, measured.placeholder()) == text
    outside = [line for line in text.splitlines() if line not in measured.placeholder()]
    assert [line for line in once.splitlines() if line in outside] == outside


def test_replace_section_inserts_before_the_first_table_and_rejects_broken_markers():
    bare = TEXT.format(section="")
    inserted = replace_section(bare, measured.placeholder())
    lines = inserted.splitlines()
    assert lines.index(END) + 2 == lines.index("**Byte model: predicted H100 time**")
    assert replace_section(inserted, measured.placeholder()) == inserted
    for broken in (f"{BEGIN}\n{BEGIN}\n{END}\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n"):
        with pytest.raises(ValueError, match="begin markers on lines"):
            replace_section(broken, measured.placeholder())


def test_write_section_keeps_the_file_mode(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(TEXT.format(section=measured.placeholder()))
    path.chmod(0o644)
    write_section(path, render(_run()))
    assert "Fake GPU" in path.read_text() and (path.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]


def test_results_md_says_its_gpu_figures_are_predictions_until_measured():
    text = gpu_check.RESULTS.read_text()
    begin, end = text.index(BEGIN), text.index(END)
    assert text.count(BEGIN) == text.count(END) == 1 and begin < end
    section = text[begin : end + len(END)]
    if "Measured on a GPU: not yet" in section:
        assert section == measured.placeholder()
        assert "every GPU time in this file is a prediction" in section
        assert "GPU figures are predictions" in text[:begin]
    else:
        assert "Measured here, predicted elsewhere" in section


def test_without_a_gpu_it_says_so_and_leaves_results_alone(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    results = tmp_path / "RESULTS.md"
    results.write_text(TEXT.format(section=measured.placeholder()))
    before = results.read_bytes(), os.stat(results).st_mtime_ns
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--results", str(results), "--save-path", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("No GPU:") and "left as it is" in err and "Traceback" not in err
    assert (results.read_bytes(), os.stat(results).st_mtime_ns) == before
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_pytest_commands_and_the_benchmark_in_under_10_minutes(capsys):
    gpu_check.main(["--dry-run"])
    out = capsys.readouterr().out
    gpu_suite = gpu_check.SUITES[0]
    assert gpu_suite.args[-2:] == ("-m", "gpu")
    assert gpu_suite.argv(Path("x.xml"))[1:] == [
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "--junitxml=x.xml",
    ]  # fmt: skip
    for suite in gpu_check.SUITES:
        assert f": {suite.command}  (" in out
    for dtype, cols in gpu_check.BENCH_CASES:
        rows = gpu.rows_for(cols, gpu.DTYPES[dtype])
        assert f"   {dtype} N={cols} ({rows} rows): about" in out
    assert "forward, backward; layernorm_gpu, torch, torch.compile" in out
    plan = gpu_check.make_plan(gpu_check._parser().parse_args([]), [gpu.OURS, "torch"])
    tests, bench = plan.estimate()
    assert tests + bench <= gpu_check.BUDGET_S
    assert gpu_check.BUDGET_S + gpu_check.GRACE_S + 30 <= 600


DEMO_TESTS = """
import time

import pytest


def test_passes():
    pass


def test_fails():
    assert 1 == 2


def test_skips():
    pytest.skip("no GPU")


def test_z_sleeps():
    time.sleep({sleep})
"""


@pytest.mark.parametrize("sleep, timeout, status", [(0, 60, FINISHED), (60, 5, CUT_SHORT)])
def test_run_suite_counts_tests_and_stops_at_its_time_limit(
    monkeypatch, tmp_path, sleep, timeout, status
):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the child starts in 0.5 s, not 5
    (tmp_path / "test_demo.py").write_text(DEMO_TESTS.replace("{sleep}", str(sleep)))
    suite = Suite("demo tests", ("-q", "-p", "no:cacheprovider", "test_demo.py"))
    ticks: list[float] = []
    result = run_suite(suite, timeout, tmp_path / "out", tmp_path, on_tick=ticks.append)
    assert result.status == status and not result.ok
    assert (result.passed, result.failed, result.skipped) == (1 + (sleep == 0), 1, 1)
    assert result.failures == ["test_demo.py::test_fails"]
    assert result.log.read_text() and (tmp_path / "out" / "demo_tests.xml").exists()
    assert result.seconds < timeout + 20 and ticks == sorted(ticks)


@pytest.fixture
def fake_gpu(monkeypatch) -> list[tuple[str, int]]:
    """The GPU check's GPU work replaced by fakes (a sweep that returns 0.1 ms for every
    provider and pass, and stops the run at a case whose width is 16384); the cases it ran."""
    calls = []

    def sweep(providers, modes, dtypes, hidden, copy_bw, step):
        calls.append((dtypes[0], hidden[0]))
        if hidden[0] == 16384:
            raise gpu_check.Stopped("terminated")
        return [_row(m, hidden[0], p.name, 0.1, dtypes[0]) for p in providers for m in modes]

    monkeypatch.setattr(gpu, "_environment", lambda: {"gpu": "Fake GPU", "commit": "abc1234"})
    monkeypatch.setattr(gpu_check, "_versions", lambda: "torch 2.x, triton 3.x")
    monkeypatch.setattr(gpu, "copy_bandwidth", lambda: 3e12)
    monkeypatch.setattr(gpu, "run_sweep", sweep)
    monkeypatch.setattr(gpu_check, "_can_plot", lambda record: False)
    return calls


def _plan(*args: str) -> gpu_check.Plan:
    return gpu_check.make_plan(
        gpu_check._parser().parse_args(["--no-tests", "--no-train", *args]), [gpu.OURS, "torch"]
    )


def test_a_run_cut_short_leaves_what_it_measured(fake_gpu, tmp_path):
    """The benchmark is stopped in its second case: the section holds the first, marked
    incomplete, and the CSV has its rows."""
    results = tmp_path / "RESULTS.md"
    results.write_text(TEXT.format(section=measured.placeholder()))
    plan = _plan()
    assert gpu_check.run(plan, results, tmp_path / "out") == 1
    assert fake_gpu == list(gpu_check.BENCH_CASES[:2])
    text = results.read_text()
    assert "**incomplete**: the run stopped before its end (terminated)" in text
    assert "| 4096 | 16384 | forward |" in text and "| 16384 | 8192 |" not in text
    assert replace_section(text, measured.placeholder()) == TEXT.format(
        section=measured.placeholder()
    )
    (csv_path,) = (tmp_path / "out").glob("gpu_check_*/benchmark.csv")
    assert len(csv_path.read_text().splitlines()) == 1 + 2 * len(plan.modes)


def test_cases_past_the_budget_are_left_out_and_listed(fake_gpu, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text(TEXT.format(section=measured.placeholder()))
    plan = _plan("--budget", str(gpu_check.OURS_COMPILE_S))
    assert plan.case_seconds() > plan.budget_s
    assert gpu_check.run(plan, results, tmp_path / "out") == 0 and fake_gpu == []
    names = ", ".join(gpu_check.case_name(*c) for c in gpu_check.BENCH_CASES)
    assert f"complete: 0 of {len(names.split(', '))} benchmark cases measured" in (
        results.read_text()
    )
    assert f"left out for the time budget: {names}." in results.read_text()


def test_the_watchdog_stops_the_run_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    with pytest.raises(gpu_check.Stopped, match="past the time budget"):
        with gpu_check._watchdog(1):
            time.sleep(10)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)) == before
