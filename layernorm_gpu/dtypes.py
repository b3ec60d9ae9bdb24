"""The dtype rules, each written once: accumulation, fused-add ``h``, outputs under each casting
convention, and RMSNorm's default eps. Everything else (the ops, their fake kernels, the
reference, the kernels' launchers) asks here."""

from __future__ import annotations

from typing import Literal

import torch

Casting = Literal["torch", "llama", "t5"]
CASTINGS: tuple[str, ...] = ("torch", "llama", "t5")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic (and saved mean/rstd) dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def h_dtype(x: torch.dtype, residual: torch.dtype, residual_in_fp32: bool) -> torch.dtype:
    """dtype of ``h = x + residual``: PyTorch's promotion, at least float32 if asked."""
    dtype = torch.promote_types(x, residual)
    return torch.promote_types(dtype, torch.float32) if residual_in_fp32 else dtype


def output_dtypes(
    x: torch.dtype, norm_input: torch.dtype, weight: torch.dtype | None, casting: str
) -> tuple[torch.dtype, torch.dtype | None]:
    """``(y_dtype, x_hat_dtype)`` of a norm under ``casting``; ``x_hat_dtype`` is where x_hat is
    rounded before the weight multiplies it (None: never, the arithmetic stays in float32).

    ``norm_input`` is the dtype of what is normalised (h's when fused, else x's).

    * ``"torch"``: y in x's dtype, rounded once (torch's layer_norm / rms_norm; Gemma's
      ``x_hat * (1 + w)`` in float32 is this with ``weight_offset=1``).
    * ``"llama"``: x_hat rounded to the norm input's dtype, then times the weight; y in
      ``promote_types(norm_input, weight)`` (Llama, Mistral, Qwen, ... RMSNorm).
    * ``"t5"``: x_hat rounded to the weight's dtype when that is 16-bit, then times the weight;
      y in the weight's dtype if 16-bit, else ``promote_types(norm_input, float32, weight)``.
    """
    if casting == "torch":
        return x, None
    if casting == "llama":
        if weight is None:
            return norm_input, norm_input
        return torch.promote_types(norm_input, weight), norm_input
    if casting == "t5":
        if weight in HALF_DTYPES:
            return weight, weight
        y = torch.promote_types(norm_input, torch.float32)
        return (y if weight is None else torch.promote_types(y, weight)), None
    raise ValueError(f"casting must be one of {CASTINGS}, got {casting!r}")


def check_casting(casting: str) -> str:
    """``casting`` if it names a convention, else a ValueError naming the choices."""
    if casting not in CASTINGS:
        raise ValueError(f"casting must be one of {CASTINGS}, got {casting!r}")
    return casting


def rms_eps(dtype: torch.dtype, eps: float | None) -> float:
    """eps=None: the machine epsilon of the arithmetic dtype (``torch.nn.functional.rms_norm``)."""
    return float(eps) if eps is not None else torch.finfo(acc_dtype(dtype)).eps
