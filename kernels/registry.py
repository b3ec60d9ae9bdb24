"""The seam between the kernels and the tools that inspect them: every jit kernel, what it
computes, the role of each pointer argument, and one launch path that tools can intercept.

The launchers launch through :func:`launch`; the traffic report (which runs the kernels in
Triton's interpreter and counts every byte) and the compile report (which records launches
on ``meta`` tensors and compiles them offline) hook :func:`intercepted` instead of patching
kernel objects, and name tensors by the roles declared here instead of by argument names.

Roles (:data:`ROLES`) name what a pointer argument holds, in the math of
:mod:`layernorm_gpu.reference`: ``x`` (the norm's input; h when the backward follows a fused
add), ``residual``, ``h`` (``x + residual``), ``y``, ``weight``, ``bias``, ``mean``, ``rstd``,
``dy``, ``dh`` (gradient of h), ``dx``, ``dw_partial`` / ``db_partial`` (one float32 row per
single-block backward program), ``c_scratch`` (each row's c1, c2 for the column-parallel
backward), ``dw_acc`` / ``db_acc`` (the looped backward's running float32 dW / dB, one row, where a
slice is wider than one tile),
``dweight``, ``dbias`` (stored by the partial sum, the looped backward or the backward's columns
launch).

Importing this module does not import Triton; :data:`KERNELS` (every kernel) does.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ROLES = (
    "x",
    "residual",
    "h",
    "y",
    "weight",
    "bias",
    "mean",
    "rstd",
    "dy",
    "dh",
    "dx",
    "dw_partial",
    "db_partial",
    "c_scratch",
    "dw_acc",
    "db_acc",
    "dweight",
    "dbias",
)
# Tensors whose rows are addressed ``row * stride`` or ``row * n_cols``.
ROW_ADDRESSED_ROLES = frozenset(
    {"x", "residual", "h", "y", "dy", "dh", "dx", "dw_partial", "db_partial"}
)


@dataclass(frozen=True)
class Kernel:
    """One ``@triton.jit`` kernel and how to read its arguments.

    Attributes:
        name: stable name for reports (``norm_fwd_single_block``, ...).
        fn: the jit (or, under ``TRITON_INTERPRET=1``, interpreted) kernel. Two entries may
            share one: a kernel whose ``tl.constexpr`` switch changes what its pointers hold
            (the single-block backward and its ``COLUMNS`` launch) is one entry per switch.
        op: ``"fwd"``, ``"bwd"`` or ``"sum_partials"``.
        looped: the row is walked in ``BLOCK_N`` chunks (wide rows), not held whole.
        pointers: pointer argument name -> role (see the module docstring).
        row_scales: integer arguments that multiply a row index into an address (strides,
            ``n_cols``): such products must be 64-bit.
        programs_walk_rows: row indices derive from the program id (every kernel but the
            partial sum and the backward's ``COLUMNS`` launch, whose programs own columns and,
            in the latter, walk every tile of rows): int64 when the launch's ``INT64_ROWS``
            says so.
    """

    name: str
    fn: Any
    op: str
    looped: bool
    pointers: Mapping[str, str]
    row_scales: tuple[str, ...]
    programs_walk_rows: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.pointers.values()) - set(ROLES)
        if unknown:
            raise ValueError(f"{self.name}: pointer roles {sorted(unknown)} not in ROLES")

    @property
    def arg_names(self) -> tuple[str, ...]:
        """Every parameter of the kernel, in order (constexprs included)."""
        return tuple(self.fn.arg_names)


@dataclass(frozen=True)
class Launch:
    """One launch as the launcher made it: ``kernel.fn[grid](*args, **kwargs)``."""

    kernel: Kernel
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict

    def named_args(self) -> dict[str, Any]:
        """Every argument by parameter name (positional ones bound in order)."""
        return {**dict(zip(self.kernel.arg_names, self.args, strict=False)), **self.kwargs}


# A handler gets each launch and a callable that performs it; it may record, wrap or skip it.
LaunchHandler = Callable[[Launch, Callable[[], None]], None]
_handler: LaunchHandler | None = None


def launch(kernel: Kernel, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """Launch ``kernel`` (through the handler of :func:`intercepted`, if one is active)."""
    if _handler is None:
        kernel.fn[grid](*args, **kwargs)
        return
    _handler(Launch(kernel, tuple(grid), args, kwargs), lambda: kernel.fn[grid](*args, **kwargs))


@contextlib.contextmanager
def intercepted(handler: LaunchHandler) -> Iterator[None]:
    """Route every launch of this process through ``handler`` while the context is open (for
    tools: not thread-safe, one handler at a time, the previous one restored on exit)."""
    global _handler
    previous, _handler = _handler, handler
    try:
        yield
    finally:
        _handler = previous


def __getattr__(name: str) -> tuple[Kernel, ...]:
    """``KERNELS``: every kernel (imports the kernel modules, hence Triton, on first use)."""
    if name == "KERNELS":
        modules = [importlib.import_module(f"{__package__}.{m}") for m in ("norm_fwd", "norm_bwd")]
        return tuple(kernel for module in modules for kernel in module.KERNELS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
