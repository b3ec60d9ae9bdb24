"""Record what the real kernels load and store, by running them in Triton's interpreter.

Inside :func:`trace`, every ``tl.load`` / ``tl.store`` of an interpreted kernel reports the
addresses of its masked-in elements (masked-out lanes move no bytes) and the program that
issued it, every launch reports its kernel, grid and tensor arguments (through
``layernorm_gpu.kernels.registry``, whose launch path the launchers take), and every torch op
that runs between launches (outside the interpreter's own bookkeeping) is logged as eager
work. Addresses are attributed to tensors by
matching them against the storage ranges of the launches' tensor arguments, and each tensor is
named after its role in the math, as the registry declares it for that kernel argument.

The kernels must have been imported with ``TRITON_INTERPRET=1`` (CPU tensors; ``python -m
bench`` and the tests' conftest set it without CUDA); see :func:`require_interpreter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from layernorm_gpu.kernels import registry

from .triton_private import interpreter_accesses, is_interpreted

# Torch ops that allocate, alias or only read metadata: no memory traffic of their own.
_NO_TRAFFIC = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "view",
    "_unsafe_view",
    "reshape",
    "alias",
    "as_strided",
    "expand",
    "t",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "slice",
    "select",
    "lift_fresh",
}
# Torch ops that only write their output (a memset kernel on CUDA).
_FILLS = {"zeros", "zeros_like", "new_zeros", "ones", "ones_like", "full", "fill_", "zero_"}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: its registry name, grid, and the shape of each tensor argument by
    role (the same storage passed to two kernels, e.g. the dW partials written by the backward
    and summed by the partial-sum kernel, keeps one role)."""

    kernel: str
    grid: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class EagerOp:
    """A torch op run between launches, named with its output shape; ``kind`` is ``"fill"`` or
    ``"compute"`` (ops with no traffic of their own are not recorded). ``bytes`` is what it
    reads plus writes."""

    name: str
    kind: str
    bytes: int


@dataclass
class TensorTraffic:
    """Bytes one tensor moved. ``loaded``/``stored`` count every masked-in element of every
    access (what the SMs request); ``distinct_*`` count each address once (what DRAM would
    serve with a perfect cache)."""

    role: str
    nbytes: int
    elem_size: int = 0
    loaded: int = 0
    stored: int = 0
    distinct_loaded: int = 0
    distinct_stored: int = 0
    # Histogram of loads per element over the elements loaded at least once: {times: count}.
    loads_per_element: dict[int, int] = field(default_factory=dict)
    stores_per_element: dict[int, int] = field(default_factory=dict)


class Access(NamedTuple):
    """One attributed load or store: the tensor's role, the element addresses of its masked-in
    lanes, bytes per element, whether it stores, and who issued it: the launch (its index in
    :attr:`Traffic.launches`) and the program (its index along grid axis 0)."""

    role: str
    addresses: np.ndarray
    elem_size: int
    is_store: bool
    launch: int
    program: int


@dataclass
class Traffic:
    """Everything :func:`trace` saw while one callable ran."""

    launches: list[Launch]
    tensors: dict[str, TensorTraffic]
    eager: list[EagerOp]
    unattributed_bytes: int
    # Every attributed access in the interpreter's order: launch after launch, and a launch's
    # programs one after another (the L2 model interleaves them: bench.proof.l2.lockstep).
    sequence: list[Access] = field(default_factory=list)

    def get(self, role: str) -> TensorTraffic:
        """The traffic of ``role`` (zero if the tensor was never touched)."""
        return self.tensors.get(role, TensorTraffic(role, 0))

    @property
    def eager_bytes(self) -> int:
        return sum(op.bytes for op in self.eager)


def require_interpreter() -> None:
    """Raise unless the kernels run in the interpreter (imported with ``TRITON_INTERPRET=1``)."""
    if not all(is_interpreted(kernel.fn) for kernel in registry.KERNELS):
        raise RuntimeError(
            "the traffic report runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1 "
            "before layernorm_gpu's kernels are imported"
        )


@dataclass
class _Access:
    addresses: np.ndarray
    elem_size: int
    is_store: bool
    launch: int
    program: int


