"""The norms as ``torch.library`` custom operators, with fake kernels and autograd.

``layernorm_gpu::norm_fwd`` and ``layernorm_gpu::norm_bwd`` serve LayerNorm and RMSNorm, with
or without the fused residual add. Both are opaque ``custom_op``s whose one implementation runs
the backend chosen before the call (``"triton"`` launches the kernels, ``"reference"`` runs the
torch reference), on any device. Why not ``triton_op``: Inductor decomposes a ``triton_op`` into
its Triton kernels, so one that also has a CPU implementation fails to compile on CPU (checked
with torch 2.13: "0 active drivers"). An opaque op compiles the same on CPU and CUDA, with no
graph break, and keeps the kernels' own launch heuristics.

Autograd saves the norm's input (``x``, or ``h`` when fused), the weight, mean and rstd (not y)
and asks the backward only for the gradients that are needed. With ``create_graph=True`` the
backward is computed by the differentiable reference instead, so double backward is exact.
"""

from __future__ import annotations

import math

import torch

from . import dispatch, reference

_LIB = "layernorm_gpu"


def h_dtype(x: torch.Tensor, residual: torch.Tensor, residual_in_fp32: bool) -> torch.dtype:
    """dtype of ``h = x + residual``: PyTorch's promotion, at least float32 if asked."""
    dtype = torch.promote_types(x.dtype, residual.dtype)
    return torch.promote_types(dtype, torch.float32) if residual_in_fp32 else dtype


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_rows(t, n_norm_dims):
    """``t`` with its normalised dims merged into one: ``(*lead, N)`` (a view when it can)."""
    return t if n_norm_dims == 1 else t.flatten(t.dim() - n_norm_dims)


def _reference_fwd(x, weight, bias, n_norm_dims, eps, weight_offset, is_rms):
    """The reference forward on N-D tensors: ``(y, mean, rstd)``, mean and rstd ``(rows,)``.

    y is a new tensor, never a view: a custom op's output that is a view cannot be modified
    in place under autograd (``y += residual``), which torch's own layer_norm allows.
    """
    x_rows = _as_rows(x, n_norm_dims)
    w, b = (None if t is None else t.reshape(x_rows.shape[-1]) for t in (weight, bias))
    if is_rms:
        y, rstd = reference.rms_forward(x_rows, w, eps, weight_offset=weight_offset)
        mean = torch.zeros_like(rstd)
    else:
        y, mean, rstd = reference.forward(x_rows, w, b, eps, weight_offset=weight_offset)
    if n_norm_dims > 1:
        y = y.reshape(x.shape).clone()
    return y, mean.reshape(-1), rstd.reshape(-1)


def _reference_bwd(dy, x, weight, mean, rstd, dh, n_norm_dims, weight_offset, is_rms, has_bias):
    """The reference backward on N-D tensors; ``dh`` is added to dx before its one rounding."""
    x_rows, dy_rows = _as_rows(x, n_norm_dims), _as_rows(dy, n_norm_dims)
    if dh is not None:
        # the reference computes in the stats dtype anyway: an upcast x returns dx unrounded
        x_rows = x_rows.to(_stats_dtype(x.dtype))
    w = None if weight is None else weight.reshape(x_rows.shape[-1])
    mean, rstd = mean.reshape(x_rows.shape[:-1]), rstd.reshape(x_rows.shape[:-1])
    if is_rms:
        dx, dweight = reference.rms_backward(dy_rows, x_rows, w, rstd, weight_offset=weight_offset)
        dbias = None
    else:
        dx, dweight, dbias = reference.backward(
            dy_rows, x_rows, w, mean, rstd, has_bias=has_bias, weight_offset=weight_offset
        )
    if dh is not None:
        dx = (dx + _as_rows(dh, n_norm_dims)).to(x.dtype)
    norm_shape = x.shape[x.dim() - n_norm_dims :]

    def to_norm_shape(grad):
        return None if grad is None else grad.reshape(norm_shape)

    return dx.reshape(x.shape), to_norm_shape(dweight), to_norm_shape(dbias)


