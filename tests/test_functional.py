"""The public functional API on both backends: PyTorch's contract, edge values, errors,
autograd, determinism and backend choice."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import layernorm_gpu as lg
from helpers import KERNEL_DEVICE, assert_chained_close, assert_close, make_input
from layernorm_gpu import dispatch

# the reference on CPU; the kernels on CUDA or in the interpreter
BACKENDS = [("reference", torch.device("cpu")), ("triton", KERNEL_DEVICE)]


@pytest.fixture(params=BACKENDS, ids=[b for b, _ in BACKENDS])
def backend(request):
    return request.param


def _grads(fn, inputs, dy):
    """fn(*inputs) and the gradients of <fn(...), dy> w.r.t. the inputs that require grad."""
    y = fn(*inputs)
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    return y, torch.autograd.grad(y, leaves, dy) if leaves else ()


def _leaf(t, requires_grad=True):
    return None if t is None else t.detach().clone().requires_grad_(requires_grad)


def _oracle_layer_norm(x, shape, weight, bias, eps, dy):
    """float64 torch.nn.functional.layer_norm and its gradients, on the same inputs."""
    inputs = [
        _leaf(t.double().cpu() if t is not None else None, t is not None and t.requires_grad)
        for t in (x, weight, bias)
    ]
    return _grads(lambda a, b, c: F.layer_norm(a, shape, b, c, eps), inputs, dy.double().cpu())


# ---------------------------------------------------------------- parity with torch


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("shape,normalized_shape", [((2, 3, 40), (40,)), ((2, 3, 4, 10), (4, 10))])
def test_layer_norm_matches_torch(backend, dtype, shape, normalized_shape):
    name, device = backend
    x = make_input(shape, dtype, device, requires_grad=True)
    weight = make_input(normalized_shape, dtype, device, requires_grad=True)
    bias = make_input(normalized_shape, dtype, device, requires_grad=True)
    dy = make_input(shape, dtype, device)
    y, grads = _grads(
        lambda a, b, c: lg.layer_norm(a, normalized_shape, b, c, backend=name),
        (x, weight, bias),
        dy,
    )
    y64, grads64 = _oracle_layer_norm(x, normalized_shape, weight, bias, 1e-5, dy)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert_close(y.cpu(), y64)
    rows = x.numel() // weight.numel()
    for g, g64, reduction in zip(grads, grads64, (1, rows, rows), strict=True):
        assert g.dtype == dtype
        assert_close(g.cpu(), g64, reduction=reduction)


def test_gradcheck_float64_through_the_api():
    x = make_input((3, 2, 5), torch.float64, "cpu", requires_grad=True)
    r = make_input((3, 2, 5), torch.float64, "cpu", requires_grad=True)
    w = make_input((2, 5), torch.float64, "cpu", requires_grad=True)
    b = make_input((2, 5), torch.float64, "cpu", requires_grad=True)
    functions = [
        (lambda x, w, b: lg.layer_norm(x, (2, 5), w, b), (x, w, b)),
        (lambda x, w: lg.rms_norm(x, (5,), w[0]), (x, w)),
        (lambda x, r, w, b: lg.fused_add_layer_norm(x, r, (2, 5), w, b), (x, r, w, b)),
        (lambda x, r, w: lg.fused_add_rms_norm(x, r, (2, 5), w, weight_offset=1.0), (x, r, w)),
    ]
    for fn, inputs in functions:
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_create_graph_gives_exact_second_derivatives(backend):
    """Double backward runs the differentiable reference on both backends."""
    name, device = backend
    x = make_input((4, 16), torch.float32, device, requires_grad=True)
    w = make_input(16, torch.float32, device, requires_grad=True)
    dy = make_input((4, 16), torch.float32, device)
    (dx,) = torch.autograd.grad(lg.layer_norm(x, 16, w, backend=name), x, dy, create_graph=True)
    second = torch.autograd.grad(dx.square().sum(), [x, w])
    x64, w64 = _leaf(x.double().cpu()), _leaf(w.double().cpu())
    (dx64,) = torch.autograd.grad(
        F.layer_norm(x64, (16,), w64), x64, dy.double().cpu(), create_graph=True
    )
    second64 = torch.autograd.grad(dx64.square().sum(), [x64, w64])
    for g, g64 in zip(second, second64, strict=True):
        assert_chained_close(g, g64, "second_order")


@pytest.mark.parametrize(
    "needs",
    [
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (False, True, True),
        (True, True, True),
    ],
)
def test_any_subset_of_inputs_requires_grad(backend, needs):
    name, device = backend
    x, w, b = (make_input(s, torch.float32, device) for s in ((5, 24), 24, 24))
    x, w, b = (t.requires_grad_(n) for t, n in zip((x, w, b), needs, strict=True))
    dy = make_input((5, 24), torch.float32, device)
    y, grads = _grads(lambda a, c, d: lg.layer_norm(a, 24, c, d, backend=name), (x, w, b), dy)
    _, grads64 = _oracle_layer_norm(x, (24,), w, b, 1e-5, dy)
    assert len(grads) == sum(needs)
    for g, g64 in zip(grads, grads64, strict=True):
        assert_close(g.cpu(), g64, reduction=5)


def test_no_grad_and_inference_mode(backend):
    name, device = backend
    x = make_input((3, 8), torch.float32, device, requires_grad=True)
    w = make_input(8, torch.float32, device, requires_grad=True)
    expected = F.layer_norm(x.detach().double().cpu(), (8,), w.detach().double().cpu())
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            y = lg.layer_norm(x, 8, w, backend=name)
        assert y.grad_fn is None and not y.requires_grad
        assert_close(y.cpu(), expected)


def test_retain_graph_backward_twice_accumulates(backend):
    name, device = backend
    x = make_input((3, 8), torch.float32, device, requires_grad=True)
    y = lg.layer_norm(x, 8, backend=name)
    dy = make_input((3, 8), torch.float32, device)
    y.backward(dy, retain_graph=True)
    once = x.grad.clone()
    y.backward(dy)
    assert torch.equal(x.grad, 2 * once)


@pytest.mark.parametrize("make_dy", ["sum", "scaled mean", "sliced"])
def test_expanded_and_non_contiguous_dy(backend, make_dy):
    name, device = backend
    x = make_input((6, 10), torch.float32, device, requires_grad=True)
    w = make_input(10, torch.float32, device, requires_grad=True)
    losses = {
        "sum": lambda y: y.sum(),
        "scaled mean": lambda y: (y * 3.0).mean(),
        "sliced": lambda y: (y[:, ::2] * torch.arange(5, dtype=y.dtype, device=y.device)).sum(),
    }
    x64, w64 = _leaf(x.double().cpu()), _leaf(w.double().cpu())
    losses[make_dy](lg.layer_norm(x, 10, w, backend=name)).backward()
    losses[make_dy](F.layer_norm(x64, (10,), w64)).backward()
    assert_close(x.grad.cpu(), x64.grad)
    assert_close(w.grad.cpu(), w64.grad, reduction=6)


def test_non_contiguous_parameters_and_inputs_unchanged(backend):
    name, device = backend
    x = make_input((8, 12), torch.float32, device, requires_grad=True)
    w = make_input(24, torch.float32, device)[::2].requires_grad_()
    b = make_input((12, 2), torch.float32, device)[:, 1].requires_grad_()
    saved = [t.detach().clone() for t in (x, w, b)]
    dy = make_input((8, 12), torch.float32, device)
    y, grads = _grads(lambda a, c, d: lg.layer_norm(a, 12, c, d, backend=name), (x, w, b), dy)
    _, grads64 = _oracle_layer_norm(x, (12,), w, b, 1e-5, dy)
    for g, g64 in zip(grads, grads64, strict=True):
        assert_close(g.cpu(), g64, reduction=8)
    for t, s in zip((x, w, b), saved, strict=True):
        assert torch.equal(t.detach(), s)


# ---------------------------------------------------------------- edge values


def test_zero_rows(backend):
    name, device = backend
    x = make_input((0, 7), torch.float32, device, requires_grad=True)
    w = make_input(7, torch.float32, device, requires_grad=True)
    b = make_input(7, torch.float32, device, requires_grad=True)
    y = lg.layer_norm(x, 7, w, b, backend=name)
    assert y.shape == (0, 7)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == (0, 7)


def test_zero_size_normalized_shape(backend):
    name, device = backend
    # 20 rows: more than one of the reference's 16-row column-sum chunks
    x = make_input((20, 3, 0), torch.float32, device, requires_grad=True)
    w = make_input((3, 0), torch.float32, device, requires_grad=True)
    y = lg.layer_norm(x, (3, 0), w, backend=name)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
def test_width_one_and_constant_rows_give_exactly_bias(backend, dtype):
    name, device = backend
    for shape in ((5, 1), (5, 300)):
        x = torch.full(shape, 0.1, dtype=dtype, device=device).requires_grad_()
        w = make_input(shape[1], dtype, device, requires_grad=True)
        b = make_input(shape[1], dtype, device, requires_grad=True)
        y = lg.layer_norm(x, shape[1], w, b, backend=name)
        assert torch.equal(y, b.detach().expand(shape))
        y.backward(make_input(shape, dtype, device))
        assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("offset,scale", [(1e4, 1.0), (0.0, 1e15)])
def test_offset_and_huge_inputs_match_float64(backend, offset, scale):
    """Within twice PyTorch's own float32 error (plus a small term) of float64."""
    name, device = backend
    x = make_input((8, 300), torch.float32, device, offset=offset, scale=scale)
    y64 = F.layer_norm(x.double().cpu(), (300,))
    ours = (lg.layer_norm(x, 300, backend=name).double().cpu() - y64).abs().max()
    torchs = (F.layer_norm(x.cpu(), (300,)).double() - y64).abs().max()
    assert ours <= 2 * torchs + 1e-5, (ours, torchs)