class _Recorder(TorchDispatchMode):
    """Collects accesses and launches (through interpreter hooks) and eager torch ops."""

    def __init__(self) -> None:
        super().__init__()
        self.accesses: list[_Access] = []
        self.launches: list[Launch] = []
        self.storages: dict[int, tuple[int, str]] = {}  # start -> (end, role)
        self.eager: list[EagerOp] = []
        self.in_launch = False

    def record_access(
        self, addresses: np.ndarray, elem_size: int, is_store: bool, program: int
    ) -> None:
        launch = len(self.launches) - 1  # the launch running now
        self.accesses.append(_Access(addresses, elem_size, is_store, launch, program))

    def on_launch(self, launch: registry.Launch, run: Callable[[], None]) -> None:
        """Record a launch's tensors by role, then run it (its own torch work is not eager)."""
        shapes = {}
        for name, arg in launch.named_args().items():
            if not isinstance(arg, torch.Tensor):
                continue
            role = launch.kernel.pointers.get(name)
            if role is None:
                raise RuntimeError(
                    f"{launch.kernel.name}: tensor argument {name!r} has no role in the registry"
                )
            shapes[role] = tuple(arg.shape)
            storage = arg.untyped_storage()
            if storage.nbytes() == 0:
                continue
            self.storages[storage.data_ptr()] = (storage.data_ptr() + storage.nbytes(), role)
        self.launches.append(Launch(launch.kernel.name, launch.grid, shapes))
        self.in_launch = True
        try:
            run()
        finally:
            self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "layernorm_gpu":
            # Run the custom op's CPU implementation with this mode active, so the torch work
            # inside it (allocations, fills, copies) is seen too.
            with self:
                return func.redispatch(
                    torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs
                )
        out = func(*args, **kwargs)
        if not self.in_launch:
            self._record_eager(func, args, kwargs, out)
        return out

    def _record_eager(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        if name in _NO_TRAFFIC:
            return
        inputs = [
            t
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        ]
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if sum(t.numel() for t in outputs) == 0:
            return  # no tensor written (e.g. promote_types), or an empty one: no kernel
        in_storages = {t.untyped_storage().data_ptr() for t in inputs}
        aliases_input = all(t.untyped_storage().data_ptr() in in_storages for t in outputs)
        if aliases_input and name not in _FILLS:
            return  # returned (a view of) an input, e.g. .to() to the same dtype
        written = sum(t.numel() * t.element_size() for t in outputs)
        label = f"{name}{tuple(outputs[0].shape)}"
        if name in _FILLS:
            self.eager.append(EagerOp(label, "fill", written))
            return
        read = sum(t.numel() * t.element_size() for t in inputs)
        self.eager.append(EagerOp(label, "compute", read + written))


def _histogram(addresses: np.ndarray) -> dict[int, int]:
    if addresses.size == 0:
        return {}
    _, counts = np.unique(addresses, return_counts=True)
    times, n = np.unique(counts, return_counts=True)
    return {int(t): int(c) for t, c in zip(times, n, strict=True)}


def _attribute(recorder: _Recorder) -> tuple[dict[str, TensorTraffic], int, list[Access]]:
    """Per-role traffic from the recorded accesses, the bytes no storage range holds, and the
    attributed accesses in order."""
    starts = np.array(sorted(recorder.storages), dtype=np.uint64)
    ends = np.array([recorder.storages[int(s)][0] for s in starts], dtype=np.uint64)
    roles = [recorder.storages[int(s)][1] for s in starts]
    per_role: dict[str, dict[bool, list[np.ndarray]]] = {}
    tensors: dict[str, TensorTraffic] = {}
    for start, end, role in zip(starts, ends, roles, strict=True):
        tensors.setdefault(role, TensorTraffic(role, 0)).nbytes += int(end - start)
    unattributed = 0
    sequence = []
    for access in recorder.accesses:
        where = np.searchsorted(starts, access.addresses, side="right") - 1
        inside = (where >= 0) & (access.addresses < ends[np.maximum(where, 0)])
        unattributed += int((~inside).sum()) * access.elem_size
        for index in np.unique(where[inside]):
            role = roles[int(index)]
            addresses = access.addresses[inside & (where == index)]
            traffic = tensors[role]
            traffic.elem_size = access.elem_size
            if access.is_store:
                traffic.stored += addresses.size * access.elem_size
            else:
                traffic.loaded += addresses.size * access.elem_size
            per_role.setdefault(role, {False: [], True: []})[access.is_store].append(addresses)
            sequence.append(
                Access(
                    role,
                    addresses,
                    access.elem_size,
                    access.is_store,
                    access.launch,
                    access.program,
                )
            )
    for role, by_kind in per_role.items():
        traffic = tensors[role]
        for is_store, chunks in by_kind.items():
            addresses = np.concatenate(chunks) if chunks else np.zeros(0, np.uint64)
            histogram = _histogram(addresses)
            distinct = sum(histogram.values()) * traffic.elem_size
            if is_store:
                traffic.distinct_stored, traffic.stores_per_element = distinct, histogram
            else:
                traffic.distinct_loaded, traffic.loads_per_element = distinct, histogram
    return tensors, unattributed, sequence


def trace(fn: Callable[[], object]) -> Traffic:
    """Run ``fn`` (which launches interpreted kernels on CPU tensors) and return its traffic."""
    require_interpreter()
    recorder = _Recorder()
    with (
        registry.intercepted(recorder.on_launch),
        interpreter_accesses(recorder.record_access),
        recorder,
    ):
        fn()
    tensors, unattributed, sequence = _attribute(recorder)
    return Traffic(recorder.launches, tensors, recorder.eager, unattributed, sequence)
