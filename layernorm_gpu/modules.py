"""Drop-in modules: ``LayerNorm`` and ``RMSNorm`` subclass ``torch.nn.LayerNorm`` /
``torch.nn.RMSNorm``, so constructor, attributes, parameter names, initialisation, state_dict
keys and ``isinstance`` checks are torch's own (``reset_parameters`` and ``extra_repr`` extend
torch's for our two keyword-only options); ``forward`` runs our ops. ``replace_norms`` makes
the norm modules of an existing model (torch's and the transformers ones listed in
:mod:`layernorm_gpu.hf`) run our ops, in place, and reports what it did."""

from __future__ import annotations

import importlib
import inspect
import re
import types
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeVar, overload

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import functional as F
from . import hf
from .dispatch import check_backend
from .dtypes import Casting, check_casting

__all__ = ["LayerNorm", "RMSNorm", "ReplaceReport", "replace_norms"]


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

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            input,
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

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(
            input,
            self.normalized_shape,
            self.weight,
            self.eps,
            weight_offset=self.weight_offset,
            casting=self.casting,
            memory_efficient=self.memory_efficient,
            backend=self.backend,
        )


# --- replace_norms ---------------------------------------------------------------------------


class _ConventionNorm(nn.Module):
    """Placed first in the bases of a recognised norm class (a transformers ``LlamaRMSNorm``,
    ``GemmaRMSNorm``, ...): ``forward`` runs our ops with the class's :class:`~.hf.Convention`,
    reading the module's own ``weight`` and eps attributes; everything else is the original
    class's, ``isinstance`` checks included."""

    convention: ClassVar[hf.Convention]
    backend: str | None

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        # the original forward's one tensor, by position or by its own name (hidden_states, x)
        given = (*args, *kwargs.values())
        if len(given) != 1:
            raise TypeError(
                f"{type(self).__name__}.forward takes one tensor (the hidden states), got "
                f"{len(args)} positional and {len(kwargs)} keyword arguments"
            )
        (x,) = given
        return hf.norm_forward(self, x, self.convention, self.backend)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        ours = f"layernorm_gpu={self.convention.name!r}"
        if self.backend is not None:
            ours += f", backend={self.backend!r}"
        return f"{text}, {ours}" if text else ours


_PATCHED_PREFIX = "_patched__"
_PATCHED: dict[type, type] = {}


def _patched_class(cls: type) -> type:
    """``cls`` (a recognised norm class) running our ops: our ``LayerNorm`` / ``RMSNorm`` for
    torch's, else a subclass of ``cls`` with :class:`_ConventionNorm` first. Made once per
    class; its qualified name lets pickle find it again (see :func:`__getattr__`)."""
    if cls is nn.LayerNorm:
        return LayerNorm
    if cls is nn.RMSNorm:
        return RMSNorm
    if cls not in _PATCHED:
        path = hf.class_path(cls)

        def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
            return _ConventionNorm.forward(self, *args, **kwargs)

        # the original forward's signature, which kernels.kernelize checks a layer against
        forward.__signature__ = inspect.signature(cls.forward)
        namespace = {
            "forward": forward,
            "convention": hf.TABLE[path],
            "__module__": __name__,
            "__qualname__": _PATCHED_PREFIX + path.replace(".", "__"),
            "__doc__": f"{cls.__name__} running layernorm_gpu's ops (see replace_norms).",
        }
        _PATCHED[cls] = type(cls.__name__, (_ConventionNorm, cls), namespace)
    return _PATCHED[cls]


def __getattr__(name: str) -> type:
    """The patched class a pickle names (``_patched__<module path>__<class>``)."""
    if not name.startswith(_PATCHED_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, cls_name = name[len(_PATCHED_PREFIX) :].replace("__", ".").rpartition(".")
    return _patched_class(getattr(importlib.import_module(module_name), cls_name))


def _reclass(module: nn.Module, backend: str | None) -> None:
    """Turn ``module`` (recognised, maybe parametrized) into its patched class in place.

    A parametrized module's class is ``Parametrized<cls>``, a subclass of ``cls`` holding the
    parametrization properties; it is rebuilt the same way over the patched class, so that
    ``remove_parametrizations`` (which restores ``__bases__[0]``) leaves the patched class.
    """
    cls = type(module)
    if parametrize.is_parametrized(module):
        patched = _patched_class(cls.__bases__[0])
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, (patched,), namespace)
    else:
        module.__class__ = _patched_class(cls)
    # our torch-norm classes take weight_offset and casting from their class defaults
    module.backend = backend


