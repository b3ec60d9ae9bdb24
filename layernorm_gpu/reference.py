"""Exact reference of LayerNorm and RMSNorm: the test oracle and the CPU fallback.

Plain vectorised torch ops written from the closed-form formulas, no autograd inside (but every
op is differentiable, which is how double backward works). ``x`` is 2-D ``(rows, N)`` (more
leading dims are accepted and are rows too); statistics are per row. Arithmetic is float32
for 16-bit and float32 inputs, float64 for float64 inputs ("the accumulation dtype").

Forward::

    mean = pivot + mean(x - pivot)     pivot = x[:, 0]: a constant row centres to exactly 0
    var  = mean((x - mean)^2)          two passes, never E[x^2] - E[x]^2
    rstd = 1 / sqrt(var + eps)         RMSNorm: var = mean(x^2), no mean
    y    = (x - mean) * rstd * w + b

Backward, with ``x_hat = (x - mean) * rstd`` and ``g = dy * w``::

    dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))   (RMSNorm: no mean(g) term)
    dw = sum over rows of dy * x_hat
    db = sum over rows of dy
"""

from __future__ import annotations

import math

import torch

__all__ = ["backward", "forward", "rms_backward", "rms_forward"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sum_of_squares(c: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Row sums of ``c * c``. vector_norm reads c without a temporary, but its gradient at a
    zero row is NaN, so the differentiable path squares explicitly."""
    if in_place:
        return torch.linalg.vector_norm(c, dim=-1).square()
    return (c * c).sum(dim=-1)


def _forward(x, weight, bias, eps, is_rms, weight_offset):
    acc = _acc_dtype(x.dtype)
    # On CPU every new full-size tensor costs page faults worth several elementwise passes, so
    # outside autograd this function updates its own temporaries in place (never an input);
    # with grad enabled (the double-backward path) it stays out of place for autograd.
    in_place = not torch.is_grad_enabled()
    xf = x.to(acc)
    n = x.shape[-1]
    if is_rms:
        mean = xf.new_zeros(x.shape[:-1])
        rstd = torch.rsqrt(_sum_of_squares(xf, in_place) / n + eps)
        y = xf * rstd[..., None]
    else:
        pivot = xf[..., :1] if n > 0 else xf.new_zeros((*x.shape[:-1], 1))
        centred = xf - pivot
        mean_shifted = centred.mean(dim=-1, keepdim=True)
        centred = centred.sub_(mean_shifted) if in_place else centred - mean_shifted
        mean = (pivot + mean_shifted).squeeze(-1)
        rstd = torch.rsqrt(_sum_of_squares(centred, in_place) / n + eps)
        y = centred.mul_(rstd[..., None]) if in_place else centred * rstd[..., None]
    if weight is not None:
        scale = weight.to(acc) + weight_offset
        y = y.mul_(scale) if in_place else y * scale
    if bias is not None:
        y = y.add_(bias.to(acc)) if in_place else y + bias.to(acc)
    return y.to(x.dtype), mean, rstd


def _backward(dy, x, weight, mean, rstd, has_bias, is_rms, weight_offset):
    acc = _acc_dtype(x.dtype)
    xf, dyf = x.to(acc), dy.to(acc)
    mean, rstd = mean.to(acc)[..., None], rstd.to(acc)[..., None]
    scale = None if weight is None else weight.to(acc) + weight_offset
    rows, n = math.prod(x.shape[:-1]), x.shape[-1]
    if torch.is_grad_enabled():
        # the formulas as written, differentiable (the double-backward path)
        x_hat = (xf - mean) * rstd
        g = dyf if scale is None else dyf * scale
        dx = g - x_hat * (g * x_hat).mean(dim=-1, keepdim=True)
        if not is_rms:
            dx = dx - g.mean(dim=-1, keepdim=True)
        dx = dx * rstd
        dweight = None if weight is None else (dyf * x_hat).reshape(rows, n).sum(dim=0)
    else:
        # the same formulas through one new buffer (see _forward on the cost of allocations)
        buf = (xf - mean).mul_(rstd)  # x_hat
        dweight = None
        if scale is not None:
            buf.mul_(dyf)  # dy * x_hat
            dweight = buf.reshape(rows, n).sum(dim=0)
            buf.mul_(scale)  # g * x_hat
        else:
            buf.mul_(dyf)  # g * x_hat, g = dy
        c1 = buf.mean(dim=-1, keepdim=True)
        c2 = None
        if not is_rms:
            g = dyf if scale is None else torch.mul(dyf, scale, out=buf)
            c2 = g.mean(dim=-1, keepdim=True)
        dx = torch.sub(xf, mean, out=buf).mul_(rstd).mul_(-c1)  # -x_hat * c1
        if scale is None:
            dx.add_(dyf)  # + g
        else:
            dx.addcmul_(dyf, scale)  # + g
        if c2 is not None:
            dx.sub_(c2)
        dx.mul_(rstd)
    dbias = dyf.reshape(rows, n).sum(dim=0) if has_bias else None
    return dx.to(x.dtype), dweight, dbias


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
    return _forward(x, weight, bias, eps, False, weight_offset)


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
    return _backward(dy, x, weight, mean, rstd, has_bias, False, weight_offset)


def rms_forward(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, weight_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm forward of 2-D ``x``: ``(y, rstd)``, conventions as :func:`forward`."""
    y, _, rstd = _forward(x, weight, None, eps, True, weight_offset)
    return y, rstd


def rms_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RMSNorm backward of 2-D ``x``: ``(dx, dweight)``, conventions as :func:`backward`."""
    mean = torch.zeros_like(rstd)
    dx, dweight, _ = _backward(dy, x, weight, mean, rstd, False, True, weight_offset)
    return dx, dweight
