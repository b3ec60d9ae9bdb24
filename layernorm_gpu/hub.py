"""Our norms as layers of the ``kernels`` package (the Hugging Face kernel hub convention).

transformers marks its norm classes with ``@use_kernel_forward_from_hub("RMSNorm")`` (Llama,
Mistral, Qwen, OLMo2, ...) or ``("RMSNormZeroCentered")`` (some of the ``1 + w`` norms), and
``kernels.kernelize(model, mode=...)`` replaces the ``forward`` of each marked module by the
``forward`` of the layer its kernel mapping names for that layer name and device. A layer
follows ``kernels``' contract: an ``nn.Module`` subclass with no constructor, no members other
than ``forward``, ``can_torch_compile`` and ``has_backward``, and a ``forward`` taking the
replaced one's arguments; its ``forward`` runs bound to the model's own module, so it reads that
module's ``weight`` and eps attribute (``variance_epsilon`` or ``eps``).

The layers here look the module's class up in :data:`layernorm_gpu.hf.TABLE`, so each class keeps
its own rounding (OLMo2's ``RMSNorm`` is not Llama's), and raise for a class not in the table.
Two ways to map them (``kernels`` >= 0.17):

* in process: ``kernels.use_kernel_mapping(layernorm_gpu.hub.kernel_mapping())``, whose
  repositories (:class:`Repository`) hand ``kernels`` these classes directly;
* as a local kernel repository: :func:`write_local_repository` writes the directory that
  ``kernels.LocalLayerRepository(repo_path=..., layer_name="RMSNorm")`` loads.

Then ``kernels.kernelize(model, mode=kernels.Mode.TRAINING, device="cuda")``. transformers only
marks its classes when it accepts the installed ``kernels`` (5.24 wants >= 0.18.2); for an
unmarked class ``kernels.replace_kernel_forward_from_hub(cls, "RMSNorm")`` marks it. Nothing here
imports ``kernels`` or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import hf

__all__ = ["RMSNorm", "RMSNormZeroCentered", "Repository", "kernel_mapping"]

#: transformers' layer names for its norms
LAYER_NAMES = ("RMSNorm", "RMSNormZeroCentered")


def _forward(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    from .modules import _ConventionNorm

    # a module replace_norms re-classed keeps its original class's convention
    patched = isinstance(module, _ConventionNorm)
    convention = module.convention if patched else hf.convention_of(type(module))
    if convention is None:
        raise TypeError(
            f"layernorm_gpu has no numeric convention for {hf.class_path(type(module))}: "
            "add it to layernorm_gpu.hf.TABLE after reading its forward"
        )
    backend = module.backend if patched else None
    return hf.norm_forward(module, hidden_states, convention, backend=backend)


class RMSNorm(nn.Module):
    """``kernels`` layer for transformers' ``"RMSNorm"`` classes: the module's own norm, as
    its class's convention computes it, on our ops (backend from ``LAYERNORM_GPU_BACKEND``,
    else ``"auto"``)."""

    can_torch_compile = True
    has_backward = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return _forward(self, hidden_states)


class RMSNormZeroCentered(nn.Module):
    """``kernels`` layer for transformers' ``"RMSNormZeroCentered"`` classes (scale
    ``1 + weight``); see :class:`RMSNorm`."""

    can_torch_compile = True
    has_backward = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)


class Repository:
    """A ``kernels`` repository (its ``RepositoryProtocol``: ``load()`` returns the layer
    class) serving one of this module's layers from the installed package, no download."""

    def __init__(self, layer_name: str) -> None:
        if layer_name not in LAYER_NAMES:
            raise ValueError(f"layer_name must be one of {LAYER_NAMES}, got {layer_name!r}")
        self.layer_name = layer_name

    def load(self) -> type[nn.Module]:
        return globals()[self.layer_name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Repository) and other.layer_name == self.layer_name

    def __hash__(self) -> int:
        return hash((Repository, self.layer_name))

    def __str__(self) -> str:
        return f"layernorm_gpu.hub.{self.layer_name}"


def kernel_mapping(
    devices: tuple[str, ...] = ("cuda", "cpu"),
) -> dict[str, dict[str, Repository]]:
    """A mapping for ``kernels.use_kernel_mapping`` / ``register_kernel_mapping``: every
    layer name of :data:`LAYER_NAMES` to our layer on each of ``devices``."""
    return {name: dict.fromkeys(devices, Repository(name)) for name in LAYER_NAMES}


def write_local_repository(path: str | Path, backends: tuple[str, ...] = ("cpu", "cuda")) -> Path:
    """Write a local kernel repository serving these layers to ``path`` and return it.

    The layout ``kernels.LocalLayerRepository`` reads: one build variant per backend,
    ``build/torch-<backend>/``, each a ``metadata.json`` and an ``__init__.py`` exposing this
    module as ``layers``. The variants hold no code of their own: they import the installed
    ``layernorm_gpu``.
    """
    root = Path(path)
    for backend in backends:
        variant = root / "build" / f"torch-{backend}"
        variant.mkdir(parents=True, exist_ok=True)
        metadata = {
            "id": "layernorm_gpu_hub",
            "name": "layernorm-gpu",
            "version": 1,
            "license": "NOASSERTION",  # the project declares no licence
            "python-depends": [],
            "backend": {"type": backend},
        }
        (variant / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (variant / "__init__.py").write_text(
            '"""layernorm_gpu\'s norms as kernel hub layers."""\n\n'
            "from layernorm_gpu import hub as layers\n\n"
            '__all__ = ["layers"]\n'
        )
    return root