def test_all_zero_float16_rows_with_tiny_eps(backend):
    name, device = backend
    x = torch.zeros((3, 64), dtype=torch.float16, device=device, requires_grad=True)
    w = make_input(64, torch.float16, device, requires_grad=True)
    y = lg.layer_norm(x, 64, w, eps=1e-12, backend=name)
    assert torch.equal(y, torch.zeros_like(y))
    dy = make_input((3, 64), torch.float16, device)
    y.backward(dy)
    # float32 formulas: x_hat = 0, rstd = 1e6, dx = rstd * (g - mean(g))
    g = dy.float() * w.detach().float()
    expected = (g - g.mean(1, keepdim=True)) * (1.0 / torch.tensor(1e-12).sqrt())
    assert_close(x.grad.cpu(), expected.double().cpu().to(torch.float16).double())
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_one_row_stays_in_that_row(backend, bad):
    name, device = backend
    x = make_input((5, 32), torch.float32, device)
    clean = lg.layer_norm(x, 32, backend=name)
    x[2, 7] = bad
    y = lg.layer_norm(x, 32, backend=name)
    assert torch.equal(y.isnan().cpu(), F.layer_norm(x.cpu(), (32,)).isnan())
    others = [0, 1, 3, 4]
    assert torch.equal(y[others], clean[others])


