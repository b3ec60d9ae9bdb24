"""Resident programs per SM of a compiled kernel: how many fit on one SM at once.

A persistent grid is one wave: ``programs per SM x SM count`` programs, each walking its share
of the tiles. The programs per SM are the compiled kernel's, as Triton's fused-softmax tutorial
takes them: its registers per thread, warps and shared memory (``kernel.warmup(...)``, then
``n_regs`` / ``metadata``), against what the device's SM holds.

- :func:`resident_programs`: the count from those numbers and an :class:`SmLimits` (pure).
- :func:`programs_per_sm`: the glue on CUDA: compiles (or takes from Triton's cache) the
  specialisation a launch would run and caches its count per (specialisation, device).

Without a CUDA device (the interpreter, ``meta`` tensors, offline reports) there is no compiled
kernel and the heuristics keep their static estimate. On ROCm the glue answers None too: a
CDNA compute unit allocates registers per SIMD, which this model does not describe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SmLimits:
    """What one SM holds (the CUDA occupancy calculator's per-SM resources).

    ``reg_alloc_unit``: registers are allocated per warp in multiples of this;
    ``reg_partitions``: the register file is split evenly among the SM's schedulers, each
    holding whole warps; ``shared_reserved``: shared memory the system takes per resident
    program (sm_80 and later); a program's shared memory is allocated in multiples of
    ``shared_alloc_unit``.
    """

    regs: int = 65536
    threads: int = 2048
    shared_bytes: int = 228 * 1024  # sm_90, sm_100
    max_programs: int = 32
    warp_size: int = 32
    reg_alloc_unit: int = 256
    reg_partitions: int = 4
    shared_reserved: int = 1024
    shared_alloc_unit: int = 128


# Per-SM resources by compute capability x 10 (CUDA C++ Programming Guide, technical
# specifications per compute capability): shared memory (KiB), resident threads and resident
# blocks. Registers: 65536 on all of them.
SHARED_KIB_PER_SM = {80: 164, 86: 100, 89: 100, 90: 228, 100: 228}
MAX_THREADS_PER_SM = {80: 2048, 86: 1536, 89: 1536, 90: 2048, 100: 2048}
MAX_PROGRAMS_PER_SM = {80: 32, 86: 16, 89: 24, 90: 32, 100: 32}
# Where the resident-block cap of a device is not in the table: the smallest above (fewer
# programs than fit only lowers occupancy; more would make a second wave).
DEFAULT_MAX_PROGRAMS_PER_SM = 16


def sm_limits(arch: int) -> SmLimits:
    """The per-SM resources of compute capability ``arch`` (x 10), for offline reports."""
    if arch not in SHARED_KIB_PER_SM:
        raise ValueError(
            f"arch: no per-SM limits for sm_{arch}; known: {sorted(SHARED_KIB_PER_SM)}"
        )
    return SmLimits(
        threads=MAX_THREADS_PER_SM[arch],
        shared_bytes=SHARED_KIB_PER_SM[arch] * 1024,
        max_programs=MAX_PROGRAMS_PER_SM[arch],
    )


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def resident_programs(
    regs_per_thread: int, num_warps: int, shared_bytes: int, limits: SmLimits
) -> int:
    """Programs of ``num_warps`` warps that one SM holds at once (0: none fits).

    The smallest of four limits: threads; registers (a warp takes ``regs_per_thread x 32``
    rounded up to ``reg_alloc_unit``, each of the ``reg_partitions`` register files holds whole
    warps, and a program's warps must all fit); shared memory (``shared_bytes`` plus
    ``shared_reserved`` per program, rounded up to ``shared_alloc_unit``); and the
    resident-program cap.
    """
    threads = num_warps * limits.warp_size
    regs_per_warp = _round_up(max(1, regs_per_thread) * limits.warp_size, limits.reg_alloc_unit)
    warps_by_regs = (limits.regs // limits.reg_partitions // regs_per_warp) * limits.reg_partitions
    return min(
        limits.threads // threads,
        warps_by_regs // num_warps,
        limits.shared_bytes
        // _round_up(shared_bytes + limits.shared_reserved, limits.shared_alloc_unit),
        limits.max_programs,
    )


@functools.cache
def device_limits(index: int) -> SmLimits:
    """The per-SM resources of CUDA device ``index``, from its properties."""
    props = torch.cuda.get_device_properties(index)
    arch = props.major * 10 + props.minor
    return SmLimits(
        regs=props.regs_per_multiprocessor,
        threads=props.max_threads_per_multi_processor,
        shared_bytes=props.shared_memory_per_multiprocessor,
        max_programs=MAX_PROGRAMS_PER_SM.get(arch, DEFAULT_MAX_PROGRAMS_PER_SM),
        warp_size=props.warp_size,
    )


def _arg_facts(arg: Any) -> Hashable:
    """What Triton specialises a launch on, per argument: a tensor's dtype, an integer equal to
    one (it becomes a constant), None. Divisibility by 16 and pointer alignment change only
    address arithmetic, so their specialisations share a count."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype
    if isinstance(arg, bool) or not isinstance(arg, int):
        return type(arg).__name__
    return arg == 1


_CACHE: dict[Hashable, int] = {}


def programs_per_sm(
    fn: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    device: torch.device,
    limits: Callable[[int], SmLimits] = device_limits,
) -> int | None:
    """Resident programs per SM of the kernel ``fn[grid](*args, **kwargs)`` would launch on
    ``device`` (CUDA), at least 1; None on other devices and on ROCm.

    Compiled once per specialisation and device (``fn.warmup``, which also fills Triton's
    cache for the launch that follows); later calls are a dictionary lookup. Triton-private,
    as in its fused-softmax tutorial: ``CompiledKernel._init_handles`` loads the binary, which
    sets ``n_regs``.
    """
    if device.type != "cuda" or torch.version.hip:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (fn, index, tuple(map(_arg_facts, args)), tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        kernel = fn.warmup(*args, grid=(1,), **kwargs)
        kernel._init_handles()  # loads the binary: n_regs is known from here on
        resident = resident_programs(
            kernel.n_regs, kernel.metadata.num_warps, kernel.metadata.shared, limits(index)
        )
        _CACHE[key] = max(1, resident)
    return _CACHE[key]
