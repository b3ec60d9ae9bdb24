"""CPU figures: the speed of the CPU fallback (layernorm_gpu's exact torch reference, which CPU
tensors get by default) against ``torch.nn.functional.layer_norm``, and the accuracy of the
Triton kernels, run in Triton's interpreter, against float64.

Timing on a machine that may be busy: the reference and torch are timed back to back in pairs
(alternating which goes first), so that load on the machine hits both sides of a pair alike,
and the figure is the median of the paired ratios with their spread (the middle half). A
verdict needs that whole middle half on one side of the target and a machine that was not busy
while timing; otherwise the target is "not judged", not missed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import layernorm_gpu

from .tables import Table
from .verdicts import MET, MISSED, NOT_JUDGED, Outcome, judge

TIMING_SHAPE = (4096, 4096)
TARGET_RATIO = 2.0
PAIRS = 9
# torch.testing.assert_close's default (rtol, atol) per dtype (its documentation's table).
ASSERT_CLOSE_DEFAULTS = {
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class PairedTiming:
    """Seconds per call of the reference and of torch, timed in pairs."""

    reference: list[float]
    torch: list[float]

    @property
    def ratios(self) -> list[float]:
        return [r / t for r, t in zip(self.reference, self.torch, strict=True)]

    def quartiles(self) -> tuple[float, float, float]:
        """(first quartile, median, third quartile) of the paired ratios."""
        q1, median, q3 = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q1, median, q3


def time_pairs(
    reference: Callable[[], object],
    baseline: Callable[[], object],
    pairs: int = PAIRS,
    on_pair: Callable[[], None] = lambda: None,
) -> PairedTiming:
    """Time ``reference`` and ``baseline`` once each per pair, ``pairs`` times, after one
    warm-up call each, alternating which goes first.

    One call per sample, timed with ``time.perf_counter``: ``torch.utils.benchmark.Timer``
    would fit, but its ``timeit`` makes two warm-up calls before every measurement, which
    triples the cost of single-call samples of a 4096 x 4096 backward."""
    fns = {"reference": reference, "torch": baseline}
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(pairs):
        order = ("reference", "torch") if i % 2 == 0 else ("torch", "reference")
        for name in order:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
        on_pair()
    return PairedTiming(samples["reference"], samples["torch"])


def machine_busy(threads: int) -> str | None:
    """Why the machine counts as busy (its 1-minute load average above the threads this
    process times with, plus one), or None (idle enough, or no load average on this OS)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    if load <= threads + 1:
        return None
    return f"busy machine: load average {load:.1f} on {os.cpu_count()} cores"


def timing_verdict(timing: PairedTiming, target: float, busy: str | None) -> tuple[str, str]:
    """(verdict, why) of ``ratio <= target`` from the spread of the paired ratios."""
    q1, _, q3 = timing.quartiles()
    if busy:
        return NOT_JUDGED, busy
    if q3 <= target:
        return MET, ""
    if q1 > target:
        return MISSED, ""
    return NOT_JUDGED, f"the spread {q1:.2f}-{q3:.2f}x straddles {target:g}x"


def _layer_norms(backend: str | None) -> Callable[..., torch.Tensor]:
    if backend is None:
        return F.layer_norm
    return lambda x, shape, w, b: layernorm_gpu.layer_norm(x, shape, w, b, backend=backend)


