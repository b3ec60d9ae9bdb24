"""Functional API: the contracts of ``torch.nn.functional.layer_norm`` / ``rms_norm``, plus the
fused residual add of pre-norm transformers.

Every function validates its inputs (raising before any kernel launch), resolves the backend
(:mod:`layernorm_gpu.dispatch`) and calls the differentiable op (:mod:`layernorm_gpu.autograd`).
Common keyword-only options:

* ``weight_offset``: scale by ``weight + weight_offset`` (1.0 for Gemma-style norms whose
  weight is stored zero-centred).
* ``casting``: where the result is rounded (:func:`layernorm_gpu.dtypes.output_dtypes`):
  ``"torch"`` (default: float32 arithmetic, y rounded once to x's dtype), ``"llama"`` (x_hat
  rounded to the input's dtype before the weight multiplies it, y in the promoted dtype of
  input and weight: Hugging Face's Llama-style RMSNorm), ``"t5"`` (x_hat rounded to a 16-bit
  weight's dtype, y in the weight's dtype: T5LayerNorm).
* ``memory_efficient``: autograd saves y (which the next layer saves anyway) instead of the
  norm's input, and the backward recomputes x_hat from it (LayerNorm ``(y - b) / w``,
  RMSNorm ``y / w``). Used only where that is well conditioned (no zero or vanishing weight
  entry, no bias much larger than its weight: :data:`layernorm_gpu.autograd.RECOMPUTE_MIN_SCALE`),
  checked on every call (a flag copied to the host); elsewhere, and under ``torch.compile``,
  CUDA-graph capture or forward-mode AD, the input is saved as usual. No double backward with it.
* ``backend``: ``"auto"``, ``"triton"`` or ``"reference"``; None reads the environment
  variable ``LAYERNORM_GPU_BACKEND`` (unset or empty: ``"auto"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import autograd
from ._checks import check_inputs
from .dispatch import resolve_backend
from .dtypes import Casting, check_casting, h_dtype, rms_eps

__all__ = ["fused_add_layer_norm", "fused_add_rms_norm", "layer_norm", "rms_norm"]

ShapeLike = int | Sequence[int] | torch.Size


def _norm(x, residual, weight, bias, shape, eps, *, is_rms, residual_in_fp32, weight_offset,
          casting, memory_efficient, backend):  # fmt: skip
    """The differentiable op on validated inputs: ``(y, h)``."""
    y, h, _, _ = autograd.norm_fwd(
        x,
        residual,
        weight,
        bias,
        n_norm_dims=len(shape),
        eps=eps,
        weight_offset=float(weight_offset),
        is_rms=is_rms,
        residual_in_fp32=residual_in_fp32,
        casting=check_casting(casting),
        memory_efficient=bool(memory_efficient),
        backend=resolve_backend(backend, x, residual),
    )
    return y, h


def _start_residual(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The residual of a fused add where the residual stream starts (a pre-norm stack's first
    layer, ``residual=None`` as flash-attention's ``layer_norm_fn`` takes it): zeros of x's
    dtype, so that h = x + 0 follows every dtype rule of a given residual (and, as any sum
    with +0, turns -0.0 into +0.0); one zero row, broadcast to every row (stride 0), which the
    kernels read without a copy."""
    return x.new_zeros(shape).expand(x.shape)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    weight_offset: float = 0.0,
    casting: Casting = "torch",
    memory_efficient: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims of ``input``
    (``torch.nn.functional.layer_norm``'s contract).

    Args:
        input: ``(*, *normalized_shape)``, float16/bfloat16/float32/float64, any strides.
        normalized_shape: the trailing dims normalised together (an int or a sequence of
            ints, as torch takes it).
        weight, bias: ``normalized_shape``, input's dtype (or float32 with 16-bit input), or
            None.
        eps: added to the biased variance.
        weight_offset, casting, memory_efficient, backend: see the module docstring.

    Returns:
        y: ``input.shape``, contiguous, in input's dtype (``casting`` may promote it).
    """
    shape = check_inputs(input, normalized_shape, weight, bias)
    y, _ = _norm(
        input,
        None,
        weight,
        bias,
        shape,
        float(eps),
        is_rms=False,
        residual_in_fp32=False,
        weight_offset=weight_offset,
        casting=casting,
        memory_efficient=memory_efficient,
        backend=backend,
    )
    return y


def rms_norm(
    input: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    weight_offset: float = 0.0,
    casting: Casting = "torch",
    memory_efficient: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """RMSNorm over the trailing ``normalized_shape`` dims of ``input``
    (``torch.nn.functional.rms_norm``'s contract).

    Args:
        input: ``(*, *normalized_shape)``, float16/bfloat16/float32/float64, any strides.
        normalized_shape: the trailing dims normalised together.
        weight: ``normalized_shape``, any float dtype, or None.
        eps: added to the mean square; None means the machine epsilon of the arithmetic dtype
            (float32 unless input is float64).
        weight_offset, casting, memory_efficient, backend: see the module docstring.

    Returns:
        y: ``input.shape``, contiguous, in input's dtype (``casting`` may promote it).
    """
    shape = check_inputs(input, normalized_shape, weight, None)
    y, _ = _norm(
        input,
        None,
        weight,
        None,
        shape,
        rms_eps(input.dtype, eps),
        is_rms=True,
        residual_in_fp32=False,
        weight_offset=weight_offset,
        casting=casting,
        memory_efficient=memory_efficient,
        backend=backend,
    )
    return y


def fused_add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    residual_in_fp32: bool = False,
    weight_offset: float = 0.0,
    casting: Casting = "torch",
    memory_efficient: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; y = layer_norm(h)`` in one pass over x and residual.

    Args:
        x, residual: ``(*, *normalized_shape)``, same shape, any float dtypes and strides;
            residual None where the residual stream starts: h = x + 0 (in h's dtype, below).
        normalized_shape, weight, bias, eps: as :func:`layer_norm`.
        residual_in_fp32: keep h in (at least) float32.
        weight_offset, casting, memory_efficient, backend: see the module docstring.

    Returns:
        ``(y, h)``: h in the dtype of PyTorch's ``x + residual`` (at least float32 if
        ``residual_in_fp32``); y normalises h as stored and has x's dtype. Gradients reach x
        and residual through both y and h.
    """
    shape = check_inputs(x, normalized_shape, weight, bias, residual=residual)
    if residual is None:
        residual = _start_residual(x, shape)
    y, h = _norm(
        x,
        residual,
        weight,
        bias,
        shape,
        float(eps),
        is_rms=False,
        residual_in_fp32=residual_in_fp32,
        weight_offset=weight_offset,
        casting=casting,
        memory_efficient=memory_efficient,
        backend=backend,
    )
    return y, h


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    normalized_shape: ShapeLike,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    residual_in_fp32: bool = False,
    weight_offset: float = 0.0,
    casting: Casting = "torch",
    memory_efficient: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual; y = rms_norm(h)`` in one pass; conventions of
    :func:`fused_add_layer_norm` (``eps=None`` as in :func:`rms_norm`, for h's dtype)."""
    shape = check_inputs(x, normalized_shape, weight, None, residual=residual)
    if residual is None:
        residual = _start_residual(x, shape)
    y, h = _norm(
        x,
        residual,
        weight,
        None,
        shape,
        rms_eps(h_dtype(x.dtype, residual.dtype, residual_in_fp32), eps),
        is_rms=True,
        residual_in_fp32=residual_in_fp32,
        weight_offset=weight_offset,
        casting=casting,
        memory_efficient=memory_efficient,
        backend=backend,
    )
    return y, h