@pytest.mark.parametrize("eps", [0.0, -1.0, -1e-9])
def test_zero_and_negative_eps_as_torch(backend, eps):
    name, device = backend
    x = make_input((4, 16), torch.float32, device)
    x[1] = 2.0  # a constant row: var = 0
    y = lg.layer_norm(x, 16, eps=eps, backend=name)
    expected = F.layer_norm(x.cpu().double(), (16,), eps=eps)
    assert torch.equal(y.isnan().cpu(), expected.isnan())
    finite = ~expected.isnan()
    assert_close(y.cpu()[finite], expected[finite])


@pytest.mark.parametrize("x_dtype", (torch.float16, torch.bfloat16))
def test_16bit_x_with_float32_parameters(backend, x_dtype):
    name, device = backend
    x = make_input((6, 20), x_dtype, device, requires_grad=True)
    w = make_input(20, torch.float32, device, requires_grad=True)
    b = make_input(20, torch.float32, device, requires_grad=True)
    dy = make_input((6, 20), x_dtype, device)
    y, (dx, dw, db) = _grads(
        lambda a, c, d: lg.layer_norm(a, 20, c, d, backend=name), (x, w, b), dy
    )
    assert y.dtype == dx.dtype == x_dtype and dw.dtype == db.dtype == torch.float32
    y64, grads64 = _oracle_layer_norm(x, (20,), w, b, 1e-5, dy)
    assert_close(y.cpu(), y64)
    for g, g64, red in zip((dx, dw, db), grads64, (1, 6, 6), strict=True):
        assert_close(g.cpu(), g64, reduction=red)