def _runs_hub_layer(module: nn.Module) -> bool:
    """Whether the forward set on ``module`` is one of :mod:`.hub`'s layers (kernelized)."""
    from . import hub

    layers = {getattr(hub, name).forward for name in hub.LAYER_NAMES}
    return getattr(vars(module)["forward"], "__func__", None) in layers


def _hooked_by_accelerate(module: nn.Module) -> bool:
    """Whether ``module``'s instance forward is an accelerate hook (``add_hook_to_module``),
    which calls ``module._old_forward``: the class's own forward, bound."""
    old = vars(module).get("_old_forward")
    return getattr(old, "__func__", None) is _unparametrized_class(module).forward


def _unparametrized_class(module: nn.Module) -> type:
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


# torch norms over channels or groups rather than over the trailing dims of a row
_NOT_ROW_NORMS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
_NOT_ROW_REASON = "normalises over channels or groups, not over the last dims"
_INSTANCE_FORWARD_REASON = (
    "its forward is set on the instance (by a parallel plan, kernels.kernelize or a hook "
    "other than accelerate's), which a new class would not reach: call replace_norms first"
)
# a class name ending in Norm, optionally followed by suffixes (BatchNorm2d, MambaRMSNormGated)
_NORM_LIKE_NAME = re.compile(r"Norm(\dd|[A-Z][a-z]+)*$")


def _why_left_alone(module: nn.Module) -> str | None:
    """Why a module that is not recognised is left alone, or None if it is not norm-like
    (a torch norm, a subclass of a recognised class, or a leaf whose class name ends in
    ``Norm``, or in ``Norm`` and suffixes such as ``NormGated``)."""
    cls = _unparametrized_class(module)
    if isinstance(module, _NOT_ROW_NORMS):
        return _NOT_ROW_REASON
    recognised = next((base for base in cls.__mro__[1:] if hf.convention_of(base)), None)
    if recognised is not None:
        return f"subclass of {hf.class_path(recognised)} (its forward may differ)"
    if _NORM_LIKE_NAME.search(cls.__name__) and not module._modules:
        return "class not in layernorm_gpu.hf.TABLE (its forward was not checked)"
    return None


@dataclass(frozen=True)
class ReplacedNorm:
    """A module ``replace_norms`` swapped: its (first) name in the model, its original class
    path and its convention."""

    name: str
    cls: str
    convention: hf.Convention


@dataclass(frozen=True)
class LeftAlone:
    """A norm-like module ``replace_norms`` did not touch, and why."""

    name: str
    cls: str
    reason: str


@dataclass
class ReplaceReport:
    """What :func:`replace_norms` did; ``str()`` is a readable summary.

    Attributes:
        backend: the backend the replaced modules run on (None: ``LAYERNORM_GPU_BACKEND``).
        replaced: the modules now running our ops (a shared module once).
        left_alone: norm-like modules left as they were, with the reason.
        already_ours: names of modules that were layernorm_gpu's before the call.
    """

    backend: str | None
    replaced: list[ReplacedNorm] = field(default_factory=list)
    left_alone: list[LeftAlone] = field(default_factory=list)
    already_ours: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        """Replaced modules by original class path."""
        return Counter(r.cls for r in self.replaced)

    def __str__(self) -> str:
        head = (
            f"replace_norms: {len(self.replaced)} norm modules now run layernorm_gpu "
            f"(backend={self.backend!r})"
        )
        if not self.replaced:
            head = "replace_norms: NOTHING REPLACED"
            if not self.left_alone and not self.already_ours:
                head += " (no norm modules found)"
        lines = [head]
        conventions = {r.cls: r.convention for r in self.replaced}
        for cls, count in self.counts().items():
            c = conventions[cls]
            lines.append(
                f"  replaced {count:>3} x {cls}  [{c.name}: {c.formula}; casting={c.casting!r}]"
            )
        left: dict[tuple[str, str], list[str]] = {}
        for item in self.left_alone:
            left.setdefault((item.cls, item.reason), []).append(item.name or "<model>")
        for (cls, reason), names in left.items():
            where = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            lines.append(f"  LEFT ALONE {len(names):>3} x {cls}: {reason} ({where})")
        if self.already_ours:
            lines.append(f"  already layernorm_gpu: {len(self.already_ours)}")
        return "\n".join(lines)