def timing_table(
    shape: tuple[int, int] = TIMING_SHAPE,
    pairs: int = PAIRS,
    on_pair: Callable[[], None] = lambda: None,
) -> tuple[Table, list[Outcome]]:
    """Reference vs ``torch.nn.functional.layer_norm`` on CPU, float32, forward and
    forward+backward, against :data:`TARGET_RATIO`. ``on_pair`` is called after each pair
    (``2 * pairs`` calls in all)."""
    generator = torch.Generator().manual_seed(0)
    rows, cols = shape
    x = torch.randn(rows, cols, generator=generator)
    weight = torch.randn(cols, generator=generator)
    bias = torch.randn(cols, generator=generator)
    dy = torch.randn(rows, cols, generator=generator)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]

    def forward(norm):
        def run():
            with torch.no_grad():
                return norm(x, (cols,), weight, bias)

        return run

    def forward_backward(norm):
        def run():
            for leaf in leaves:
                leaf.grad = None
            norm(leaves[0], (cols,), leaves[1], leaves[2]).backward(dy)

        return run

    threads = torch.get_num_threads()
    table = Table(
        f"CPU fallback speed: the reference vs torch.nn.functional.layer_norm, fp32 "
        f"{rows} × {cols}, {threads} threads",
        ["pass", "reference", "torch", "ratio (spread)", "target", "verdict"],
    )
    outcomes = []
    for name, make in (("forward", forward), ("forward + backward", forward_backward)):
        timing = time_pairs(
            make(_layer_norms("reference")), make(_layer_norms(None)), pairs, on_pair
        )
        q1, ratio, q3 = timing.quartiles()
        verdict, why = timing_verdict(timing, TARGET_RATIO, machine_busy(threads))
        outcome = Outcome(
            f"CPU fallback speed, {name}",
            f"within {TARGET_RATIO:g}x of torch",
            f"{ratio:.2f}x ({q1:.2f}-{q3:.2f})",
            verdict,
            why,
        )
        outcomes.append(outcome)
        table.add(
            name,
            f"{statistics.median(timing.reference) * 1e3:.0f} ms",
            f"{statistics.median(timing.torch) * 1e3:.0f} ms",
            f"{ratio:.2f}x ({q1:.2f}-{q3:.2f})",
            f"≤ {TARGET_RATIO:g}x",
            outcome.verdict_text(),
        )
    table.notes += [
        "The reference is layernorm_gpu's exact torch implementation, what CPU tensors run by "
        "default (backend='auto'). Times: medians per call.",
        f"ratio: the median of {pairs} paired ratios (reference and torch timed back to back, "
        "alternating which goes first, so load on the machine hits both); in brackets the "
        "middle half of the ratios. A verdict needs that whole spread on "
        f"one side of the target and a machine that is not busy (1-minute load average at most "
        f"the {threads} threads timed + 1); otherwise 'not judged': rerun on an idle machine.",
    ]
    return table, outcomes


def _share_of_tolerance(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / (atol + rtol |expected|) at assert_close's defaults for
    ``actual``'s dtype: at most 1 passes ``torch.testing.assert_close``."""
    rtol, atol = ASSERT_CLOSE_DEFAULTS[actual.dtype]
    error = (actual.double() - expected).abs()
    return (error / (atol + rtol * expected.abs())).max().item()


def accuracy_table(rows: int = 37, cols: int = 1000) -> tuple[Table, Outcome]:
    """The Triton kernels (interpreted) against float64 autograd of the same rounded inputs:
    max |error| of y, dx, dweight, dbias per dtype, as a share of assert_close's tolerance."""
    table = Table(
        f"Accuracy of the Triton kernels (in the interpreter) against float64, LayerNorm "
        f"{rows} × {cols}",
        ["dtype", "y", "dx", "dweight", "dbias", "verdict"],
    )
    generator = torch.Generator().manual_seed(0)
    worst: dict[str, float] = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        base = [
            3.0 + torch.randn(rows, cols, generator=generator),
            torch.randn(cols, generator=generator),
            torch.randn(cols, generator=generator),
        ]
        dy = torch.randn(rows, cols, generator=generator).to(dtype)
        ours = [t.to(dtype).clone().requires_grad_() for t in base]
        oracle = [t.to(dtype).double().requires_grad_() for t in base]
        y = layernorm_gpu.layer_norm(*ours[:1], (cols,), *ours[1:], backend="triton")
        y.backward(dy)
        y64 = F.layer_norm(oracle[0], (cols,), oracle[1], oracle[2])
        y64.backward(dy.double())
        pairs = [(y, y64)] + [(a.grad, b.grad) for a, b in zip(ours, oracle, strict=True)]
        shares = [_share_of_tolerance(a, b) for a, b in pairs]
        errors = [(a.double() - b).abs().max().item() for a, b in pairs]
        worst[SHORT[dtype]] = max(shares)
        table.add(
            SHORT[dtype],
            *(f"{e:.1e} ({s:.0%})" for e, s in zip(errors, shares, strict=True)),
            judge(max(shares) <= 1),
        )
    rtol, atol = ASSERT_CLOSE_DEFAULTS[torch.bfloat16]
    table.notes += [
        "Each cell: the largest |error| against float64 autograd on the same rounded inputs, and "
        "in brackets how much of torch.testing.assert_close's default tolerance for the dtype it "
        f"uses, element by element (bf16: rtol {rtol:g}, atol {atol:g}); the target is at most "
        "100%. Inputs have a non-zero mean (offset by 3); errors include the final rounding to "
        "the dtype.",
        "bf16: Triton's interpreter rounds float32 to bf16 toward zero (up to one bf16 step); "
        "compiled kernels round to nearest (at most half a step).",
    ]
    outcome = Outcome(
        "Kernel accuracy, fp32/fp16/bf16",
        "within torch.testing.assert_close's default tolerance",
        ", ".join(f"{k} {v:.0%}" for k, v in worst.items()) + " of it",
        judge(max(worst.values()) <= 1),
    )
    return table, outcome
