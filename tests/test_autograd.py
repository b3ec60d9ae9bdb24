"""Derivatives of every public function under PyTorch's transforms, against the same transform
over torch's own functions in float64.

* ``torch.func``: ``jvp``, ``jacfwd``, ``jacrev``, ``grad``, ``hessian``, ``vmap`` and
  ``vmap(grad)``, and ``torch.autograd.forward_ad``, on both backends (the kernels in float32
  against torch in float64, at the helpers tolerance; the reference in float64, tightly).
* ``vmap`` runs the batch as more rows in one op call (no per-sample fallback).
* Gradients that nobody asked for stay ``None`` exactly where torch's unfused code leaves them
  ``None``, with no backward launched when y does not reach the loss.
"""

from __future__ import annotations

import itertools
import warnings

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import layernorm_gpu as lg
from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import dispatch

BACKENDS = ("reference", "triton")
N = 6


def _setup(backend: str):
    """(device, dtype) the backend runs: the reference in float64, the kernels in float32."""
    if backend == "reference":
        return torch.device("cpu"), torch.float64
    return KERNEL_DEVICE, torch.float32


# (ours, torch's) taking (x, weight, bias, residual); the fused adds return (y, h).
def _pairs(backend: str):
    def ln(x, w, b, r):
        return lg.layer_norm(x, N, w, b, backend=backend)

    def ln_t(x, w, b, r):
        return F.layer_norm(x, (N,), w, b)

    def rms(x, w, b, r):
        return lg.rms_norm(x, N, w, eps=1e-6, backend=backend)

    def rms_t(x, w, b, r):
        return F.rms_norm(x, (N,), w, eps=1e-6)

    def add_ln(x, w, b, r):
        return lg.fused_add_layer_norm(x, r, N, w, b, backend=backend)

    def add_ln_t(x, w, b, r):
        return F.layer_norm(x + r, (N,), w, b), x + r

    def add_rms(x, w, b, r):
        return lg.fused_add_rms_norm(x, r, N, w, eps=1e-6, backend=backend)

    def add_rms_t(x, w, b, r):
        return F.rms_norm(x + r, (N,), w, eps=1e-6), x + r

    return {
        "layer_norm": (ln, ln_t),
        "rms_norm": (rms, rms_t),
        "fused_add_layer_norm": (add_ln, add_ln_t),
        "fused_add_rms_norm": (add_rms, add_rms_t),
    }


def _inputs(shape, device, dtype):
    return tuple(make_input(s, dtype, device) for s in (shape, (N,), (N,), shape))


def _check(ours, theirs, msg=""):
    """Compare nested outputs of a transform: ours (any dtype) against torch's float64."""
    if isinstance(theirs, tuple | list):
        assert isinstance(ours, tuple | list) and len(ours) == len(theirs), msg
        for o, t in zip(ours, theirs, strict=True):
            _check(o, t, msg)
        return
    assert ours.shape == theirs.shape, msg
    assert_close(ours, theirs, msg=msg)


def _f64(args):
    return tuple(a.detach().double().cpu() for a in args)


