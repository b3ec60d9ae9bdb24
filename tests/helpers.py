"""What the tests share: the device the kernels run on, the tolerance table and input makers.

Imported as ``helpers`` (``tests/`` is on pytest's ``pythonpath``); fixtures live in
``conftest.py``.
"""

from __future__ import annotations

import math

import torch

HAS_CUDA = torch.cuda.is_available()
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

# Results that chain several float32 steps (atol, rtol), by what is compared:
# * "second_order": double backward differentiates the backward again; its terms carry rstd**2
#   and cancel once more, so the first-order atol (2e-5) grows by about rstd * |dy|: 1e-4.
# * "model": a small float32 model (Linear layers around the norms), compiled against eager:
#   Inductor reorders the Linear layers' sums, a few ulps of each activation that the next
#   layer amplifies by its fan-in: 1e-4.
CHAINED_TOLERANCES: dict[str, tuple[float, float]] = {
    "second_order": (1e-4, 1e-4),
    "model": (1e-4, 1e-4),
}


def tolerance(dtype: torch.dtype, reduction: int = 1) -> tuple[float, float]:
    """(atol, rtol) for ``dtype``; atol grows with sqrt(reduction) for sums over that many
    rows (dW, dB), the expected growth of the float32 rounding error of a long sum."""
    atol, rtol = TOLERANCES[dtype]
    return atol * math.sqrt(max(reduction, 1)), rtol


def assert_chained_close(actual: torch.Tensor, expected: torch.Tensor, kind: str) -> None:
    """float32 ``actual`` against ``expected`` at the :data:`CHAINED_TOLERANCES` of ``kind``."""
    atol, rtol = CHAINED_TOLERANCES[kind]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, reduction: int = 1, msg: str = ""
) -> None:
    """``actual`` (any dtype) against a float64 ``expected``, at ``actual``'s tolerance."""
    atol, rtol = tolerance(actual.dtype, reduction)
    torch.testing.assert_close(
        actual.double(),
        expected.double(),
        atol=atol,
        rtol=rtol,
        equal_nan=True,
        msg=lambda m: f"{msg}\n{m}" if msg else m,
    )


def make_input(
    shape, dtype, device=KERNEL_DEVICE, *, offset=0.0, scale=1.0, requires_grad=False
) -> torch.Tensor:
    """Fresh non-zero-mean random input: ``offset + scale * (0.5 + randn)``."""
    t = (offset + scale * (0.5 + torch.randn(shape, dtype=torch.float64))).to(dtype).to(device)
    return t.requires_grad_(requires_grad)
