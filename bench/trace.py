"""Record what the real kernels load and store, by running them in Triton's interpreter.

Inside :func:`trace`, every ``tl.load`` / ``tl.store`` of an interpreted kernel reports the
addresses of its masked-in elements (masked-out lanes move no bytes), every launch reports its
kernel, grid and tensor arguments, and every torch op that runs between launches (outside the
interpreter's own bookkeeping) is logged as eager work. Addresses are attributed to tensors by
matching them against the storage ranges of the launches' tensor arguments, and each tensor is
named after its role in the math (the kernel argument it was passed as, see ``ROLES``).

The kernels must have been imported with ``TRITON_INTERPRET=1`` (CPU tensors; ``python -m
bench`` and the tests' conftest set it without CUDA); see :func:`require_interpreter`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Kernel argument -> role of the tensor in the math. The same storage passed to two kernels
# (the dW/dB partials: written by the backward, read by the partial-sum kernel) keeps one role.
ROLES = {
    "X": "x",
    "R": "residual",
    "H": "h",
    "Y": "y",
    "W": "weight",
    "B": "bias",
    "Mean": "mean",
    "Rstd": "rstd",
    "DY": "dy",
    "DH": "dh",
    "DX": "dx",
    "DW_partial": "dW partials",
    "DB_partial": "dB partials",
    "C": "c1/c2 scratch",
    "DW": "dweight",
    "DB": "dbias",
}

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
    """One kernel launch: name, grid, and the shape of each tensor argument by role."""

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


@dataclass
class Traffic:
    """Everything :func:`trace` saw while one callable ran."""

    launches: list[Launch]
    tensors: dict[str, TensorTraffic]
    eager: list[EagerOp]
    unattributed_bytes: int

    def get(self, role: str) -> TensorTraffic:
        """The traffic of ``role`` (zero if the tensor was never touched)."""
        return self.tensors.get(role, TensorTraffic(role, 0))

    @property
    def eager_bytes(self) -> int:
        return sum(op.bytes for op in self.eager)


def require_interpreter() -> None:
    """Raise unless the kernels run in the interpreter (imported with ``TRITON_INTERPRET=1``)."""
    from triton.runtime.interpreter import InterpretedFunction

    fwd = importlib.import_module("layernorm_gpu.kernels.norm_fwd")
    if not isinstance(fwd._norm_fwd_single_block_kernel, InterpretedFunction):
        raise RuntimeError(
            "the traffic report runs the kernels in Triton's interpreter: set TRITON_INTERPRET=1 "
            "before layernorm_gpu's kernels are imported"
        )


@dataclass
class _Access:
    addresses: np.ndarray
    elem_size: int
    is_store: bool


class _Recorder(TorchDispatchMode):
    """Collects accesses and launches (through interpreter hooks) and eager torch ops."""

    def __init__(self) -> None:
        super().__init__()
        self.accesses: list[_Access] = []
        self.launches: list[Launch] = []
        self.storages: dict[int, tuple[int, str]] = {}  # start -> (end, role)
        self.eager: list[EagerOp] = []
        self.in_launch = False

    def record_access(self, ptrs, mask, is_store: bool) -> None:
        mask = np.broadcast_to(mask.data, ptrs.data.shape)
        elem_size = ptrs.get_element_ty().primitive_bitwidth // 8
        self.accesses.append(_Access(ptrs.data[mask].astype(np.uint64), elem_size, is_store))

    def record_launch(self, fn: Callable, grid, named_args: dict) -> None:
        shapes = {}
        for name, arg in named_args.items():
            if not isinstance(arg, torch.Tensor):
                continue
            role = ROLES.get(name, name)
            shapes[role] = tuple(arg.shape)
            storage = arg.untyped_storage()
            if storage.nbytes() == 0:
                continue
            self.storages[storage.data_ptr()] = (storage.data_ptr() + storage.nbytes(), role)
        grid = tuple(grid) if isinstance(grid, tuple | list) else (grid,)
        self.launches.append(Launch(fn.__name__, grid, shapes))

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


@contextlib.contextmanager
def _hooks(recorder: _Recorder) -> Iterator[None]:
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    real_load, real_store = builder.create_masked_load, builder.create_masked_store
    real_call = interpreter.GridExecutor.__call__
    real_init = interpreter.GridExecutor._init_args_hst

    def masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        recorder.record_access(ptrs, mask, is_store=False)
        return real_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def masked_store(self, ptrs, value, mask, cache_policy):
        recorder.record_access(ptrs, mask, is_store=True)
        return real_store(self, ptrs, value, mask, cache_policy)

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = real_init(self, args_dev, kwargs)
        named = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
        recorder.record_launch(self.fn, self.grid, named)
        return args_hst, kwargs_hst

    def call(self, *args, **kwargs):
        recorder.in_launch = True
        try:
            return real_call(self, *args, **kwargs)
        finally:
            recorder.in_launch = False

    builder.create_masked_load, builder.create_masked_store = masked_load, masked_store
    interpreter.GridExecutor.__call__ = call
    interpreter.GridExecutor._init_args_hst = init_args
    try:
        yield
    finally:
        builder.create_masked_load, builder.create_masked_store = real_load, real_store
        interpreter.GridExecutor.__call__ = real_call
        interpreter.GridExecutor._init_args_hst = real_init


def _histogram(addresses: np.ndarray) -> dict[int, int]:
    if addresses.size == 0:
        return {}
    _, counts = np.unique(addresses, return_counts=True)
    times, n = np.unique(counts, return_counts=True)
    return {int(t): int(c) for t, c in zip(times, n, strict=True)}


def _attribute(recorder: _Recorder) -> tuple[dict[str, TensorTraffic], int]:
    """Per-role traffic from the recorded accesses, and the bytes no storage range holds."""
    starts = np.array(sorted(recorder.storages), dtype=np.uint64)
    ends = np.array([recorder.storages[int(s)][0] for s in starts], dtype=np.uint64)
    roles = [recorder.storages[int(s)][1] for s in starts]
    per_role: dict[str, dict[bool, list[np.ndarray]]] = {}
    tensors: dict[str, TensorTraffic] = {}
    for start, end, role in zip(starts, ends, roles, strict=True):
        tensors.setdefault(role, TensorTraffic(role, 0)).nbytes += int(end - start)
    unattributed = 0
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
    return tensors, unattributed


def trace(fn: Callable[[], object]) -> Traffic:
    """Run ``fn`` (which launches interpreted kernels on CPU tensors) and return its traffic."""
    require_interpreter()
    recorder = _Recorder()
    with _hooks(recorder), recorder:
        fn()
    tensors, unattributed = _attribute(recorder)
    return Traffic(recorder.launches, tensors, recorder.eager, unattributed)