@torch.library.custom_op(f"{_LIB}::norm_fwd", mutates_args=())
def norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    n_norm_dims: int,
    eps: float,
    weight_offset: float,
    is_rms: bool,
    residual_in_fp32: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise the rows (last ``n_norm_dims`` dims) of ``x`` (``x + residual`` if given).

    Returns ``(y, h, mean, rstd)``: y ``x.shape`` in x's dtype; h ``x.shape`` in
    :func:`h_dtype` (an empty tensor without residual); mean (zeros for RMSNorm) and rstd
    ``(rows,)`` in float32 (float64 for float64 input).
    """
    dispatch.calls[backend] += 1
    if backend == "triton":
        from . import kernels

        y, h, mean, rstd = kernels.norm_fwd(
            x,
            residual,
            None if weight is None else weight.contiguous(),
            None if bias is None else bias.contiguous(),
            n_norm_dims=n_norm_dims,
            eps=eps,
            is_rms=is_rms,
            weight_offset=weight_offset,
            h_dtype=None if residual is None else h_dtype(x, residual, residual_in_fp32),
            y_dtype=x.dtype,
            x_hat_dtype=None,
        )
        mean = torch.zeros_like(rstd) if is_rms else mean  # the op's RMSNorm mean, for now
        return y, x.new_empty(0) if h is None else h, mean, rstd
    h = x.new_empty(0)
    norm_input = x
    if residual is not None:
        dtype = h_dtype(x, residual, residual_in_fp32)
        h = norm_input = x.to(dtype) + residual.to(dtype)
    y, mean, rstd = _reference_fwd(
        norm_input, weight, bias, n_norm_dims, eps, weight_offset, is_rms
    )
    return y.to(x.dtype).contiguous(), h, mean, rstd


@norm_fwd.register_fake
def _(
    x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms, residual_in_fp32, backend
):
    rows = math.prod(x.shape[: x.dim() - n_norm_dims])
    norm_dtype = x.dtype
    h = x.new_empty(0)
    if residual is not None:
        norm_dtype = h_dtype(x, residual, residual_in_fp32)
        h = x.new_empty(x.shape, dtype=norm_dtype)
    stats = _stats_dtype(norm_dtype)
    return (x.new_empty(x.shape), h, x.new_empty(rows, dtype=stats), x.new_empty(rows, dtype=stats))


@torch.library.custom_op(f"{_LIB}::norm_bwd", mutates_args=())
def norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dh: torch.Tensor | None,
    n_norm_dims: int,
    weight_offset: float,
    is_rms: bool,
    dweight_dtype: torch.dtype | None,
    dbias_dtype: torch.dtype | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`norm_fwd` from its saved ``x`` (h when fused), mean and rstd.

    ``dh`` (optional) is the gradient on the fused output h, added to dx. dW / dB are computed
    only when their dtype is given, else returned as empty tensors.

    Returns ``(dx, dweight, dbias)``: dx ``x.shape`` in x's dtype; dW / dB in the norm shape.
    """
    dispatch.calls[backend] += 1
    if backend == "triton":
        from . import kernels

        dx, dweight, dbias = kernels.norm_bwd(
            dy,
            x,
            None if weight is None else weight.contiguous(),
            mean,
            rstd,
            dh,
            n_norm_dims=n_norm_dims,
            is_rms=is_rms,
            weight_offset=weight_offset,
            dweight_dtype=dweight_dtype,
            dbias_dtype=dbias_dtype,
        )
    else:
        dx, dweight, dbias = _reference_bwd(
            dy,
            x,
            weight,
            mean,
            rstd,
            dh,
            n_norm_dims,
            weight_offset,
            is_rms,
            dbias_dtype is not None,
        )
        dx = dx.contiguous()
    empty = x.new_empty(0)
    return (
        dx,
        empty if dweight_dtype is None else dweight.to(dweight_dtype),
        empty.clone() if dbias_dtype is None else dbias.to(dbias_dtype),
    )


@norm_bwd.register_fake
def _(
    dy,
    x,
    weight,
    mean,
    rstd,
    dh,
    n_norm_dims,
    weight_offset,
    is_rms,
    dweight_dtype,
    dbias_dtype,
    backend,
):
    norm_shape = x.shape[x.dim() - n_norm_dims :]
    return (
        x.new_empty(x.shape),
        x.new_empty(0) if dweight_dtype is None else x.new_empty(norm_shape, dtype=dweight_dtype),
        x.new_empty(0) if dbias_dtype is None else x.new_empty(norm_shape, dtype=dbias_dtype),
    )


def _setup_context(ctx, inputs, output):
    (x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms, _, backend) = inputs
    _, h, mean, rstd = output
    ctx.fused = residual is not None
    # mean and rstd are internal outputs: no zero-filled gradients for them (or for an unused
    # y or h); the backward handles None
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(h if ctx.fused else x, weight, mean, rstd)
    ctx.x_dtype = x.dtype
    ctx.residual_dtype = residual.dtype if ctx.fused else None
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.args = (n_norm_dims, eps, weight_offset, is_rms, backend)


def _differentiable_bwd(dy, x, weight, dh, n_norm_dims, eps, weight_offset, is_rms, has_bias):
    """The backward as differentiable torch ops of x, weight and dy (stats recomputed from x, so
    their own dependence on x is part of the graph): the path for ``create_graph=True``."""
    _, mean, rstd = _reference_fwd(x, weight, None, n_norm_dims, eps, weight_offset, is_rms)
    return _reference_bwd(
        dy, x, weight, mean, rstd, dh, n_norm_dims, weight_offset, is_rms, has_bias
    )


def _backward(ctx, dy, dh, _dmean, _drstd):
    saved_x, weight, mean, rstd = ctx.saved_tensors
    n_norm_dims, eps, weight_offset, is_rms, backend = ctx.args
    need_x, need_residual, need_weight, need_bias = ctx.needs_input_grad[:4]
    if dy is None:
        dy = torch.zeros(saved_x.shape, dtype=ctx.x_dtype, device=saved_x.device)
    dh = dh if ctx.fused else None
    dweight_dtype = weight.dtype if need_weight else None
    dbias_dtype = ctx.bias_dtype if need_bias else None
    if torch.is_grad_enabled():
        dnorm, dweight, dbias = _differentiable_bwd(
            dy, saved_x, weight, dh, n_norm_dims, eps, weight_offset, is_rms, need_bias
        )
        dweight = None if dweight is None else dweight.to(weight.dtype)
        dbias = None if dbias is None else dbias.to(ctx.bias_dtype)
    else:
        dnorm, dweight, dbias = norm_bwd(
            dy,
            saved_x,
            weight,
            mean,
            rstd,
            dh,
            n_norm_dims,
            weight_offset,
            is_rms,
            dweight_dtype,
            dbias_dtype,
            backend,
        )
    dx = dnorm.to(ctx.x_dtype) if need_x else None
    dresidual = dnorm.to(ctx.residual_dtype) if ctx.fused and need_residual else None
    return (
        dx,
        dresidual,
        dweight if need_weight else None,
        dbias if need_bias else None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(f"{_LIB}::norm_fwd", _backward, setup_context=_setup_context)
# torch.nn.LayerNorm and RMSNorm run in float32 under CUDA autocast; so do these ops. CPU
# autocast leaves both in the input's dtype, which is what an op without a rule does.
torch.library.register_autocast(f"{_LIB}::norm_fwd", "cuda", torch.float32)