def test_rms_norm_with_16bit_weight_on_float32_x(backend):
    """torch.nn.functional.rms_norm accepts any float weight; y keeps x's dtype."""
    name, device = backend
    x = make_input((6, 20), torch.float32, device, requires_grad=True)
    w = make_input(20, torch.bfloat16, device, requires_grad=True)
    y = lg.rms_norm(x, 20, w, backend=name)
    y.sum().backward()
    assert y.dtype == torch.float32 and w.grad.dtype == torch.bfloat16
    expected = F.rms_norm(
        x.detach().double().cpu(), (20,), w.detach().double().cpu(), torch.finfo(torch.float32).eps
    )
    assert_close(y.detach().cpu(), expected)


# ---------------------------------------------------------------- fused residual add


@pytest.mark.parametrize("is_rms", (False, True))
@pytest.mark.parametrize(
    "residual_dtype,residual_in_fp32",
    [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)],
)
def test_fused_add_is_the_unfused_code(backend, is_rms, residual_dtype, residual_in_fp32):
    name, device = backend
    x = make_input((6, 40), torch.bfloat16, device, requires_grad=True)
    r = make_input((6, 40), residual_dtype, device, requires_grad=True)
    w = make_input(40, torch.float32, device, requires_grad=True)
    dy, dh = make_input((6, 40), torch.bfloat16, device), None
    if is_rms:
        y, h = lg.fused_add_rms_norm(
            x, r, 40, w, 1e-6, residual_in_fp32=residual_in_fp32, backend=name
        )
    else:
        y, h = lg.fused_add_layer_norm(
            x, r, 40, w, None, residual_in_fp32=residual_in_fp32, backend=name
        )
    h_dtype = torch.float32 if residual_in_fp32 else (x + r).dtype
    assert h.dtype == h_dtype and y.dtype == x.dtype
    assert torch.equal(h, x.detach().to(h_dtype) + r.detach().to(h_dtype))
    dh = make_input((6, 40), h_dtype, device)
    dx, dr, dw = torch.autograd.grad((y, h), (x, r, w), (dy, dh))
    assert dx.dtype == x.dtype and dr.dtype == r.dtype
    # oracle: the unfused code in float64 on the stored h
    h64 = _leaf(h.detach().double().cpu())
    w64 = _leaf(w.detach().double().cpu())
    y64 = F.rms_norm(h64, (40,), w64, 1e-6) if is_rms else F.layer_norm(h64, (40,), w64)
    dh64, dw64 = torch.autograd.grad(y64, (h64, w64), dy.double().cpu())
    dh64 = dh64 + dh.double().cpu()
    assert_close(y.detach().cpu(), y64.detach())
    assert_close(dw.cpu(), dw64, reduction=6)
    # dx and dresidual are dh rounded to each input's dtype
    assert_close(dx.cpu(), dh64)
    assert_close(dr.cpu(), dh64)


