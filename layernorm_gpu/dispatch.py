"""Backend choice: which implementation runs a call.

``backend`` is ``"auto"``, ``"triton"`` or ``"reference"``; ``None`` (the default everywhere)
reads the environment variable ``LAYERNORM_GPU_BACKEND`` (case-insensitive, surrounding
whitespace ignored; unset or empty means ``"auto"``).

* ``"auto"``: the Triton kernels for float16/bfloat16/float32 CUDA tensors when Triton is
  installed; the reference for everything else (CPU tensors, float64, no Triton).
* ``"triton"``: the kernels, always. On CPU tensors that needs Triton's interpreter
  (``TRITON_INTERPRET=1``), which is how the kernels are tested without a GPU.
* ``"reference"``: the exact torch reference on any device.

Nothing here touches CUDA at import time, and Triton is only looked up, not imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "LAYERNORM_GPU_BACKEND"
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# How many op calls each backend ran ("triton" / "reference"), so tests and users can see
# which path a call took. Counted where the op runs, so compiled graphs count too.
calls: Counter[str] = Counter()


def _interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def check_backend(backend: str | None) -> str | None:
    """``backend`` if it is None or names a backend, else a ValueError naming the choices."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def env_backend() -> str:
    """The backend named by ``LAYERNORM_GPU_BACKEND``: compared case-insensitively after
    stripping whitespace; unset or empty means ``"auto"``."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(
            f"environment variable {ENV_VAR} must be one of {BACKENDS} (or empty), "
            f"got {os.environ[ENV_VAR]!r}"
        )
    return name


def resolve_backend(
    backend: str | None, x: torch.Tensor, residual: torch.Tensor | None = None
) -> str:
    """The implementation (``"triton"`` or ``"reference"``) that runs ``x`` (and the fused
    ``residual``) under ``backend``.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"triton"`` without Triton, on CPU without the interpreter, or on a
            device Triton cannot run.
        TypeError: ``"triton"`` with a dtype the kernels do not take (float64).
    """
    inputs = [x] if residual is None else [x, residual]
    name = check_backend(backend) if backend is not None else env_backend()
    if name == "reference":
        return "reference"
    if name == "auto":
        fits = x.is_cuda and TRITON_AVAILABLE and all(t.dtype in KERNEL_DTYPES for t in inputs)
        return "triton" if fits else "reference"
    if not TRITON_AVAILABLE:
        raise RuntimeError(
            "backend='triton' needs the triton package, which is not installed; "
            "use backend='reference' (or 'auto')"
        )
    for arg, t in zip(("x", "residual")[: len(inputs)], inputs, strict=True):
        if t.dtype in KERNEL_DTYPES:
            continue
        raise TypeError(
            f"backend='triton' takes {arg} of dtype float16, bfloat16 or float32, got {t.dtype}; "
            "use backend='reference' or 'auto', which run float64 through the exact reference"
        )
    if x.device.type == "cpu" and not _interpreter_enabled():
        raise RuntimeError(
            "backend='triton' got a CPU tensor: set the environment variable "
            "TRITON_INTERPRET=1 (at any time before the first kernel call) to run the kernels "
            "in Triton's interpreter, or use backend='reference' (or a CUDA tensor)"
        )
    if x.device.type not in ("cpu", "cuda"):
        raise RuntimeError(
            f"backend='triton' runs on CUDA (or CPU under TRITON_INTERPRET=1), got x on "
            f"{x.device}; use backend='reference'"
        )
    return "triton"
