"""Property test: random shapes, layouts, dtypes, affine flags and eps, both backends, against
float64 torch.nn.functional.layer_norm / rms_norm (y, dx, dW, dB).

Error bound per output: at most twice PyTorch's own error at the same dtype (its CPU kernel on
the same inputs, against the same float64 oracle; zero where torch's result is NaN and ours
must not be) plus the helpers tolerance of the output dtype, whose atol grows with sqrt(rows)
for the column sums dW and dB. Examples are derandomized so CI is reproducible; raise
``LAYERNORM_GPU_HYPOTHESIS_EXAMPLES`` to explore more.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import layernorm_gpu as lg
from helpers import KERNEL_DEVICE, tolerance

EXAMPLES = int(os.environ.get("LAYERNORM_GPU_HYPOTHESIS_EXAMPLES", "40"))
LAYOUTS = ("contiguous", "sliced rows", "strided rows", "transposed leading dims")


@st.composite
def cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    norm = tuple(draw(st.lists(st.integers(1, 24), min_size=1, max_size=2)))
    return {
        "lead": lead,
        "norm": norm,
        "dtype": draw(st.sampled_from((torch.float32, torch.float16, torch.bfloat16))),
        "is_rms": draw(st.booleans()),
        "weight": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "eps": draw(st.sampled_from((1e-5, 1e-6, 1e-12, 0.1))),
        "layout": draw(st.sampled_from(LAYOUTS)),
        "offset": draw(st.sampled_from((0.0, 3.0, -50.0))),
    }


def _make_x(case, device):
    lead, norm, dtype = case["lead"], case["norm"], case["dtype"]

    def full(shape):
        return (case["offset"] + torch.randn(shape, dtype=torch.float64)).to(dtype)

    if case["layout"] == "sliced rows":
        x = full((*lead, *norm[:-1], norm[-1] + 3))[..., : norm[-1]]
        if len(norm) > 1:  # a sliced last dim breaks row contiguity: that layout copies
            x = x.contiguous()
    elif case["layout"] == "strided rows":
        x = full((2 * lead[0], *lead[1:], *norm))[::2]
    elif case["layout"] == "transposed leading dims" and len(lead) > 1:
        x = full((lead[1], lead[0], *lead[2:], *norm)).transpose(0, 1)
    else:
        x = full((*lead, *norm))
    return x.to(device)


def _max_err(t, ref):
    if t.numel() == 0:
        return 0.0
    return (t.double().cpu() - ref).abs().max().item()


def _check(case, backend, device):
    norm, dtype, eps = case["norm"], case["dtype"], case["eps"]
    x = _make_x(case, device).requires_grad_()
    param_dtype = dtype
    weight = torch.randn(norm, dtype=torch.float64).to(param_dtype).to(device)
    bias = torch.randn(norm, dtype=torch.float64).to(param_dtype).to(device)
    weight = weight.requires_grad_() if case["weight"] else None
    bias = bias.requires_grad_() if case["bias"] and not case["is_rms"] else None
    dy = torch.randn(x.shape, dtype=torch.float64).to(dtype).to(device)

    def run(fn, inputs):
        y = fn(*inputs)
        return [
            y,
            *torch.autograd.grad(
                y, [t for t in inputs if t is not None], dy.to(y.dtype).to(y.device)
            ),
        ]

    if case["is_rms"]:

        def ours(a, w, b):
            return lg.rms_norm(a, norm, w, eps, backend=backend)

        def torchs(a, w, b):
            return F.rms_norm(a, norm, w, eps)
    else:

        def ours(a, w, b):
            return lg.layer_norm(a, norm, w, b, eps, backend=backend)

        def torchs(a, w, b):
            return F.layer_norm(a, norm, w, b, eps)

    got = run(ours, (x, weight, bias))
    cpu = [None if t is None else t.detach().cpu().requires_grad_() for t in (x, weight, bias)]
    torch_out = run(torchs, cpu)
    f64 = [
        None if t is None else t.detach().double().cpu().requires_grad_() for t in (x, weight, bias)
    ]
    oracle = run(torchs, f64)
    rows = x.numel() // max(1, math.prod(norm))
    names = ["y", "dx"] + ["dweight"] * (weight is not None) + ["dbias"] * (bias is not None)
    reductions = [1, 1, rows, rows]
    for name, g, t, o, red in zip(
        names, got, torch_out, oracle, reductions[: len(names)], strict=True
    ):
        atol, rtol = tolerance(g.dtype, red)
        scale = _max_err(torch.zeros_like(o), o.detach())
        torch_err = _max_err(t, o.detach())
        if math.isnan(torch_err):  # e.g. float16 N=1, eps=1e-12: torch's rstd overflows
            torch_err = 0.0
        bound = 2 * torch_err + atol + rtol * scale
        err = _max_err(g.detach(), o.detach())
        assert err <= bound, (name, err, bound, case)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(case=cases())
def test_reference_backend(case):
    _check(case, "reference", torch.device("cpu"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(case=cases())
def test_triton_backend(case):
    _check(case, "triton", KERNEL_DEVICE)
