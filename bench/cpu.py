"""CPU figures: the reference fallback against PyTorch's own CPU LayerNorm, and the Triton
kernels in the interpreter against a float64 oracle.

Timings are medians of interleaved repetitions (reference, torch, reference, ...) after one
warm-up call each, all in one run, so both sides see the same machine state; the ratio is
reference time over torch time (the issue's target: within 2x).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import layernorm_gpu

from .tables import Table

TIMING_SHAPE = (4096, 4096)
TARGET_RATIO = 2.0


def _median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, measured interleaved."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _layer_norms(backend: str | None) -> Callable[..., torch.Tensor]:
    if backend is None:
        return F.layer_norm
    return lambda x, shape, w, b: layernorm_gpu.layer_norm(x, shape, w, b, backend=backend)


def timing_table(shape: tuple[int, int] = TIMING_SHAPE, repeats: int = 7) -> tuple[Table, bool]:
    """Reference vs ``torch.nn.functional.layer_norm`` on CPU, float32, forward and
    forward+backward; True when both ratios are within :data:`TARGET_RATIO`."""
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

    table = Table(
        f"CPU: reference fallback vs torch.nn.functional.layer_norm, float32 "
        f"{rows}x{cols}, {torch.get_num_threads()} threads",
        ["pass", "reference (ms)", "torch (ms)", "ratio", "target"],
    )
    ok = True
    for name, make in (("forward", forward), ("forward+backward", forward_backward)):
        times = _median_times(
            {"reference": make(_layer_norms("reference")), "torch": make(_layer_norms(None))},
            repeats,
        )
        ratio = times["reference"] / times["torch"]
        met = ratio <= TARGET_RATIO
        ok &= met
        table.add(
            name,
            f"{times['reference'] * 1e3:.1f}",
            f"{times['torch'] * 1e3:.1f}",
            f"{ratio:.2f}",
            f"<= {TARGET_RATIO} {'PASS' if met else 'MISS'}",
        )
    table.notes.append(
        f"median of {repeats} interleaved repetitions after a warm-up call; "
        f"torch {torch.__version__}"
    )
    return table, ok


def interpreter_table(rows: int = 37, cols: int = 1000) -> Table:
    """The Triton kernels (interpreted) against float64 autograd of the same rounded inputs:
    max |error| of y, dx, dweight, dbias per dtype, and that over the largest |value|."""
    table = Table(
        f"Triton kernels in the interpreter vs float64, LayerNorm {rows}x{cols}",
        ["dtype", "y", "dx", "dweight", "dbias"],
    )
    generator = torch.Generator().manual_seed(0)
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
        table.add(
            str(dtype).removeprefix("torch."),
            *(
                f"{(a.double() - b).abs().max().item():.2e} "
                f"({((a.double() - b).abs().max() / b.abs().max()).item():.1e})"
                for a, b in pairs
            ),
        )
    table.notes += [
        "max |error| (max |error| / max |float64 value|); inputs offset by 3 (non-zero mean); "
        "errors include the final rounding to the tensor's dtype",
        "bfloat16: Triton 3.9's interpreter rounds float32 -> bfloat16 toward zero (up to 1 ulp; "
        "the compiled kernels round to nearest even, cvt.rn.bf16x2.f32 in the PTX)",
    ]
    return table
