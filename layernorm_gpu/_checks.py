"""Input validation: every input PyTorch rejects is rejected here, before any kernel launch,
with PyTorch's exception type and a message naming the argument, what was expected and what
was given."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def normalized_shape_tuple(normalized_shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    if isinstance(normalized_shape, int):
        shape: tuple[int, ...] = (normalized_shape,)
    else:
        shape = tuple(normalized_shape)
    if not all(isinstance(d, int | torch.SymInt) for d in shape):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {shape!r}")
    if not shape:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
            f"one element, but got normalized_shape = {list(shape)}"
        )
    return shape


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise NotImplementedError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_inputs(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int] | torch.Size,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    residual: torch.Tensor | None = None,
    is_rms: bool = False,
) -> tuple[int, ...]:
    """Validate a norm call; returns ``normalized_shape`` as a tuple.

    LayerNorm parameters are x's dtype, or all float32 with 16-bit x (PyTorch's mixed mode);
    RMSNorm takes a weight of any float dtype (``torch.nn.functional.rms_norm`` does).
    """
    shape = normalized_shape_tuple(normalized_shape)
    _check_float("x", x)
    if tuple(x.shape[x.dim() - len(shape) :]) != shape or x.dim() < len(shape):
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}"
        )
    named = [("weight", weight), ("bias", bias), ("residual", residual)]
    for name, t in named:
        if t is None:
            continue
        _check_float(name, t)
        if t.device != x.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but got {name} on {t.device} "
                f"and x on {x.device}"
            )
    for name, t in named[:2]:
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(t.shape)} and normalized_shape = {list(shape)}"
            )
    if residual is not None and residual.shape != x.shape:
        raise RuntimeError(
            f"Expected residual to have the shape of x {list(x.shape)}, got {list(residual.shape)}"
        )
    params = [t for t in (weight, bias) if t is not None]
    mixed = any(t.dtype != x.dtype for t in params)
    if (
        not is_rms
        and mixed
        and not (x.dtype in _HALF_DTYPES and all(t.dtype == torch.float32 for t in params))
    ):
        given = ", ".join(f"{n}={t.dtype}" for n, t in named[:2] if t is not None)
        raise RuntimeError(
            f"mixed dtype: weight and bias must have x's dtype ({x.dtype}), or be float32 with "
            f"16-bit x; got {given}"
        )
    return shape
