"""Derivatives of ``layernorm_gpu::norm_fwd``: the backward (reverse mode), the forward-mode
rule, and how a call reaches them.

* Reverse mode is registered on the op (``torch.library.register_autograd``), which is what
  ``torch.compile`` traces. Autograd saves the norm's input (x, or h when fused), the weight,
  mean and rstd (not y) and asks ``norm_bwd`` only for the gradients that are needed: nothing
  at all when y does not reach the loss (only the fused h does), so unused parameters keep a
  ``None`` gradient, as with torch's unfused code.
* Eager calls go through :class:`NormFunction`, an ``autograd.Function`` with the same
  ``setup_context`` and ``backward`` plus a ``jvp`` (forward-mode AD), which is what
  ``torch.func`` transforms (``grad``, ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``, ``vmap``)
  and ``torch.autograd.forward_ad`` need; its vmap rule is the op's own (``ops.py``), so a
  vmapped dim is just more rows. ``torch.compile`` does not trace a custom ``jvp`` (a graph
  break), so compiled code calls the op directly.
* When the backward itself is differentiated (``create_graph=True``, or inside a ``torch.func``
  transform), it runs :func:`.reference.norm_bwd_differentiable`, differentiable torch ops, so
  double backward and Hessians are exact.
* Where neither can give the right derivatives, the call runs as the reference's torch ops
  (:func:`.ops.norm_fwd_differentiable`), which every transform differentiates itself
  (:func:`_torch_ops_needed`): forward-mode AD nested with another level of AD (PyTorch runs an
  ``autograd.Function``'s ``jvp`` at one level only, so ``jacfwd(jacfwd(f))`` would be zero),
  and ``torch.compile`` inside a ``torch.func`` transform or forward-AD level (Dynamo traces
  neither a custom ``jvp`` nor the op's autograd under ``torch.func``).
"""

from __future__ import annotations

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.autograd import forward_ad

from . import ops, reference, sharding
from .dtypes import output_dtypes

# The op's arguments after the tensors, in schema order (autograd.Function takes positions).
OPTION_NAMES = (
    "n_norm_dims",
    "eps",
    "weight_offset",
    "is_rms",
    "residual_in_fp32",
    "casting",
    "backend",
    "memory_efficient",
)

# The memory-efficient backward recomputes x_hat = (y - b) / s, s = w + weight_offset, from the
# rounded y: |error| <= u * (|x_hat| + |b| / |s|) for y's unit roundoff u. It is used only when
# that stays within a few roundings of y itself: every |s_j| > RECOMPUTE_MIN_SCALE * max|s|
# (no zero or vanishing scale, where y carries no information about x) and
# |b_j| <= RECOMPUTE_MAX_SHIFT * |s_j| (no cancellation in y - b larger than that factor).
RECOMPUTE_MIN_SCALE = 1e-6
RECOMPUTE_MAX_SHIFT = 4.0


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, *options = inputs
    y, h, mean, rstd = output
    ctx.options = dict(zip(OPTION_NAMES, options, strict=True))
    ctx.fused = residual is not None
    if ctx.fused and not _h_is_differentiable(ctx):
        # h = x + residual does not depend on the parameters: as in torch's unfused code, it
        # carries no gradient when neither x nor residual needs one
        ctx.mark_non_differentiable(h, mean, rstd)
    else:
        ctx.mark_non_differentiable(mean, rstd)
    # an unused y or h gets a None gradient, not a zero-filled one
    ctx.set_materialize_grads(False)
    norm_input = h if ctx.fused else x
    ctx.norm_dtype = norm_input.dtype
    ctx.x_is_y = ctx.options["memory_efficient"] and _recomputable(ctx, weight, bias)
    if ctx.x_is_y:
        # y (which the next layer saves anyway) instead of the norm's input
        ctx.save_for_backward(y, weight, bias, rstd)
    else:
        ctx.save_for_backward(norm_input, weight, mean, rstd)
    if _forward_ad_active():
        ctx.save_for_forward(norm_input, weight, mean, rstd)
    ctx.dtypes = (
        x.dtype,
        None if residual is None else residual.dtype,
        None if bias is None else bias.dtype,
    )


