"""Resident programs per SM of a compiled kernel: how many fit on one SM at once.

A persistent grid is one wave: ``programs per SM x SM count`` programs, each walking its share
of the tiles. The programs per SM are the compiled kernel's, as Triton's fused-softmax tutorial
takes them: its registers per thread, warps and shared memory (``kernel.warmup(...)``, then
``n_regs`` / ``metadata``), against what the device's SM holds.

- :func:`resident_programs`: the count from those numbers and a :class:`Target` (pure; NVIDIA
  and AMD rules).
- :func:`programs_per_sm`: the glue on CUDA: compiles (or takes from Triton's cache) the
  specialisation a launch would run and caches its count per (specialisation, device).

Without a CUDA device (the interpreter, ``meta`` tensors, offline reports) there is no compiled
kernel and the heuristics keep their static estimate. On ROCm the glue answers None too (the
CDNA rule below is used offline by the compile report; not yet checked on a device).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from .heuristics import Target, cdiv
from .target import device_target

# NVIDIA: registers are allocated per warp in multiples of 256, from a register file split
# evenly among the SM's 4 schedulers (each holds whole warps); the driver reserves 1 KiB of
# shared memory per resident block (sm_80 and later) and allocates it in 128-byte units.
NVIDIA_REG_ALLOC_UNIT = 256
NVIDIA_REG_PARTITIONS = 4
SHARED_RESERVED_PER_BLOCK = 1024
SHARED_ALLOC_UNIT = 128
# AMD CDNA: a CU has 4 SIMDs, each with ``registers_per_sm / 4 / 64`` VGPRs per lane (512),
# allocated in granules of 8; a workgroup's W waves (a power of two) spread over the 4 SIMDs.
SIMDS_PER_CU = 4
VGPR_GRANULE = 8


def _round_up(n: int, unit: int) -> int:
    return cdiv(n, unit) * unit


def resident_programs(target: Target, regs: int, num_warps: int, shared: int) -> int:
    """Programs (blocks, workgroups) of ``num_warps`` warps one SM (CU) of ``target`` holds at
    once, given the compiled kernel's ``regs`` per thread (VGPRs on AMD) and ``shared`` bytes per
    program; 0 when none fits.

    The smallest of: threads, the resident-block cap, registers (NVIDIA: a warp takes ``regs x
    32`` rounded up to NVIDIA_REG_ALLOC_UNIT, each of the NVIDIA_REG_PARTITIONS register files
    holds whole warps; AMD: VGPR granules per SIMD, as above) and shared memory (LDS on AMD).
    """
    threads = num_warps * target.warp_size
    limits = [target.max_threads_per_sm // threads, target.max_blocks_per_sm]
    if target.backend == "hip":
        vgprs_per_lane = target.registers_per_sm // SIMDS_PER_CU // target.warp_size
        waves_per_simd = target.max_threads_per_sm // target.warp_size // SIMDS_PER_CU
        waves = min(waves_per_simd, vgprs_per_lane // _round_up(max(regs, 1), VGPR_GRANULE))
        limits.append(waves * SIMDS_PER_CU // num_warps)  # W waves spread over the 4 SIMDs
        if shared:
            limits.append(target.shared_memory_per_sm // shared)
    else:
        per_warp = _round_up(max(regs, 1) * target.warp_size, NVIDIA_REG_ALLOC_UNIT)
        partition = target.registers_per_sm // NVIDIA_REG_PARTITIONS
        limits.append((partition // per_warp) * NVIDIA_REG_PARTITIONS // num_warps)
        per_block = _round_up(shared + SHARED_RESERVED_PER_BLOCK, SHARED_ALLOC_UNIT)
        limits.append(target.shared_memory_per_sm // per_block)
    return max(0, min(limits))


def _arg_facts(arg: Any) -> Hashable:
    """What Triton specialises a launch on, per argument: a tensor's dtype and 16-byte
    alignment, an integer's being one (it becomes a constant), divisible by 16 or past int32,
    None."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, bool) or not isinstance(arg, int):
        return type(arg).__name__
    return arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31


_CACHE: dict[Hashable, int] = {}


def programs_per_sm(
    fn: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    device: torch.device,
    target_of: Callable[[torch.device], Target] = device_target,
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
            target_of(torch.device("cuda", index)),
            kernel.n_regs,
            kernel.metadata.num_warps,
            kernel.metadata.shared,
        )
        _CACHE[key] = max(1, resident)
    return _CACHE[key]
