"""Drop-in modules: ``LayerNorm`` and ``RMSNorm`` subclass ``torch.nn.LayerNorm`` /
``torch.nn.RMSNorm``, so constructor, attributes, parameter names, initialisation, state_dict
keys and ``isinstance`` checks are torch's own (``reset_parameters`` and ``extra_repr`` extend
torch's for our two keyword-only options); ``forward`` runs our ops. ``replace_norms`` swaps
them into an existing model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import functional as F
from .dispatch import check_backend
from .dtypes import Casting, check_casting

__all__ = ["LayerNorm", "RMSNorm", "replace_norms"]


class _OurOptions:
    """What our modules add to torch's: keyword-only ``weight_offset`` (with a zero-initialised
    weight when it is non-zero), ``casting``, ``memory_efficient`` and ``backend`` (validated
    when the module is built), in ``reset_parameters`` and ``extra_repr``. The class
    attributes are the defaults, so a torch module re-classed in place (:func:`replace_norms`)
    behaves as built with them.

    The repr names the class ``layernorm_gpu.LayerNorm`` / ``layernorm_gpu.RMSNorm``, so a
    printed model shows which norms are ours. TorchScript is not supported (the forward runs
    Python dispatch and custom ops): ``torch.jit.script`` raises, naming ``torch.compile`` and
    ``torch.export``, which are.
    """

    weight: nn.Parameter | None
    weight_offset: float = 0.0
    casting: str = "torch"
    memory_efficient: bool = False
    backend: str | None = None

    def _set_options(
        self, weight_offset: float, casting: str, memory_efficient: bool, backend: str | None
    ) -> None:
        self.weight_offset = float(weight_offset)
        self.casting = check_casting(casting)
        self.memory_efficient = bool(memory_efficient)
        self.backend = check_backend(backend)

    def reset_parameters(self) -> None:
        super().reset_parameters()  # type: ignore[misc]
        if self.weight is not None and self.weight_offset != 0.0:
            nn.init.zeros_(self.weight)

    def extra_repr(self) -> str:
        text = super().extra_repr()  # type: ignore[misc]
        if self.weight_offset != 0.0:
            text += f", weight_offset={self.weight_offset}"
        if self.casting != "torch":
            text += f", casting={self.casting!r}"
        if self.memory_efficient:
            text += ", memory_efficient=True"
        if self.backend is not None:
            text += f", backend={self.backend!r}"
        return text

    def _get_name(self) -> str:
        return f"layernorm_gpu.{type(self).__name__}"

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"torch.jit.script does not support layernorm_gpu.{type(self).__name__}: its "
            "forward dispatches in Python to custom ops. Use torch.compile (or torch.export) "
            "instead, which run it without graph breaks."
        )


class LayerNorm(_OurOptions, nn.LayerNorm):
    """``torch.nn.LayerNorm`` running :func:`layernorm_gpu.layer_norm`.

    Extra keyword-only arguments: ``weight_offset`` (scale by ``weight + weight_offset``; with a
    non-zero offset the weight is initialised to zeros so the effective scale starts at 1, as in
    Gemma), ``casting`` and ``memory_efficient`` (see :mod:`layernorm_gpu.functional`) and
    ``backend`` (see :mod:`layernorm_gpu.dispatch`).
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int] | torch.Size,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_offset: float = 0.0,
        casting: Casting = "torch",
        memory_efficient: bool = False,
        backend: str | None = None,
    ) -> None:
        self._set_options(weight_offset, casting, memory_efficient, backend)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x,
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            weight_offset=self.weight_offset,
            casting=self.casting,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
        )


class RMSNorm(_OurOptions, nn.RMSNorm):
    """``torch.nn.RMSNorm`` running :func:`layernorm_gpu.rms_norm`; extra keyword-only
    ``weight_offset``, ``casting``, ``memory_efficient`` and ``backend`` as in
    :class:`LayerNorm`."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int] | torch.Size,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_offset: float = 0.0,
        casting: Casting = "torch",
        memory_efficient: bool = False,
        backend: str | None = None,
    ) -> None:
        self._set_options(weight_offset, casting, memory_efficient, backend)
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(
            x,
            self.normalized_shape,
            self.weight,
            self.eps,
            weight_offset=self.weight_offset,
            casting=self.casting,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
        )


def _swap(module: nn.Module, backend: str | None) -> nn.Module:
    """Ours for a ``torch.nn.LayerNorm`` / ``RMSNorm`` (exactly those classes: a subclass may
    have its own forward), sharing its parameters; anything else unchanged."""
    if type(module) is nn.LayerNorm:
        new: nn.Module = LayerNorm(
            module.normalized_shape,
            module.eps,
            module.elementwise_affine,
            bias=module.bias is not None,
            device="meta",
            backend=backend,
        )
    elif type(module) is nn.RMSNorm:
        new = RMSNorm(
            module.normalized_shape,
            module.eps,
            module.elementwise_affine,
            device="meta",
            backend=backend,
        )
    else:
        return module
    # the very same Parameter objects: optimizer state and weight tying stay valid
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    new.train(module.training)
    return new


def replace_norms(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Swap every ``torch.nn.LayerNorm`` / ``torch.nn.RMSNorm`` in ``model`` for ours, in place.

    The new modules hold the same parameter tensors, so an optimizer built before the swap
    keeps working; a norm registered under several names stays one (shared) module. Returns
    ``model`` (or its replacement, if ``model`` itself is a norm).
    """
    swapped: dict[int, nn.Module] = {}

    def visit(parent: nn.Module) -> None:
        # _modules, not named_children(): the latter skips a module's second name
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in swapped:
                swapped[id(child)] = _swap(child, backend)
                if swapped[id(child)] is child:
                    visit(child)
            parent._modules[name] = swapped[id(child)]

    visit(model)
    return _swap(model, backend)