def _recomputable(ctx, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether x_hat may be recomputed from y (see RECOMPUTE_MIN_SCALE), checked on every call
    (on a GPU, one flag copied to the host): a cached answer could be stale, since FSDP2's
    all-gather and writes through ``.data`` change a weight in place without a new version.
    Not under torch.compile or CUDA-graph capture (no host sync there) nor forward-mode AD:
    those save the norm's input."""
    if torch.compiler.is_compiling() or _forward_ad_active():
        return False
    params = [t for t in (weight, bias) if t is not None]
    if any(t.is_cuda for t in params) and torch.cuda.is_current_stream_capturing():
        return False
    if not params:
        return True
    with torch.no_grad():
        scale = torch.ones(()) if weight is None else weight.float() + ctx.options["weight_offset"]
        scale = scale.abs()
        ok = torch.all(scale > RECOMPUTE_MIN_SCALE * scale.max())
        if bias is not None:
            ok = ok & torch.all(bias.float().abs() <= RECOMPUTE_MAX_SHIFT * scale)
        return bool(ok)


def _forward_ad_active() -> bool:
    """Forward-mode AD in play: a dual level, or any torch.func transform."""
    # (setup_context sees the primals without their tangents: ask whether a dual level is open)
    return _functorch_active() or forward_ad._current_level >= 0


def _h_is_differentiable(ctx) -> bool:
    """Whether h may carry a derivative: x or residual needs a gradient, or forward-mode AD
    is in play."""
    return any(ctx.needs_input_grad[:2]) or _forward_ad_active()


def _functorch_active() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


def _functorch_levels() -> tuple[TransformType, ...]:
    """The kinds of the active ``torch.func`` transforms, outermost first."""
    if not _functorch_active():
        return ()
    return tuple(i.key() for i in retrieve_all_functorch_interpreters())


# torch.compiler.assume_constant_result(_functorch_levels), which would import Dynamo with the
# package (seconds): Dynamo calls it while tracing (it cannot trace the functorch stack) and
# guards on the functorch stack itself, so a graph traced outside torch.func is not reused
# inside it
_functorch_levels._dynamo_marked_constant = True


def _torch_ops_needed(x: torch.Tensor, residual: torch.Tensor | None) -> bool:
    """Whether a call must run as torch ops (see the module docstring). Under torch.compile:
    inside any derivative transform (``torch.func`` grad / jvp, or a forward-AD level). In
    eager: when the innermost derivative level is forward mode and either another one is
    outside it (``jacfwd(jacfwd)``, ``jacrev(jacfwd)``) or x or the residual needs a gradient
    (reverse over forward: the tangent depends on x through mean and rstd, which the op returns
    as constants; through the parameters it is exact). Forward over reverse (``hessian``) and a
    single ``jvp`` keep the op."""
    levels = [k for k in _functorch_levels() if k in (TransformType.Grad, TransformType.Jvp)]
    if forward_ad._current_level >= 0 and TransformType.Jvp not in levels:
        # the user's own dual level (torch.func.jvp opens one for itself): taken as innermost
        levels.append(TransformType.Jvp)
    if torch.compiler.is_compiling():
        return bool(levels)
    if not levels or levels[-1] != TransformType.Jvp:
        return False
    if len(levels) > 1:
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual))


def _differentiating_backward() -> bool:
    """Whether this backward is itself being differentiated (``create_graph=True`` or a
    ``torch.func`` transform around it)."""
    return torch.is_grad_enabled() or _functorch_active()


