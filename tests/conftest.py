"""Shared fixtures, tolerances and helpers.

Kernel tests run on CUDA when there is one, else in Triton's interpreter on CPU tensors;
``TRITON_INTERPRET`` must be set before the kernels are imported (they are imported lazily by
layernorm_gpu, so setting it here, before any test runs, is enough). Tests that need CUDA
itself are marked ``gpu`` and skipped without it.
"""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's on-disk cache can replay a stale graph after a custom op's schema changes.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="layernorm_gpu_inductor_")


def _round_bfloat16_to_nearest_even() -> None:
    """Make the interpreter's float32 -> bfloat16 casts round to nearest even, as GPUs do.

    Triton 3.9's interpreter truncates them (``cast_impl`` passes no rounding mode, and its
    round-to-nearest mode does not carry into the exponent), which is up to one bf16 ulp off
    the hardware result and would make exact checks (h = x + residual rounded once, batch
    invariance against torch's casts) test the interpreter rather than the kernels.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    cast_impl = interpreter.InterpreterBuilder.cast_impl

    def rne_cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.uint16).numpy(), tl.bfloat16)
        return cast_impl(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = rne_cast_impl


if not HAS_CUDA:
    _round_bfloat16_to_nearest_even()

KERNEL_DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (atol, rtol) against a float64 oracle fed the same (already rounded) inputs, keyed by the
# dtype of the tensor compared. rtol: the result is rounded once to that dtype (half an ulp:
# 2**-11 for float16, 2**-8 for bfloat16) after float32 arithmetic; allow two such roundings.
# For float32 outputs the float32 sums themselves set rtol (a few ulps over a row: 1e-6).
# atol: float32 arithmetic error near zero. dx = rstd * (g - mean(g) - x_hat * mean(g x_hat))
# cancels, so its error is absolute, ~eps32 * rstd * |g|: above 1e-5 on short rows with a small
# variance (PyTorch's own float32 CPU kernel errs by 1.6e-5 on 4-wide rows), hence 2e-5.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 1e-6),
    torch.float16: (2e-5, 2**-10),
    torch.bfloat16: (2e-5, 2**-7),
}


def tolerance(dtype: torch.dtype, reduction: int = 1) -> tuple[float, float]:
    """(atol, rtol) for ``dtype``; atol grows with sqrt(reduction) for sums over that many
    rows (dW, dB), the expected growth of the float32 rounding error of a long sum."""
    atol, rtol = TOLERANCES[dtype]
    return atol * math.sqrt(max(reduction, 1)), rtol


def assert_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int = 1,
                 msg: str = "") -> None:
    """``actual`` (any dtype) against a float64 ``expected``, at ``actual``'s tolerance."""
    atol, rtol = tolerance(actual.dtype, reduction)
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol,
                               equal_nan=True, msg=lambda m: f"{msg}\n{m}" if msg else m)


def make_input(shape, dtype, device=KERNEL_DEVICE, *, offset=0.0, scale=1.0,
               requires_grad=False) -> torch.Tensor:
    """Fresh non-zero-mean random input: ``offset + scale * (0.5 + randn)``."""
    t = (offset + scale * (0.5 + torch.randn(shape, dtype=torch.float64))).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


@pytest.fixture
def poison(monkeypatch):
    """Every float tensor torch.empty makes during the test starts as NaN, so an output element
    (or dW/dB partial row) a kernel fails to write shows up as NaN."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", poisoned_empty)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
