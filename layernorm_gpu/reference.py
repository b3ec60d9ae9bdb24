"""Exact reference of LayerNorm and RMSNorm: the test oracle, the CPU fallback and the backend
behind every path the kernels do not take (float64, double backward, forward-mode AD).

This module states the math; the kernels cite it. Statistics are per row of ``N`` elements
(the normalised dims); arithmetic is in the accumulation dtype (:func:`~.dtypes.acc_dtype`:
float64 for float64 inputs, else float32) whatever the I/O dtype.

Forward::

    h     = x + residual                 (fused add only; rounded to h's dtype)
    mean  = pivot + mean(h - pivot)      pivot = h[:, 0]: a constant row centres to exactly 0
    var   = mean((h - mean)^2)           two passes, never E[h^2] - E[h]^2
    rstd  = 1 / sqrt(var + eps)          RMSNorm: var = mean(h^2), no mean
    x_hat = (h - mean) * rstd            optionally rounded to x_hat_dtype (the casting rule)
    y     = x_hat * (w + weight_offset) + b

Backward, with ``g = dy * (w + weight_offset)``::

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))   (RMSNorm: no mean(g) term)
         (+ dh, the gradient on the fused output h, before dx's one rounding)
    dw = sum over rows of dy * x_hat
    db = sum over rows of dy

The 2-D functions (:func:`forward`, :func:`backward`, :func:`rms_forward`,
:func:`rms_backward`) take ``(rows, N)`` tensors; :func:`norm_fwd` and :func:`norm_bwd` have the
kernel launchers' signature (N-D tensors, fused add, casting) and are the reference backend.
Every op is differentiable (the double-backward and forward-AD paths run these under autograd);
outside autograd they update their own temporaries in place, since on CPU each new full-size
tensor costs page faults worth several elementwise passes. Weights may broadcast against the
rows (``(*batch, N)``), which is how a vmapped weight is normalised.
"""

from __future__ import annotations

import math

import torch

from .dtypes import acc_dtype

__all__ = [
    "backward",
    "forward",
    "norm_bwd",
    "norm_bwd_differentiable",
    "norm_fwd",
    "norm_jvp",
    "rms_backward",
    "rms_forward",
]

# Column sums outside autograd multiply each chunk of this many rows by its row factors (rstd, or
# ones) in one batched matrix product, then add the chunks' sums with torch's pairwise sum: one
# read pass at about twice the speed of sum(dim=0) on CPU, with the row factor applied for free.
# Chains of 16 float32 terms keep sum(dim=0)'s error (64: 1.2x, and one matrix-vector product
# over all rows, a chain as long as there are rows, 10x at 4096 rows).
_COLUMN_CHUNK = 16

# Sums of squares are taken over chunks of this many elements, then the chunk sums are added by
# torch's (pairwise) sum: vector_norm alone accumulates a whole row sequentially (2e-5 relative
# error at 2**20 elements), the chunked sum stays at float32 rounding (6e-9) at its speed.
_SQUARE_SUM_CHUNK = 256