def _transforms():
    """name -> function of (f, args) applying the transform over all four inputs."""
    argnums = (0, 1, 2, 3)

    def scalar(f):
        def loss(*a):
            out = f(*a)
            out = out if isinstance(out, tuple) else (out,)
            return sum((o.sin() * (k + 1)).sum() for k, o in enumerate(out))

        return loss

    return {
        "jvp": lambda f, a: torch.func.jvp(f, a, tuple(torch.ones_like(t) * 0.3 for t in a)),
        "jacfwd": lambda f, a: torch.func.jacfwd(f, argnums=argnums)(*a),
        "jacrev": lambda f, a: torch.func.jacrev(f, argnums=argnums)(*a),
        "grad": lambda f, a: torch.func.grad(scalar(f), argnums=argnums)(*a),
        "hessian": lambda f, a: torch.func.hessian(scalar(f), argnums=0)(*a),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", list(_pairs("reference")))
@pytest.mark.parametrize("transform", list(_transforms()))
def test_torch_func_transforms_match_torch(backend, fn, transform):
    device, dtype = _setup(backend)
    ours, theirs = _pairs(backend)[fn]
    args = _inputs((2, N), device, dtype)
    apply = _transforms()[transform]
    _check(apply(ours, args), apply(theirs, _f64(args)), f"{transform} of {fn}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", list(_pairs("reference")))
def test_vmap_and_vmap_of_grad_match_torch(backend, fn):
    device, dtype = _setup(backend)
    ours, theirs = _pairs(backend)[fn]
    x, w, b, r = _inputs((5, 3, N), device, dtype)
    batched = (x, w, b, r)
    cases = (
        (batched, (0, None, None, 0)),
        ((x, w, b, r[0]), (0, None, None, None)),
        ((x.movedim(0, 1), w, b, r.movedim(0, 1)), (1, None, None, 1)),
    )
    for args, in_dims in cases:
        got = torch.func.vmap(ours, in_dims)(*args)
        want = torch.func.vmap(theirs, in_dims)(*_f64(args))
        _check(got, want, f"vmap {in_dims}")

    def loss(f):
        def inner(*a):
            out = f(*a)
            return sum(o.sin().sum() for o in (out if isinstance(out, tuple) else (out,)))

        return inner

    grad = torch.func.grad(loss(ours), argnums=(0, 1, 2, 3))
    grad_t = torch.func.grad(loss(theirs), argnums=(0, 1, 2, 3))
    in_dims = (0, None, None, 0)
    _check(
        torch.func.vmap(grad, in_dims)(*batched), torch.func.vmap(grad_t, in_dims)(*_f64(batched))
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_over_parameters_matches_torch(backend):
    """Model ensembling: weight and bias batched too (the reference then normalises with the
    parameters broadcast over each batch's rows)."""
    device, dtype = _setup(backend)
    ours, theirs = _pairs(backend)["layer_norm"]
    x = make_input((4, 3, N), dtype, device)
    w, b = make_input((4, N), dtype, device), make_input((4, N), dtype, device)
    for in_dims in ((0, 0, 0, None), (None, 0, None, None), (0, None, 0, None)):
        # an unbatched input (in_dim None) is one member of the batch
        args = tuple(
            a if d == 0 or a is None else a[0]
            for a, d in zip((x, w, b, None), in_dims, strict=True)
        )
        got = torch.func.vmap(ours, in_dims)(*args)
        want = torch.func.vmap(theirs, in_dims)(
            *(None if a is None else a.double().cpu() for a in args)
        )
        _check(got, want, f"vmap {in_dims}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_is_one_call_without_the_per_sample_fallback(backend):
    device, dtype = _setup(backend)
    ours, _ = _pairs(backend)["fused_add_rms_norm"]
    x, w, b, r = _inputs((7, 3, N), device, dtype)
    dispatch.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it falls back to a per-sample loop
        torch.func.vmap(ours, (0, None, None, 0))(x, w, b, r)
    assert dispatch.calls == {backend: 1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", list(_pairs("reference")))
def test_forward_ad_matches_torch(backend, fn):
    import torch.autograd.forward_ad as fwAD

    device, dtype = _setup(backend)
    ours, theirs = _pairs(backend)[fn]
    args = _inputs((3, N), device, dtype)
    tangents = tuple(make_input(a.shape, dtype, device) for a in args)
    results = []
    for f, a, t in ((ours, args, tangents), (theirs, _f64(args), _f64(tangents))):
        with fwAD.dual_level():
            out = f(*(fwAD.make_dual(p, q) for p, q in zip(a, t, strict=True)))
            out = out if isinstance(out, tuple) else (out,)
            results.append(tuple(fwAD.unpack_dual(o).tangent for o in out))
    assert all(t is not None for t in results[0])
    _check(*results)


def test_jvp_example_from_the_issue():
    x, t = torch.tensor([[1.0, 2.0, 4.0, 7.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    _, tangent = torch.func.jvp(lambda a: lg.layer_norm(a, 4), (x,), (t,))
    torch.testing.assert_close(
        tangent, torch.tensor([[0.1974, -0.1870, -0.0831, 0.0727]]), atol=1e-4, rtol=0
    )


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    n=st.integers(1, 17),
    transpose=st.booleans(),
    is_rms=st.booleans(),
    backend=st.sampled_from(BACKENDS),
)
def test_property_jvp_vjp_vmap_match_torch(lead, n, transpose, is_rms, backend):
    """Random shapes and layouts: jvp, vjp and vmap of ours equal torch's (float64 oracle)."""
    device, dtype = _setup(backend)
    x = make_input((*lead, n), dtype, device)
    if transpose and len(lead) > 1:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    w = make_input(n, dtype, device)

    def ours(a, w):
        if is_rms:
            return lg.rms_norm(a, n, w, eps=1e-5, backend=backend)
        return lg.layer_norm(a, n, w, backend=backend)

    def theirs(a, w):
        return F.rms_norm(a, (n,), w, eps=1e-5) if is_rms else F.layer_norm(a, (n,), w)

    t = (make_input(x.shape, dtype, device), make_input(n, dtype, device))
    _check(torch.func.jvp(ours, (x, w), t), torch.func.jvp(theirs, _f64((x, w)), _f64(t)))
    out, vjp = torch.func.vjp(ours, x, w)
    out_t, vjp_t = torch.func.vjp(theirs, *_f64((x, w)))
    cotangent = make_input(out.shape, dtype, device)
    _check(vjp(cotangent), vjp_t(cotangent.double().cpu()))
    _check(
        torch.func.vmap(ours, (0, None))(x, w), torch.func.vmap(theirs, (0, None))(*_f64((x, w)))
    )


# --- nested transforms with forward mode, and torch.func under torch.compile -----------------


def _scalar_pairs(backend: str):
    """(ours, torch's) as scalar functions of x alone (weight, bias and residual fixed)."""
    device, dtype = _setup(backend)
    _, w, b, r = _inputs((2, N), device, dtype)
    c = make_input((2, N), dtype, device)
    fixed = (w.detach(), b.detach(), r.detach())

    def scalar(f, params):
        def loss(x):
            out = f(x, *params)
            out = out if isinstance(out, tuple) else (out,)
            return sum((o * c.to(o.dtype) * (k + 1)).sum() for k, o in enumerate(out))

        return loss

    return {
        name: (scalar(ours, fixed), scalar(theirs, _f64(fixed)))
        for name, (ours, theirs) in _pairs(backend).items()
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", list(_pairs("reference")))
def test_second_derivatives_through_forward_mode(backend, fn):
    """jacfwd(jacfwd), jacrev(jacfwd) and jvp(jvp) (forward mode nested with another level):
    the Hessian of torch's functions, taken in reverse mode twice in float64. (torch's own
    layer_norm gets jacfwd(jacfwd) wrong, against reverse mode and finite differences.)"""
    device, dtype = _setup(backend)
    ours, theirs = _scalar_pairs(backend)[fn]
    x = make_input((2, N), dtype, device)
    v = make_input((2, N), dtype, device)
    hessian = torch.func.jacrev(torch.func.jacrev(theirs))(x.double().cpu())
    for name, got in (
        ("jacfwd(jacfwd)", torch.func.jacfwd(torch.func.jacfwd(ours))(x)),
        ("jacrev(jacfwd)", torch.func.jacrev(torch.func.jacfwd(ours))(x)),
    ):
        _check(got, hessian, name)
    tangent = torch.func.jvp(lambda z: torch.func.jvp(ours, (z,), (v,))[1], (x,), (v,))[1]
    v64 = v.double().cpu()
    _check(tangent, (hessian * v64[:, :, None, None] * v64).sum(), "jvp(jvp)")


def test_single_level_and_forward_over_reverse_keep_the_op():
    """jvp, jacfwd, hessian (forward over reverse), jvp of grad, and forward AD through a norm
    whose parameters need gradients: the kernels' op, not the torch-ops path (which runs the
    reference, so only the triton backend can tell the two apart)."""
    import torch.autograd.forward_ad as fwAD

    backend = "triton"
    device, dtype = _setup(backend)
    x, v = make_input((2, N), dtype, device), make_input((2, N), dtype, device)
    w = make_input(N, dtype, device, requires_grad=True)
    b = make_input(N, dtype, device, requires_grad=True)

    def loss(z):
        return lg.layer_norm(z, N, w, b, backend=backend).sin().sum()

    def with_dual_level():
        with fwAD.dual_level():
            return fwAD.unpack_dual(loss(fwAD.make_dual(x, v))).tangent

    for name, run in (
        ("jvp", lambda: torch.func.jvp(loss, (x,), (v,))),
        ("jacfwd", lambda: torch.func.jacfwd(loss)(x)),
        ("hessian", lambda: torch.func.hessian(loss)(x)),
        ("jvp(grad)", lambda: torch.func.jvp(torch.func.grad(loss), (x,), (v,))),
        ("forward_ad", with_dual_level),
    ):
        dispatch.calls.clear()
        run()
        assert set(dispatch.calls) == {backend}, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_over_forward_ad(backend):
    """torch.autograd.forward_ad on an input that also needs a gradient: backward of the
    tangent is the Hessian-vector product."""
    import torch.autograd.forward_ad as fwAD

    device, dtype = _setup(backend)
    ours, theirs = _scalar_pairs(backend)["layer_norm"]
    x = make_input((2, N), dtype, device, requires_grad=True)
    v = make_input((2, N), dtype, device)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, v))).tangent
    (got,) = torch.autograd.grad(tangent, x)
    hessian = torch.func.jacrev(torch.func.jacrev(theirs))(x.detach().double().cpu())
    _check(got, (hessian * v.double().cpu()).sum(dim=(-2, -1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_and_forward_ad_under_torch_compile(backend):
    """Compiled grad(f), jvp(f), and forward AD through a compiled f: torch's results."""
    import torch.autograd.forward_ad as fwAD

    device, dtype = _setup(backend)
    ours, theirs = _scalar_pairs(backend)["fused_add_layer_norm"]
    x, v = make_input((2, N), dtype, device), make_input((2, N), dtype, device)
    x64, v64 = x.double().cpu(), v.double().cpu()
    torch._dynamo.reset()
    grad = torch.compile(torch.func.grad(ours), backend="aot_eager")(x)
    _check(grad, torch.func.grad(theirs)(x64), "compile(grad)")
    jvp = torch.compile(lambda z: torch.func.jvp(ours, (z,), (v,))[1], backend="aot_eager")(x)
    _check(jvp, torch.func.jvp(theirs, (x64,), (v64,))[1], "compile(jvp)")
    compiled = torch.compile(ours, backend="aot_eager")
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(compiled(fwAD.make_dual(x, v))).tangent
    assert tangent is not None
    _check(tangent, torch.func.jvp(theirs, (x64,), (v64,))[1], "forward AD through compile")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["layer_norm", "fused_add_layer_norm", "rms_norm"])
def test_nested_vmap_with_parameters_batched_at_both_levels(backend, fn):
    device, dtype = _setup(backend)
    ours, theirs = _pairs(backend)[fn]
    x, r = make_input((2, 3, 4, N), dtype, device), make_input((2, 3, 4, N), dtype, device)
    w, b = make_input((2, 3, N), dtype, device), make_input((2, 3, N), dtype, device)
    vmap2 = lambda f: torch.func.vmap(torch.func.vmap(f))  # noqa: E731
    _check(vmap2(ours)(x, w, b, r), vmap2(theirs)(*_f64((x, w, b, r))))


# --- gradients nobody asked for -----------------------------------------------------------


def _grads_none(use_y, use_h, requires, ours, backend):
    """Which of (x, residual, weight, bias) get a None gradient."""
    torch.manual_seed(1)
    device = torch.device("cpu") if backend == "reference" else KERNEL_DEVICE
    leaves = [make_input(s, torch.float32, device) for s in ((3, N), (3, N), (N,), (N,))]
    for leaf, req in zip(leaves, requires, strict=True):
        leaf.requires_grad_(req)
    x, r, w, b = leaves
    if ours:
        y, h = lg.fused_add_layer_norm(x, r, N, w, b, backend=backend)
    else:
        h = x + r
        y = F.layer_norm(h, (N,), w, b)
    loss = (y.sum() if use_y else 0) + (h.sin().sum() if use_h else 0)
    if not torch.is_tensor(loss) or not loss.requires_grad:
        return None
    loss.backward()
    return [leaf.grad is None for leaf in leaves]


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_paths_give_none_like_torch(backend):
    for use_y, use_h in ((True, False), (False, True), (True, True)):
        for requires in itertools.product((False, True), repeat=4):
            if not any(requires):
                continue
            want = _grads_none(use_y, use_h, requires, False, backend)
            got = _grads_none(use_y, use_h, requires, True, backend)
            assert got == want, (use_y, use_h, requires)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_h_used_launches_no_norm_backward(backend):
    device = torch.device("cpu") if backend == "reference" else KERNEL_DEVICE
    x, r = (make_input((3, N), torch.float32, device, requires_grad=True) for _ in range(2))
    w = make_input(N, torch.float32, device, requires_grad=True)
    _, h = lg.fused_add_rms_norm(x, r, N, w, backend=backend)
    dispatch.calls.clear()
    h.square().sum().backward()
    assert dispatch.calls == {} and w.grad is None
    torch.testing.assert_close(x.grad, 2 * h.detach())


# --- memory_efficient: save y, recompute x_hat ----------------------------------------------


def _saved_storages(fn):
    """Run ``fn`` under saved_tensors_hooks: the distinct storages autograd saved, by data_ptr
    (a tensor saved twice, as y by the norm and the next Linear, counts once)."""
    saved: dict[int, torch.Tensor] = {}

    def pack(t):
        if t.numel() > 0:
            saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", list(_pairs("reference")))
def test_memory_efficient_gradients_match_torch(backend, fn):
    device, dtype = _setup(backend)
    x, w, b, r = _inputs((5, N), device, dtype)
    w = (1.0 + 0.2 * w.detach()).requires_grad_()
    b = (0.3 * b.detach()).requires_grad_()
    leaves = [t.detach().requires_grad_() for t in (x, w, b, r)]
    kw = dict(memory_efficient=True, backend=backend)
    calls = {
        "layer_norm": lambda x, w, b, r: lg.layer_norm(x, N, w, b, **kw),
        "rms_norm": lambda x, w, b, r: lg.rms_norm(x, N, w, eps=1e-6, **kw),
        "fused_add_layer_norm": lambda x, w, b, r: lg.fused_add_layer_norm(x, r, N, w, b, **kw),
        "fused_add_rms_norm": lambda x, w, b, r: lg.fused_add_rms_norm(x, r, N, w, eps=1e-6, **kw),
    }
    out = calls[fn](*leaves)
    out = out if isinstance(out, tuple) else (out,)
    cotangents = [make_input(o.shape, o.dtype, device) for o in out]
    grads = torch.autograd.grad(out, leaves, cotangents, allow_unused=True)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    ref_out = _pairs("reference")[fn][1](*ref_leaves)
    ref_out = ref_out if isinstance(ref_out, tuple) else (ref_out,)
    ref_grads = torch.autograd.grad(
        ref_out, ref_leaves, [c.double().cpu() for c in cotangents], allow_unused=True
    )
    for name, g, want in zip("xwbr", grads, ref_grads, strict=True):
        assert (g is None) == (want is None), name
        if g is not None:
            assert_close(g, want, reduction=5, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_efficient_saves_one_activation_fewer(backend):
    """Linear -> LayerNorm -> Linear: with memory_efficient the norm saves y, which the second
    Linear saves anyway, instead of its input: one activation-size tensor fewer."""
    device, dtype = _setup(backend)
    first, second = torch.nn.Linear(N, N), torch.nn.Linear(N, N)
    first, second = first.to(device, dtype), second.to(device, dtype)
    x = make_input((64, N), dtype, device)
    activation_bytes = {}
    for memory_efficient in (False, True):
        norm = lg.LayerNorm(N, memory_efficient=memory_efficient, backend=backend)
        norm = norm.to(device, dtype)
        _, saved = _saved_storages(lambda norm=norm: second(norm(first(x))))
        activation_bytes[memory_efficient] = sum(
            t.untyped_storage().nbytes() for t in saved.values() if t.shape == (64, N)
        )
    assert activation_bytes[True] == activation_bytes[False] - 64 * N * x.element_size()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case", ["zero-weight", "tiny-weight", "large-bias"], ids=lambda c: c
)  # fmt: skip
def test_memory_efficient_falls_back_where_ill_conditioned(backend, case):
    """A weight entry that is zero or vanishing, or a bias far larger than its weight: y does
    not determine x_hat there, so the norm's input is saved and the gradients stay exact."""
    device, dtype = _setup(backend)
    x = make_input((4, N), dtype, device, requires_grad=True)
    w = make_input(N, dtype, device).detach()
    b = 0.1 * make_input(N, dtype, device).detach()
    if case == "zero-weight":
        w[2] = 0.0
    elif case == "tiny-weight":
        w[1] = 1e-9
    else:
        b[3] = 100.0 * w[3].abs() + 1.0
    w.requires_grad_()
    b.requires_grad_()
    y, saved = _saved_storages(
        lambda: lg.layer_norm(x, N, w, b, memory_efficient=True, backend=backend)
    )
    assert x.untyped_storage().data_ptr() in saved, "the input must be saved"
    dy = make_input(y.shape, dtype, device)
    grads = torch.autograd.grad(y, [x, w, b], dy)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    want = torch.autograd.grad(
        F.layer_norm(leaves[0], (N,), *leaves[1:]), leaves, dy.double().cpu()
    )
    for g, e in zip(grads, want, strict=True):
        assert_close(g, e, reduction=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_efficient_sees_a_weight_written_without_a_new_version(backend):
    """FSDP2's all-gather (and writes through ``.data``) change a weight in place without
    bumping its version: a zero written that way must still make the norm save its input."""
    device, dtype = _setup(backend)
    x = make_input((4, N), dtype, device, requires_grad=True)
    w = (1.0 + 0.2 * make_input(N, dtype, device)).requires_grad_()
    lg.layer_norm(x, N, w, memory_efficient=True, backend=backend).sum().backward()
    version = w._version
    w.data[2] = 0.0
    assert w._version == version
    y = lg.layer_norm(x, N, w, memory_efficient=True, backend=backend)
    dy = make_input(y.shape, dtype, device)
    grads = torch.autograd.grad(y, [x, w], dy)
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w)]
    want = torch.autograd.grad(F.layer_norm(leaves[0], (N,), leaves[1]), leaves, dy.double().cpu())
    for g, e in zip(grads, want, strict=True):
        assert_close(g, e, reduction=4)


def test_memory_efficient_refuses_double_backward():
    x = make_input((3, N), torch.float64, "cpu", requires_grad=True)
    y = lg.layer_norm(x, N, make_input(N, torch.float64, "cpu"), memory_efficient=True)
    with pytest.raises(RuntimeError, match="memory_efficient=False"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_memory_efficient_wide_rows(backend, is_rms):
    """Rows wider than the single-block backward (the looped kernel recomputes x_hat from y)."""
    device, dtype = _setup(backend)
    n = 9000
    x = make_input((3, n), dtype, device, requires_grad=True)
    w = (1.0 + 0.2 * make_input(n, dtype, device)).requires_grad_()
    b = (0.3 * make_input(n, dtype, device)).requires_grad_()
    kw = dict(memory_efficient=True, backend=backend)
    y = lg.rms_norm(x, n, w, eps=1e-6, **kw) if is_rms else lg.layer_norm(x, n, w, b, **kw)
    dy = make_input(y.shape, dtype, device)
    leaves = [x, w] if is_rms else [x, w, b]
    grads = torch.autograd.grad(y, leaves, dy)
    ref = [t.detach().double().cpu().requires_grad_() for t in leaves]
    y_ref = (
        F.rms_norm(ref[0], (n,), ref[1], eps=1e-6)
        if is_rms
        else F.layer_norm(ref[0], (n,), *ref[1:])
    )
    want = torch.autograd.grad(y_ref, ref, dy.double().cpu())
    for g, e in zip(grads, want, strict=True):
        assert_close(g, e, reduction=3)