def _backward(ctx, dy, dh, _dmean, _drstd):
    saved, weight, saved_stat, rstd = ctx.saved_tensors
    opts = ctx.options
    x_dtype, residual_dtype, bias_dtype = ctx.dtypes
    need_x, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    dh = dh if ctx.fused else None
    dweight = dbias = None
    common = dict(
        n_norm_dims=opts["n_norm_dims"],
        weight_offset=opts["weight_offset"],
        is_rms=opts["is_rms"],
        dweight_dtype=weight.dtype if need_weight else None,
        dbias_dtype=bias_dtype if need_bias else None,
        backend=opts["backend"],
    )
    if dy is None:
        # y does not reach the loss: only h's gradient flows back, to x and residual
        dnorm = dh
    elif _differentiating_backward():
        if ctx.x_is_y:
            raise RuntimeError(
                "double backward (create_graph=True or a torch.func transform) needs the norm's "
                "input, which memory_efficient=True does not save; use memory_efficient=False"
            )
        dnorm, dweight, dbias = reference.norm_bwd_differentiable(
            dy,
            saved,
            weight,
            dh,
            n_norm_dims=opts["n_norm_dims"],
            eps=opts["eps"],
            is_rms=opts["is_rms"],
            weight_offset=opts["weight_offset"],
            need_dweight=need_weight,
            need_dbias=need_bias,
        )
    elif ctx.x_is_y:
        # saved_stat is the bias here: x_hat = (y - bias) / (weight + weight_offset)
        dnorm, dweight, dbias = ops.norm_bwd(
            dy, saved, weight, rstd.new_empty(0), rstd, dh, bias=saved_stat, x_is_y=True,
            dx_dtype=ctx.norm_dtype, **common,
        )  # fmt: skip
    else:
        dnorm, dweight, dbias = ops.norm_bwd(dy, saved, weight, saved_stat, rstd, dh, **common)
    return (
        dnorm.to(x_dtype) if need_x and dnorm is not None else None,
        dnorm.to(residual_dtype) if need_residual and dnorm is not None else None,
        dweight.to(weight.dtype) if need_weight and dweight is not None else None,
        dbias.to(bias_dtype) if need_bias and dbias is not None else None,
        *([None] * len(OPTION_NAMES)),
    )


def _jvp(ctx, x_t, residual_t, weight_t, bias_t, *_):
    norm_input, weight, mean, rstd = ctx.saved_tensors
    opts = ctx.options
    h_t = x_t
    if ctx.fused and residual_t is not None:
        h_t = residual_t if x_t is None else x_t + residual_t
    y_t = reference.norm_jvp(
        h_t,
        weight_t,
        bias_t,
        norm_input,
        weight,
        mean,
        rstd,
        n_norm_dims=opts["n_norm_dims"],
        is_rms=opts["is_rms"],
        weight_offset=opts["weight_offset"],
    )
    weight_dtype = None if weight is None else weight.dtype
    y_dtype, _ = output_dtypes(ctx.dtypes[0], norm_input.dtype, weight_dtype, opts["casting"])
    if not ctx.fused:
        # h is an empty placeholder; forward AD still wants a tangent of its (empty) shape
        h_tangent = norm_input.new_zeros(0)
    elif h_t is None:
        h_tangent = torch.zeros_like(norm_input)
    else:
        h_tangent = h_t.to(norm_input.dtype)
    return y_t.to(y_dtype), h_tangent, None, None


class NormFunction(torch.autograd.Function):
    """``norm_fwd`` for eager calls, with the op's backward and the forward-mode rule (see the
    module docstring); ``apply`` takes the op's arguments in schema order."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return ops.norm_fwd(*args)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)
    jvp = staticmethod(_jvp)


def norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable ``norm_fwd``: the op under ``torch.compile``, :class:`NormFunction`
    otherwise. ``options`` are the op's arguments named in :data:`OPTION_NAMES`."""
    sharding.register_if_dtensor(x)
    if _torch_ops_needed(x, residual):
        return ops.norm_fwd_differentiable(x, residual, weight, bias, **options)
    if torch.compiler.is_compiling():
        return ops.norm_fwd(x, residual, weight, bias, **options)
    return NormFunction.apply(x, residual, weight, bias, *(options[k] for k in OPTION_NAMES))


torch.library.register_autograd("layernorm_gpu::norm_fwd", _backward, setup_context=_setup_context)
