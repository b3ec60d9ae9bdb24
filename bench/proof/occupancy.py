"""Occupancy and bytes in flight per SM of a compiled kernel, against Little's law.

The model (pure arithmetic; its inputs come from the compiled kernel and the launch):

* **Resident programs per SM** (per CU on AMD), from the compiled kernel's registers per
  thread, warps and shared memory and the target's limits. NVIDIA: registers are allocated per
  warp in units of 256, ``min(blocks limit, warps limit / W, registers / (regs per warp x W),
  shared / (shared per block + 1 KiB reserved))``. AMD (CDNA): a CU has 4 SIMDs of
  ``registers_per_sm / 4 / 64`` VGPRs per lane (512), allocated in granules of 8; a SIMD holds
  ``min(max waves, 512 // VGPRs)`` waves and a workgroup of W waves needs ``ceil(W / 4)`` of
  them on each SIMD; LDS limits workgroups as shared memory does.
* **Programs per SM** actually running: the resident ones, capped by the grid spread over the
  SMs, ``min(resident, grid / sm_count)`` (a persistent grid of one program per SM has 1 per
  SM, whatever the registers allow; a grid of 128 on 132 SMs leaves 4 idle).
* **Bytes each program has in flight**: the bytes of the streamed tiles one iteration of the
  row loop loads (``rows_per_tile x block_n x element size`` for each of x, residual, dy, dh;
  for looped kernels the lesser of their two passes), times the **pipeline depth**: the
  iterations whose loads are in flight at once, counted from the PTX (``cp.async.wait_group N``
  leaves N groups in flight and the next commit adds one: depth N + 1; 1 without asynchronous
  copies, since a plain load's data is consumed in the iteration that issues it).
* **In flight per SM** = programs per SM x bytes per program; **needed** = Little's law, DRAM
  bandwidth per SM x loaded latency (``Target.bytes_in_flight_needed``); the **ratio** of the
  two says whether the kernel can keep DRAM busy (>= 1) with margin for latency under load
  (the targets: 1.5 on A100 and H100, 1.0 on B200).

What it leaves out: loads issued ahead into registers without ``cp.async`` (a prefetch the
compiler schedules is not counted), weight and bias loads (once per program, not per
iteration), stores, TMA loads (``cp.async.bulk.tensor``, synchronised by mbarriers rather than
wait groups; none of the kernels uses them yet) and AMD's pipelining (the ISA has no
``cp.async``; depth 1 is assumed there and marked as not counted).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from layernorm_gpu.kernels.heuristics import Target

NVIDIA_REG_ALLOC_UNIT = 256  # registers are allocated per warp in multiples of 256
SHARED_RESERVED_PER_BLOCK = 1024  # bytes the CUDA driver reserves per block (sm_80 and later)
SIMDS_PER_CU = 4
VGPR_GRANULE = 8
# Little's law ratio each target's kernels must reach (issue 10); other targets are reported.
RATIO_TARGETS = {"sm_80": 1.5, "sm_90": 1.5, "sm_100": 1.0}


def resident_programs(target: Target, regs: int, num_warps: int, shared: int) -> int:
    """Programs (blocks, workgroups) of ``num_warps`` warps one SM/CU holds at once, given the
    compiled kernel's ``regs`` per thread (VGPRs on AMD) and ``shared`` bytes per program."""
    threads = num_warps * target.warp_size
    limits = [target.max_threads_per_sm // threads, target.max_blocks_per_sm]
    if target.backend == "hip":
        vgprs_per_lane = target.registers_per_sm // SIMDS_PER_CU // target.warp_size
        waves_per_simd = target.max_threads_per_sm // target.warp_size // SIMDS_PER_CU
        granted = math.ceil(max(regs, 1) / VGPR_GRANULE) * VGPR_GRANULE
        waves = min(waves_per_simd, vgprs_per_lane // granted)
        limits.append(waves // math.ceil(num_warps / SIMDS_PER_CU))
        if shared:
            limits.append(target.shared_memory_per_sm // shared)
    else:
        per_warp = math.ceil(regs * target.warp_size / NVIDIA_REG_ALLOC_UNIT)
        per_warp *= NVIDIA_REG_ALLOC_UNIT
        limits.append(target.registers_per_sm // max(per_warp * num_warps, 1))
        limits.append(target.shared_memory_per_sm // (shared + SHARED_RESERVED_PER_BLOCK))
    return max(0, min(limits))


def pipeline_depth(ptx: str) -> int:
    """Loop iterations whose loads are in flight together: ``N + 1`` for the largest
    ``cp.async.wait_group N`` (asynchronous copies), else 1."""
    waits = [int(n) for n in re.findall(r"cp\.async\.wait_group\s+(\d+)", ptx)]
    return max(waits) + 1 if waits else 1


@dataclass(frozen=True)
class InFlight:
    """Bytes a kernel keeps in flight per SM against what Little's law needs."""

    resident: int  # programs an SM can hold
    programs_per_sm: float  # programs an SM runs: resident, capped by grid / sm_count
    bytes_per_program: int  # tile loads per loop iteration x pipeline depth
    needed: float  # Little's law: bandwidth per SM x loaded latency

    @property
    def bytes_per_sm(self) -> float:
        return self.programs_per_sm * self.bytes_per_program

    @property
    def ratio(self) -> float:
        return self.bytes_per_sm / self.needed


def in_flight(
    target: Target, resident: int, grid: int, tile_load_bytes: int, depth: int = 1
) -> InFlight:
    """The model's figures for a launch of ``grid`` programs, each loading ``tile_load_bytes``
    per loop iteration with ``depth`` iterations in flight, ``resident`` per SM."""
    programs = min(float(resident), grid / target.sm_count)
    return InFlight(resident, programs, tile_load_bytes * depth, target.bytes_in_flight_needed)


def tile_load_bytes(loaded: dict[str, int], tile_elems: int, looped: bool) -> int:
    """Bytes one loop iteration loads of the streamed tensors: ``loaded`` maps each tile role
    the compiled kernel loads (x, residual, h, dy, dh) to its element size. Looped kernels make
    two passes over a row, statistics (x, residual, dy) then outputs (h or x, dy, dh): the
    lesser of the two."""
    if not looped:
        return tile_elems * sum(loaded.values())
    first = [loaded[r] for r in ("x", "residual", "dy") if r in loaded]
    second = [loaded[r] for r in ("h" if "h" in loaded else "x", "dy", "dh") if r in loaded]
    return tile_elems * min(sum(first), sum(second))