def _may_write_in_place() -> bool:
    """Whether intermediates may be written in place (``out=``, ``add_``, ``copy_``): no
    autograd graph records them, no forward-mode AD level carries tangents through them and no
    ``torch.func`` transform wraps them (vmap has no batching rule for ``out=`` ops, and an outer
    level's batched or dual value cannot be written into a plain tensor)."""
    return (
        not torch.is_grad_enabled()
        and torch.autograd.forward_ad._current_level < 0
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def _sum_of_squares(c: torch.Tensor) -> torch.Tensor:
    """Row sums of ``c * c`` (over the last dim)."""
    if not _may_write_in_place():
        # vector_norm's gradient at a zero row is NaN: square explicitly (differentiable path)
        return (c * c).sum(dim=-1)
    n = c.shape[-1]
    whole = n - n % _SQUARE_SUM_CHUNK
    total = c.new_zeros(c.shape[:-1])
    if whole:
        chunks = c[..., :whole].unflatten(-1, (whole // _SQUARE_SUM_CHUNK, _SQUARE_SUM_CHUNK))
        total += torch.linalg.vector_norm(chunks, dim=-1).square().sum(dim=-1)
    if whole < n:
        total += torch.linalg.vector_norm(c[..., whole:], dim=-1).square()
    return total


def _forward(x, weight, bias, eps, is_rms, weight_offset, x_hat_dtype=None):
    """``(y, mean, rstd)`` of rows ``x (..., N)`` in the accumulation dtype (mean None for
    RMSNorm); weight and bias broadcast into x's shape."""
    acc = acc_dtype(x.dtype)
    in_place = _may_write_in_place()
    xf = x.to(acc)
    n = x.shape[-1]
    mean = None
    if is_rms:
        rstd = torch.rsqrt(_sum_of_squares(xf) / n + eps)
        y = xf * rstd[..., None]
    else:
        pivot = xf[..., :1] if n > 0 else xf.new_zeros((*x.shape[:-1], 1))
        centred = xf - pivot
        mean = pivot + centred.mean(dim=-1, keepdim=True)
        # x - mean in one rounding (not (x - pivot) - mean_shifted, which rounds twice)
        centred = torch.sub(xf, mean, out=centred) if in_place else xf - mean
        mean = mean.squeeze(-1)
        rstd = torch.rsqrt(_sum_of_squares(centred) / n + eps)
        y = centred.mul_(rstd[..., None]) if in_place else centred * rstd[..., None]
    if x_hat_dtype is not None:
        y = y.to(x_hat_dtype).to(acc)
    scale = None if weight is None else weight.to(acc) + weight_offset
    shift = None if bias is None else bias.to(acc)
    if in_place and scale is not None and shift is not None:
        y = torch.addcmul(shift, y, scale, out=y)  # one pass for both
    else:
        if scale is not None:
            y = y.mul_(scale) if in_place else y * scale
        if shift is not None:
            y = y.add_(shift) if in_place else y + shift
    return y, mean, rstd


def _column_sum(t: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over all rows of ``t (..., N)``: ``(N,)``."""
    return t.reshape(math.prod(t.shape[:-1]), n).sum(dim=0)


def _float32_matmul_is_exact() -> bool:
    """Whether float32 matrix products round as float32 (torch's default), not through TF32 or
    bfloat16 (``torch.set_float32_matmul_precision`` or a backend's ``fp32_precision``)."""
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # backends set apart (torch >= 2.9): some of them reduce precision
        return False


def _weighted_column_sum(t: torch.Tensor, row_factor: torch.Tensor | None) -> torch.Tensor:
    """Sum over all rows of ``t (..., N)``, each row times ``row_factor (..., 1)`` (ones when
    None): ``(N,)``, in one read pass (see :data:`_COLUMN_CHUNK`)."""
    n = t.shape[-1]
    rows = t.reshape(math.prod(t.shape[:-1]), n)
    if not rows.is_contiguous() or (t.dtype == torch.float32 and not _float32_matmul_is_exact()):
        # broadcast strides (an expanded dy: no copy), or products in reduced precision
        return _column_sum(rows if row_factor is None else rows * row_factor.reshape(-1, 1), n)
    factor = rows.new_ones(rows.shape[0]) if row_factor is None else row_factor.reshape(-1)
    whole = rows.shape[0] - rows.shape[0] % _COLUMN_CHUNK
    total = factor[whole:] @ rows[whole:]
    if whole:
        n_chunks = whole // _COLUMN_CHUNK  # explicit: -1 is ambiguous for empty rows (n = 0)
        chunks = torch.bmm(
            factor[:whole].view(n_chunks, 1, _COLUMN_CHUNK),
            rows[:whole].view(n_chunks, _COLUMN_CHUNK, n),
        )
        total += chunks.sum(dim=0).squeeze(0)
    return total


def _row_dot(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Per-row ``sum(t * scale)`` (keepdim), without a full-size temporary when ``scale`` is
    one vector (a matrix-vector product)."""
    if scale is None:
        return t.sum(dim=-1, keepdim=True)
    if scale.dim() == 1:
        return (t @ scale)[..., None]
    return (t * scale).sum(dim=-1, keepdim=True)


def _backward(
    dy, x, weight, mean, rstd, is_rms, weight_offset, need_dweight, need_dbias, bias=None,
    x_is_y=False,
):  # fmt: skip
    """``(dx, dweight, dbias)`` of rows ``x (..., N)``, all in the accumulation dtype; dweight
    and dbias only when asked for. With ``x_is_y``, ``x`` is the forward's output y and x_hat
    is recomputed from it: ``(y - b) / (w + weight_offset)`` (the memory-efficient backward)."""
    acc = acc_dtype(x.dtype)
    xf, dyf = x.to(acc), dy.to(acc)
    rstd = rstd.to(acc)[..., None]
    mean = None if is_rms or x_is_y else mean.to(acc)[..., None]
    scale = None if weight is None else weight.to(acc) + weight_offset
    shift = None if bias is None or not x_is_y else bias.to(acc)
    n = x.shape[-1]
    dweight = dbias = None

    def unscaled_x_hat_into(out):
        """x_hat without its row factor (``x_hat = t * row_factor``): x - mean written into
        ``out`` (LayerNorm), x itself (RMSNorm: nothing written), or x_hat written into ``out``
        (``x_is_y``: no row factor)."""
        if x_is_y:
            t = out.copy_(xf) if shift is None else torch.sub(xf, shift, out=out)
            return t if scale is None else t.div_(scale)
        return xf if is_rms else torch.sub(xf, mean, out=out)

    if not _may_write_in_place():
        # the formulas as written, differentiable (the double-backward path)
        if x_is_y:
            x_hat = (xf if shift is None else xf - shift) / (1.0 if scale is None else scale)
        else:
            x_hat = (xf if is_rms else xf - mean) * rstd
        g = dyf if scale is None else dyf * scale
        dx = g - x_hat * (g * x_hat).mean(dim=-1, keepdim=True)
        if not is_rms:
            dx = dx - g.mean(dim=-1, keepdim=True)
        dx = dx * rstd
        if need_dweight:
            dweight = _column_sum(dyf * x_hat, n)
        if need_dbias:
            dbias = _column_sum(dyf, n)
    else:
        # the same formulas through one new buffer (see the module docstring on allocations).
        # rstd multiplies the row and column sums of dy * t, not t itself: a pass saved
        row_factor = None if x_is_y else rstd
        buf = torch.empty(x.shape, dtype=acc, device=x.device)
        t = unscaled_x_hat_into(buf)
        prod = torch.mul(t, dyf, out=buf) if t is xf else t.mul_(dyf)  # dy * t
        if need_dweight:
            dweight = _weighted_column_sum(prod, row_factor)
        c1 = _row_dot(prod, scale).div_(n)  # mean(g * t), g = dy * scale
        if row_factor is not None:
            c1.mul_(row_factor)  # mean(g * x_hat)
        # dx = rstd * (g - c2 - x_hat * c1) with c2 = mean(g) (LayerNorm) and
        # x_hat * c1 = t * (row_factor * c1)
        factor = -c1 if row_factor is None else -(row_factor * c1)
        t = unscaled_x_hat_into(buf)
        dx = torch.mul(t, factor, out=buf) if t is xf else t.mul_(factor)
        if not is_rms:
            dx.sub_(_row_dot(dyf, scale).div_(n))
        if scale is None:
            dx.add_(dyf)  # + g
        else:
            dx.addcmul_(dyf, scale)  # + g
        dx.mul_(rstd)
        if need_dbias:
            dbias = _weighted_column_sum(dyf, None)
    return dx, dweight, dbias


def forward(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm forward of 2-D ``x``.

    Args:
        x: ``(rows, N)``. weight, bias: ``(N,)`` or None. eps: added to the variance.
        weight_offset: y uses ``weight + weight_offset`` (1.0 for Gemma-style norms).

    Returns:
        ``(y, mean, rstd)``: y ``(rows, N)`` in x's dtype; mean and rstd ``(rows,)`` in the
        accumulation dtype.
    """
    y, mean, rstd = _forward(x, weight, bias, eps, False, weight_offset)
    return y.to(x.dtype), mean, rstd


def backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    has_bias: bool = True,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """LayerNorm backward of 2-D ``x`` from the forward's ``mean`` and ``rstd``.

    Returns:
        ``(dx, dweight, dbias)``: dx ``(rows, N)`` in x's dtype; dweight (None without weight)
        and dbias (None unless ``has_bias``) ``(N,)`` in the accumulation dtype.
    """
    dx, dweight, dbias = _backward(
        dy, x, weight, mean, rstd, False, weight_offset, weight is not None, has_bias
    )
    return dx.to(x.dtype), dweight, dbias


def rms_forward(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, weight_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm forward of 2-D ``x``: ``(y, rstd)``, conventions as :func:`forward`."""
    y, _, rstd = _forward(x, weight, None, eps, True, weight_offset)
    return y.to(x.dtype), rstd


def rms_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm backward of 2-D ``x``: ``(dx, dweight)``, conventions as :func:`backward`."""
    dx, dweight, _ = _backward(
        dy, x, weight, None, rstd, True, weight_offset, weight is not None, False
    )
    return dx.to(x.dtype), dweight


def _rows(t: torch.Tensor | None, n_norm_dims: int) -> torch.Tensor | None:
    """``t`` with its trailing ``n_norm_dims`` dims merged into one (a view when it can)."""
    if t is None or n_norm_dims == 1:
        return t
    return t.flatten(t.dim() - n_norm_dims)


def norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    n_norm_dims: int,
    eps: float,
    is_rms: bool,
    weight_offset: float,
    h_dtype: torch.dtype | None,
    y_dtype: torch.dtype,
    x_hat_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The forward over the rows of ``x`` (its last ``n_norm_dims`` dims are one row), with the
    kernel launcher's signature.

    Args:
        x: ``(*lead, *norm)``. residual: x's shape or None (then h is not formed).
        weight, bias: ``norm`` shape, or broadcastable ``(*batch, *norm)``, or None.
        h_dtype: dtype of ``h = x + residual``. y_dtype: y's dtype. x_hat_dtype: rounding point
            of x_hat before the weight (None: none).

    Returns:
        ``(y, h, mean, rstd)``: y ``x.shape`` in y_dtype and h in h_dtype (None without
        residual), both new contiguous tensors; mean and rstd ``(n_rows,)`` in the accumulation
        dtype of the norm input (mean an empty ``(0,)`` tensor for RMSNorm).
    """
    h = None
    norm_input = x
    if residual is not None:
        h = x.to(h_dtype) + residual.to(h_dtype)
        h = _as_output(h, x.shape, h_dtype)
        norm_input = h
    y, mean, rstd = _forward(
        _rows(norm_input, n_norm_dims),
        _rows(weight, n_norm_dims),
        _rows(bias, n_norm_dims),
        eps,
        is_rms,
        weight_offset,
        x_hat_dtype,
    )
    if mean is None:
        mean = rstd.new_empty(0)
    return _as_output(y, x.shape, y_dtype), h, mean.reshape(-1), rstd.reshape(-1)


def norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dh: torch.Tensor | None,
    *,
    n_norm_dims: int,
    is_rms: bool,
    weight_offset: float,
    dweight_dtype: torch.dtype | None,
    dbias_dtype: torch.dtype | None,
    bias: torch.Tensor | None = None,
    x_is_y: bool = False,
    dx_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The backward over the rows of ``x`` (the norm's input: h when fused; or, with
    ``x_is_y``, the forward's output y, from which x_hat is recomputed with ``bias``), with
    the kernel launcher's signature.

    Args:
        dy: gradient of y, ``x.shape``. mean, rstd: the forward's (any shape with ``n_rows``
            elements; mean unused for RMSNorm). dh: gradient on the fused output h, or None.
        dweight_dtype / dbias_dtype: dtype of dW / dB, or None to skip that gradient.
        dx_dtype: dx's dtype (default x's).

    Returns:
        ``(dx, dweight, dbias)``: dx ``x.shape`` in dx_dtype (``+ dh`` before its one
        rounding), a new contiguous tensor; dW / dB in the ``norm`` shape, or None.
    """
    lead = x.shape[: x.dim() - n_norm_dims]
    norm_shape = x.shape[x.dim() - n_norm_dims :]
    dx, dweight, dbias = _backward(
        _rows(dy, n_norm_dims),
        _rows(x, n_norm_dims),
        _rows(weight, n_norm_dims),
        None if is_rms or x_is_y else mean.reshape(lead),
        rstd.reshape(lead),
        is_rms,
        weight_offset,
        dweight_dtype is not None,
        dbias_dtype is not None,
        _rows(bias, n_norm_dims),
        x_is_y,
    )
    if dh is not None:
        dx = dx + _rows(dh, n_norm_dims)
    return (
        _as_output(dx, x.shape, dx_dtype or x.dtype),
        None if dweight is None else dweight.reshape(norm_shape).to(dweight_dtype),
        None if dbias is None else dbias.reshape(norm_shape).to(dbias_dtype),
    )


def _as_output(t: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (a temporary of this module) as a new contiguous ``shape`` tensor of ``dtype``, in
    at most one pass, never a view (a custom op's output that is a view cannot be modified in
    place under autograd, which torch's own norms allow)."""
    if t.dtype == dtype and t.shape == shape and t.is_contiguous() and t._base is None:
        return t
    if not _may_write_in_place():  # out of place, for autograd and torch.func
        t = t.reshape(shape)
        if t.dtype != dtype:  # a new tensor
            return t.to(dtype, memory_format=torch.contiguous_format)
        return t.clone(memory_format=torch.contiguous_format)
    return torch.empty(shape, dtype=dtype, device=t.device).copy_(t.reshape(shape))


def norm_bwd_differentiable(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    dh: torch.Tensor | None,
    *,
    n_norm_dims: int,
    eps: float,
    is_rms: bool,
    weight_offset: float,
    need_dweight: bool,
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`norm_bwd` as differentiable torch ops of dy, x and the weight, with the statistics
    recomputed from x inside the graph (so their own dependence on x is differentiated too): the
    path for double backward and for torch.func transforms over the backward.

    Returns ``(dx, dweight, dbias)`` in the accumulation dtype (dx ``x.shape``, dW / dB the
    ``norm`` shape, or None when not asked for); the caller rounds them.
    """
    with torch.enable_grad():
        rows = _rows(x, n_norm_dims)
        _, mean, rstd = _forward(rows, None, None, eps, is_rms, 0.0)
        dx, dweight, dbias = _backward(
            _rows(dy, n_norm_dims),
            rows,
            _rows(weight, n_norm_dims),
            mean,
            rstd,
            is_rms,
            weight_offset,
            need_dweight,
            need_dbias,
        )
    norm_shape = x.shape[x.dim() - n_norm_dims :]
    if dh is not None:
        dx = dx + _rows(dh, n_norm_dims)
    return (
        dx.reshape(x.shape),
        None if dweight is None else dweight.reshape(norm_shape),
        None if dbias is None else dbias.reshape(norm_shape),
    )


def norm_jvp(
    h_tangent: torch.Tensor | None,
    weight_tangent: torch.Tensor | None,
    bias_tangent: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    n_norm_dims: int,
    is_rms: bool,
    weight_offset: float,
) -> torch.Tensor:
    """Forward-mode derivative of y, in the accumulation dtype, ``x.shape``.

    ``x`` is the norm's input (h when fused) and ``h_tangent`` its tangent. The Jacobian of
    ``x -> x_hat`` is symmetric, so the tangent of x_hat is the backward's dx formula (without
    weight) applied to the input tangent::

        x_hat' = rstd * (h' - mean(h') - x_hat * mean(h' * x_hat))   (RMSNorm: no mean(h'))
        y'     = x_hat' * (w + weight_offset) + x_hat * w' + b'

    Rounding points (the casting rule) have derivative one.
    """
    acc = acc_dtype(x.dtype)
    lead = x.shape[: x.dim() - n_norm_dims]
    rows = _rows(x, n_norm_dims).to(acc)
    rstd = rstd.reshape(lead).to(acc)[..., None]
    x_hat = (rows if is_rms else rows - mean.reshape(lead).to(acc)[..., None]) * rstd
    y_tangent = torch.zeros_like(x_hat)
    if h_tangent is not None:
        t = _rows(h_tangent, n_norm_dims).to(acc)
        x_hat_tangent = t - x_hat * (t * x_hat).mean(dim=-1, keepdim=True)
        if not is_rms:
            x_hat_tangent = x_hat_tangent - t.mean(dim=-1, keepdim=True)
        x_hat_tangent = x_hat_tangent * rstd
        if weight is not None:
            x_hat_tangent = x_hat_tangent * (_rows(weight, n_norm_dims).to(acc) + weight_offset)
        y_tangent = y_tangent + x_hat_tangent
    if weight_tangent is not None:
        y_tangent = y_tangent + x_hat * _rows(weight_tangent, n_norm_dims).to(acc)
    if bias_tangent is not None:
        y_tangent = y_tangent + _rows(bias_tangent, n_norm_dims).to(acc)
    return y_tangent.reshape(x.shape)