@pytest.mark.parametrize("is_rms", (False, True))
@pytest.mark.parametrize("residual_in_fp32", (False, True))
def test_fused_add_without_residual_starts_the_stream_with_x(backend, is_rms, residual_in_fp32):
    """``residual=None`` (a pre-norm stack's first layer, as flash-attention takes it): h is x
    in h's dtype and y normalises it, bitwise the call with a zero residual of x's dtype, and
    the gradients of x through y and h are the same too."""
    name, device = backend
    fused = lg.fused_add_rms_norm if is_rms else lg.fused_add_layer_norm
    x = make_input((6, 40), torch.bfloat16, device)
    w = make_input(40, torch.bfloat16, device)
    dy, dh = make_input((6, 40), torch.bfloat16, device), make_input((6, 40), torch.float32, device)
    outs = {}
    for residual in (None, torch.zeros_like(x)):
        leaf = _leaf(x)
        y, h = fused(leaf, residual, 40, w, residual_in_fp32=residual_in_fp32, backend=name)
        (dx,) = torch.autograd.grad((y, h), (leaf,), (dy, dh.to(h.dtype)))
        outs[residual is None] = (y, h, dx)
    (y, h, dx), zero_residual = outs[True], outs[False]
    assert h.dtype == (torch.float32 if residual_in_fp32 else x.dtype) and y.dtype == x.dtype
    assert torch.equal(h, x.to(h.dtype))
    for ours, theirs in zip((y, h, dx), zero_residual, strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_input_keyword_as_in_torch():
    """torch names the tensor argument of ``F.layer_norm`` / ``F.rms_norm`` and of the modules'
    ``forward`` ``input``: keyword calls written for torch run unchanged."""
    x = make_input((3, 8), torch.float32, "cpu")
    assert torch.equal(lg.layer_norm(input=x, normalized_shape=(8,)), lg.layer_norm(x, (8,)))
    assert torch.equal(lg.rms_norm(input=x, normalized_shape=[8]), lg.rms_norm(x, [8]))
    for module in (lg.LayerNorm(8), lg.RMSNorm(8)):
        assert torch.equal(module(input=x), module(x))


# ---------------------------------------------------------------- determinism


def test_bitwise_deterministic_and_batch_invariant(backend):
    name, device = backend
    x = make_input((40, 96), torch.bfloat16, device, requires_grad=True)
    w = make_input(96, torch.bfloat16, device, requires_grad=True)
    b = make_input(96, torch.bfloat16, device, requires_grad=True)
    dy = make_input((40, 96), torch.bfloat16, device)
    torch.use_deterministic_algorithms(True)
    try:
        runs = [
            _grads(lambda a, c, d: lg.layer_norm(a, 96, c, d, backend=name), (x, w, b), dy)
            for _ in range(2)
        ]
    finally:
        torch.use_deterministic_algorithms(False)
    (y1, g1), (y2, g2) = runs
    assert torch.equal(y1, y2) and all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
    for i in (0, 39):
        xi = x.detach()[i : i + 1].requires_grad_()
        yi, (dxi,) = _grads(
            lambda a: lg.layer_norm(a, 96, w, b, backend=name), (xi,), dy[i : i + 1]
        )
        assert torch.equal(yi, y1[i : i + 1]) and torch.equal(dxi, g1[0][i : i + 1])


# ---------------------------------------------------------------- errors

ERROR_CASES = {
    # case: (call, PyTorch's equivalent or None, exception type, words the message names)
    "normalized_shape not a suffix": (
        lambda: lg.layer_norm(torch.randn(4, 3), (4,)),
        lambda: F.layer_norm(torch.randn(4, 3), (4,)),
        RuntimeError,
        ["normalized_shape"],
    ),
    "empty normalized_shape": (
        lambda: lg.layer_norm(torch.randn(4, 3), ()),
        lambda: F.layer_norm(torch.randn(4, 3), ()),
        RuntimeError,
        ["normalized_shape"],
    ),
    "weight shape": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, torch.ones(4)),
        lambda: F.layer_norm(torch.randn(4, 3), (3,), torch.ones(4)),
        RuntimeError,
        ["weight"],
    ),
    "bias shape": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, torch.ones(3), torch.ones(2)),
        lambda: F.layer_norm(torch.randn(4, 3), (3,), torch.ones(3), torch.ones(2)),
        RuntimeError,
        ["bias"],
    ),
    "integer x": (
        lambda: lg.layer_norm(torch.ones(4, 3, dtype=torch.long), 3),
        lambda: F.layer_norm(torch.ones(4, 3, dtype=torch.long), (3,)),
        NotImplementedError,
        ["x", "int64"],
    ),
    "bool x": (
        lambda: lg.rms_norm(torch.ones(4, 3, dtype=torch.bool), 3),
        lambda: F.layer_norm(torch.ones(4, 3, dtype=torch.bool), (3,)),
        NotImplementedError,
        ["x", "bool"],
    ),
    "complex x": (
        lambda: lg.layer_norm(torch.ones(4, 3, dtype=torch.complex64), 3),
        lambda: F.layer_norm(torch.ones(4, 3, dtype=torch.complex64), (3,)),
        NotImplementedError,
        ["x", "complex64"],
    ),
    "integer weight": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, torch.ones(3, dtype=torch.int32)),
        lambda: F.layer_norm(torch.randn(4, 3), (3,), torch.ones(3, dtype=torch.int32)),
        RuntimeError,
        ["weight", "int32"],
    ),
    "complex bias": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, None, torch.ones(3, dtype=torch.complex64)),
        lambda: F.layer_norm(torch.randn(4, 3), (3,), None, torch.ones(3, dtype=torch.complex64)),
        RuntimeError,
        ["bias", "complex64"],
    ),
    # torch's rms_norm casts an integer weight (with a warning); ours refuses it
    "integer weight of rms_norm": (
        lambda: lg.rms_norm(torch.randn(4, 3), 3, torch.ones(3, dtype=torch.int64)),
        None,
        RuntimeError,
        ["weight", "int64"],
    ),
    "weight on another device": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, torch.ones(3, device="meta")),
        None,
        RuntimeError,
        ["weight", "device", "meta"],
    ),
    "float32 x with bfloat16 weight": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, torch.ones(3, dtype=torch.bfloat16)),
        lambda: F.layer_norm(torch.randn(4, 3), (3,), torch.ones(3, dtype=torch.bfloat16)),
        RuntimeError,
        ["weight", "bfloat16"],
    ),
    "residual shape": (
        lambda: lg.fused_add_layer_norm(torch.randn(4, 3), torch.randn(3), 3),
        None,
        RuntimeError,
        ["residual"],
    ),
    "float64 on the triton backend": (
        lambda: lg.layer_norm(torch.randn(4, 3, dtype=torch.float64), 3, backend="triton"),
        None,
        TypeError,
        ["float64", "reference"],
    ),
    "unknown backend": (
        lambda: lg.layer_norm(torch.randn(4, 3), 3, backend="cuda"),
        None,
        ValueError,
        ["backend", "cuda"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_raises_before_any_launch(case):
    call, torch_call, error, words = ERROR_CASES[case]
    before = dict(dispatch.calls)
    with pytest.raises(error) as info:
        call()
    assert dict(dispatch.calls) == before, "an op ran before the error"
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    if torch_call is not None:
        with pytest.raises(error):
            torch_call()


# ---------------------------------------------------------------- backend choice


def test_auto_runs_the_reference_on_cpu_and_env_var_selects_triton(monkeypatch):
    x = make_input((3, 8), torch.float32, "cpu")
    dispatch.calls.clear()
    lg.layer_norm(x, 8)
    assert dispatch.calls == {"reference": 1}
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    dispatch.calls.clear()
    lg.layer_norm(x, 8)
    assert dispatch.calls == {"triton": 1}
    lg.layer_norm(x, 8, backend="reference")
    assert dispatch.calls == {"triton": 1, "reference": 1}
    monkeypatch.setenv(dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        lg.layer_norm(x, 8)


def test_triton_on_cpu_without_the_interpreter_names_both_remedies(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError) as info:
        lg.layer_norm(torch.randn(3, 8), 8, backend="triton")
    assert "TRITON_INTERPRET=1" in str(info.value) and "backend='reference'" in str(info.value)


def test_auto_sends_float64_to_the_reference():
    dispatch.calls.clear()
    lg.layer_norm(make_input((3, 8), torch.float64, KERNEL_DEVICE), 8, backend="auto")
    assert dispatch.calls == {"reference": 1}


@pytest.mark.parametrize("value", ["", "  ", "Triton", "triton ", " REFERENCE\n"])
def test_env_var_is_case_and_space_insensitive_and_empty_means_auto(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(dispatch.ENV_VAR, value)
    x = make_input((3, 8), torch.float32, "cpu")
    dispatch.calls.clear()
    lg.layer_norm(x, 8)
    expected = value.strip().lower() or "reference"  # auto on a CPU tensor: the reference
    assert dispatch.calls == {expected: 1}


def test_numpy_integer_normalized_shape_is_accepted_like_torch():
    np = pytest.importorskip("numpy")
    x = make_input((3, 2, 4), torch.float32, "cpu")
    for shape in (np.int64(4), [np.int32(2), np.int64(4)], torch.Size([4]), (2, 4)):
        n = len(shape) if hasattr(shape, "__len__") else 1
        expected = F.layer_norm(x.double(), x.shape[x.dim() - n :])
        assert_close(lg.layer_norm(x, shape), expected)
        assert_close(
            lg.rms_norm(x, shape, eps=1e-6), F.rms_norm(x.double(), x.shape[-n:], eps=1e-6)
        )
    ours, theirs = lg.LayerNorm(np.int64(4)), torch.nn.LayerNorm(np.int64(4)).double()
    assert_close(ours(x), theirs(x.double()).detach())
    with pytest.raises(TypeError, match="normalized_shape"):
        lg.layer_norm(x, 4.0)


def test_mixed_dtype_is_checked_inside_the_op_after_autocast():
    """The dtype rule runs in the op (after the dispatcher's autocast has cast the inputs, as
    torch's kernels check), not in the Python wrapper: the error comes from ``norm_fwd``."""
    x, w = make_input((3, 8), torch.float32, "cpu"), make_input(8, torch.bfloat16, "cpu")
    with pytest.raises(RuntimeError, match="mixed dtype") as info:
        lg.layer_norm(x, 8, w)
    assert any(entry.name == "norm_fwd" for entry in info.traceback)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_cuda_autocast_casts_before_checking(backend):
    """float32 x with a bfloat16 weight: torch's layer_norm under CUDA autocast casts both to
    float32 and runs; so do we."""
    x = make_input((3, 8), torch.float32, "cuda", requires_grad=True)
    w = make_input(8, torch.bfloat16, "cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = lg.layer_norm(x, 8, w, backend=backend)
        y_torch = F.layer_norm(x, (8,), w)
    assert y.dtype == y_torch.dtype == torch.float32
    assert_close(y, y_torch.double())
    y.sum().backward()
    assert w.grad.dtype == torch.bfloat16


def test_first_call_does_not_import_dynamo():
    """The ops are defined through torch.library.Library: their first eager call costs
    milliseconds, where a custom_op's would import torch._dynamo (seconds)."""
    code = (
        "import sys, torch, layernorm_gpu as lg\n"
        "x = torch.randn(4, 8, requires_grad=True)\n"
        "lg.layer_norm(x, 8).sum().backward()\n"
        "lg.fused_add_rms_norm(x, x, 8)\n"
        "assert 'torch._dynamo' not in sys.modules, 'first call imported torch._dynamo'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
