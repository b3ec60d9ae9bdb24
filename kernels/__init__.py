"""Triton kernels for LayerNorm/RMSNorm, their launchers and launch heuristics.

Installed as ``layernorm_gpu.kernels``; imports inside this package are relative.

- ``heuristics``: the launch configs, pure Python (no Triton, no torch).
- ``norm_fwd`` / ``norm_bwd``: the launchers (and modules holding the jit kernels).
- ``rows``: strided row addressing; ``target``: the GPU a launch runs on; ``occupancy``: the
  resident programs per SM of a compiled kernel (the forward's persistent grid on CUDA).
- ``registry``: every jit kernel and the role of each pointer argument, for the reports.

Importing this package (or ``layernorm_gpu.kernels.heuristics``) does not import Triton: the
launchers ``norm_fwd`` / ``norm_bwd`` load their modules, and Triton, on first use.
"""

from __future__ import annotations

import importlib
import sys
import types

from .heuristics import (
    A100,
    B200,
    H100,
    MI300X,
    MI355X,
    RTX5090,
    TARGETS,
    ColumnsConfig,
    NormConfig,
    PartialSumConfig,
    Target,
)

__all__ = [
    "A100",
    "B200",
    "H100",
    "MI300X",
    "MI355X",
    "RTX5090",
    "TARGETS",
    "ColumnsConfig",
    "NormConfig",
    "PartialSumConfig",
    "Target",
    "norm_bwd",
    "norm_fwd",
]

_LAUNCHERS = ("norm_fwd", "norm_bwd")


def __getattr__(name: str):
    if name in _LAUNCHERS:
        importlib.import_module(f".{name}", __name__)  # binds the launcher (see _Package)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """``kernels.norm_fwd`` is the launcher, never its module of the same name.

    Importing a submodule binds it on its package; for the two launcher modules this binds
    their launcher instead, whoever imports them first (as ``from .norm_fwd import norm_fwd``
    in an eager ``__init__`` would).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAUNCHERS and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
