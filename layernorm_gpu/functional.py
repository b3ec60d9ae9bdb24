"""Functional API: the contracts of ``torch.nn.functional.layer_norm`` / ``rms_norm``, plus the
fused residual add of pre-norm transformers.

Every function validates its inputs (raising before any kernel launch), resolves the backend
(:mod:`layernorm_gpu.dispatch`) and calls the custom op (:mod:`layernorm_gpu.ops`).
``weight_offset`` scales by ``weight + weight_offset`` (1.0 for Gemma-style norms whose weight
is stored zero-centred).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import ops, sharding
from ._checks import check_inputs
from .dispatch import resolve_backend

__all__ = ["fused_add_layer_norm", "fused_add_rms_norm", "layer_norm", "rms_norm"]

ShapeLike = int | Sequence[int] | torch.Size


def _rms_eps(dtype: torch.dtype, eps: float | None) -> float:
    """eps=None: the machine epsilon of the computation dtype (float32 for 16-bit and float32
    inputs, float64 for float64), as ``torch.nn.functional.rms_norm`` does."""
    if eps is not None:
        return float(eps)
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def layer_norm(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    weight_offset: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims of ``x``.

    Args:
        x: ``(*, *normalized_shape)``, float16/bfloat16/float32/float64, any strides.
        weight, bias: ``normalized_shape``, x's dtype (or float32 with 16-bit x), or None.
        eps: added to the biased variance.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``; None reads
            ``LAYERNORM_GPU_BACKEND`` (default ``"auto"``).

    Returns:
        y: ``x.shape`` in x's dtype, contiguous.
    """
    shape = check_inputs(x, normalized_shape, weight, bias)
    sharding.register_if_dtensor(x)
    y, _, _, _ = ops.norm_fwd(
        x,
        None,
        weight,
        bias,
        len(shape),
        float(eps),
        float(weight_offset),
        False,
        False,
        resolve_backend(backend, x),
    )
    return y


def rms_norm(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    weight_offset: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """RMSNorm over the trailing ``normalized_shape`` dims of ``x``
    (``torch.nn.functional.rms_norm``'s contract: ``eps=None`` means the machine epsilon of the
    computation dtype, float32 unless x is float64).

    Returns:
        y: ``x.shape`` in x's dtype, contiguous.
    """
    shape = check_inputs(x, normalized_shape, weight, None, is_rms=True)
    sharding.register_if_dtensor(x)
    y, _, _, _ = ops.norm_fwd(
        x,
        None,
        weight,
        None,
        len(shape),
        _rms_eps(x.dtype, eps),
        float(weight_offset),
        True,
        False,
        resolve_backend(backend, x),
    )
    return y


def fused_add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual_in_fp32: bool = False,
    weight_offset: float = 0.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; y = layer_norm(h)`` in one pass over x and residual.

    Returns:
        ``(y, h)``: h in the dtype of PyTorch's ``x + residual`` (at least float32 if
        ``residual_in_fp32``); y normalises h as stored and has x's dtype. Gradients reach x
        and residual through both y and h.
    """
    shape = check_inputs(x, normalized_shape, weight, bias, residual=residual)
    sharding.register_if_dtensor(x)
    y, h, _, _ = ops.norm_fwd(
        x,
        residual,
        weight,
        bias,
        len(shape),
        float(eps),
        float(weight_offset),
        False,
        residual_in_fp32,
        resolve_backend(backend, x, residual),
    )
    return y, h


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    residual_in_fp32: bool = False,
    weight_offset: float = 0.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; y = rms_norm(h)`` in one pass; conventions of
    :func:`fused_add_layer_norm` (``eps=None`` as in :func:`rms_norm`, for h's dtype)."""
    shape = check_inputs(x, normalized_shape, weight, None, residual=residual, is_rms=True)
    sharding.register_if_dtensor(x)
    eps = _rms_eps(ops.h_dtype(x, residual, residual_in_fp32), eps)
    y, h, _, _ = ops.norm_fwd(
        x,
        residual,
        weight,
        None,
        len(shape),
        eps,
        float(weight_offset),
        True,
        residual_in_fp32,
        resolve_backend(backend, x, residual),
    )
    return y, h