_M = TypeVar("_M", bound=nn.Module)


@overload
def replace_norms(
    model: _M, *, backend: str | None = None, report: Literal[False] = False
) -> _M: ...
@overload
def replace_norms(
    model: nn.Module, *, backend: str | None = None, report: Literal[True]
) -> ReplaceReport: ...
def replace_norms(
    model: nn.Module, *, backend: str | None = None, report: bool = False
) -> nn.Module | ReplaceReport:
    """Make every recognised norm module of ``model`` run layernorm_gpu's ops, in place.

    Recognised are ``torch.nn.LayerNorm`` / ``RMSNorm`` and the transformers norms listed in
    :data:`layernorm_gpu.hf.TABLE` (Llama, Mistral, Qwen, Phi3, Gemma, T5, Cohere, OLMo, ...),
    by exact class: a subclass may override ``forward`` and is left alone.

    Each module is re-classed in place (``module.__class__`` becomes our ``LayerNorm`` /
    ``RMSNorm`` for torch's norms, and a subclass of the original class whose ``forward``
    calls our ops for the transformers ones), so it keeps everything else by construction:
    the same Parameter objects (optimizers and weight tying stay valid, DTensors stay DTensors),
    a weight set to None, forward hooks and pre-hooks, state-dict hooks, parametrizations and
    ``weight_norm``, extra attributes, the ``training`` flag, the ``state_dict`` keys and
    ``isinstance`` checks against the original class. A module registered under several names
    is one module and stays shared. The only attribute added is ``backend``.

    Args:
        model: any module (a norm itself included).
        backend: backend of the replaced modules (see :mod:`layernorm_gpu.dispatch`).
        report: return a :class:`ReplaceReport` instead of ``model``.

    Returns:
        ``model`` itself, or the report when ``report=True``.

    Warns:
        UserWarning: when a row norm (not a BatchNorm or GroupNorm) was left alone, or nothing
        was replaced (the message is the report).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    result = ReplaceReport(check_backend(backend))
    seen: set[int] = set()

    def visit(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        ours = isinstance(module, LayerNorm | RMSNorm | _ConventionNorm)
        cls = _unparametrized_class(module)
        convention = hf.convention_of(cls)
        cls_path = hf.class_path(cls)
        if (ours or convention is not None) and "forward" in vars(module):
            if _runs_hub_layer(module):
                result.already_ours.append(name)
            elif not ours and _hooked_by_accelerate(module):
                # the hook calls module._old_forward: bound again, to the new class's forward
                result.replaced.append(ReplacedNorm(name, cls_path, convention))
                _reclass(module, backend)
                module._old_forward = types.MethodType(type(module).forward, module)
            else:
                result.left_alone.append(LeftAlone(name, cls_path, _INSTANCE_FORWARD_REASON))
            return
        if ours:
            result.already_ours.append(name)
            return
        if convention is not None:
            result.replaced.append(ReplacedNorm(name, cls_path, convention))
            _reclass(module, backend)
            return
        reason = _why_left_alone(module)
        if reason is not None:
            result.left_alone.append(LeftAlone(name, hf.class_path(type(module)), reason))
        for child_name, child in module._modules.items():
            # a parametrized module's parametrizations (e.g. weight_norm's) are not its layers
            if child is None or (
                child_name == "parametrizations" and parametrize.is_parametrized(module)
            ):
                continue
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    # a BatchNorm or GroupNorm left alone is expected; an unrecognised row norm is not
    unexpected = [item for item in result.left_alone if item.reason != _NOT_ROW_REASON]
    if unexpected or not (result.replaced or result.already_ours):
        warnings.warn(str(result), UserWarning, stacklevel=2)
    return result if report else model
