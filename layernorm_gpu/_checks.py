"""Input validation: every input PyTorch rejects is rejected here, before any kernel launch,
with PyTorch's exception type and a message naming the argument, what was expected and what
was given."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def normalized_shape_tuple(normalized_shape: int | Sequence[int] | torch.Size) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple of ints: anything torch takes (an int or any object with
    ``__index__`` such as ``numpy.int64``, a sequence of them, ``torch.Size``, SymInts)."""
    if _is_int(normalized_shape) or not hasattr(normalized_shape, "__iter__"):
        dims: tuple = (normalized_shape,)
    else:
        dims = tuple(normalized_shape)
    shape = tuple(d if _is_int(d) else _index(d, normalized_shape) for d in dims)
    if not shape:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
            f"one element, but got normalized_shape = {list(shape)}"
        )
    return shape


def _is_int(d: object) -> bool:
    # ints and SymInts pass as they are (under torch.compile a SymInt is an int, and
    # operator.index on it would specialise the shape)
    return isinstance(d, int | torch.SymInt)


def _index(d: object, normalized_shape: object) -> int:
    try:
        return operator.index(d)
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
        ) from None


def _check_float(name: str, t: torch.Tensor, error: type[Exception]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise error(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_inputs(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int] | torch.Size,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    residual: torch.Tensor | None = None,
) -> tuple[int, ...]:
    """Validate a norm call's types, shapes and devices; returns ``normalized_shape`` as a
    tuple. The dtype combination is checked by :func:`check_dtypes` inside the op, after
    autocast has cast the inputs (where torch checks it)."""
    shape = normalized_shape_tuple(normalized_shape)
    # torch: an x of another dtype is an unimplemented kernel, a parameter of another dtype
    # a mixed-dtype RuntimeError (layer_norm; rms_norm casts it, which we do not)
    _check_float("x", x, NotImplementedError)
    if tuple(x.shape[x.dim() - len(shape) :]) != shape or x.dim() < len(shape):
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size{list(x.shape)}"
        )
    named = [("weight", weight), ("bias", bias), ("residual", residual)]
    for name, t in named:
        if t is None:
            continue
        _check_float(name, t, RuntimeError)
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
    return shape


def check_dtypes(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    is_rms: bool = False,
) -> None:
    """LayerNorm parameters are x's dtype, or all float32 with 16-bit x (PyTorch's mixed mode);
    RMSNorm takes a weight of any float dtype (``torch.nn.functional.rms_norm`` does)."""
    params = [t for t in (weight, bias) if t is not None]
    mixed = any(t.dtype != x.dtype for t in params)
    if (
        not is_rms
        and mixed
        and not (x.dtype in _HALF_DTYPES and all(t.dtype == torch.float32 for t in params))
    ):
        given = ", ".join(
            f"{n}={t.dtype}" for n, t in (("weight", weight), ("bias", bias)) if t is not None
        )
        raise RuntimeError(
            f"mixed dtype: weight and bias must have x's dtype ({x.dtype}), or be float32 with "
            f"16-bit x; got {given}"
        )
