"""Occupancy and bytes in flight per SM of a compiled kernel, against Little's law.

The model (pure arithmetic; its inputs come from the compiled kernel and the launch):

* **Resident programs per SM** (per CU on AMD), from the compiled kernel's registers per
  thread, warps and shared memory and the target's limits: the launchers' own rule,
  :func:`layernorm_gpu.kernels.occupancy.resident_programs` (NVIDIA and CDNA).
* **Programs per SM** actually running: the resident ones, capped by the grid spread over the
  SMs, ``min(resident, grid / sm_count)`` (a persistent grid of one program per SM has 1 per
  SM, whatever the registers allow; a grid of 128 on 132 SMs leaves 4 idle).
* **Bytes each program has in flight**: the bytes of the streamed tiles one iteration of the
  row loop loads (``rows_per_tile x block_n x element size`` for each of x, residual, dy, dh;
  for looped kernels the lesser of their two passes), times the **pipeline depth**: the
  iterations whose loads are in flight at once, counted from the PTX's ``cp.async`` commit and
  wait groups (:func:`pipeline_depth`; 1 without asynchronous copies, since a plain load's data
  is consumed in the iteration that issues it).
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

import re
from dataclasses import dataclass

from layernorm_gpu.kernels.heuristics import Target
from layernorm_gpu.kernels.occupancy import resident_programs

__all__ = ["RATIO_TARGETS", "InFlight", "in_flight", "pipeline_depth", "resident_programs"]
# Little's law ratio each target's kernels must reach (issue 10); other targets are reported.
RATIO_TARGETS = {"sm_80": 1.5, "sm_90": 1.5, "sm_100": 1.0}


def pipeline_depth(ptx: str) -> int:
    """Loop iterations whose loads are in flight together, from the PTX of a software-pipelined
    loop (1 without asynchronous copies).

    Triton's prologue issues the first ``S - 1`` iterations' copies, ``g`` commit groups each
    (one per tensor or group of tensors), then waits with ``cp.async.wait_group (S - 2) x g``:
    so ``g`` is the prologue's commits less the first wait's count and the depth, ``S - 1``,
    is the prologue's commits over ``g``.
    """
    first_wait = re.search(r"cp\.async\.wait_group\s+(\d+)", ptx)
    if first_wait is None:
        return 1
    commits = ptx.count("cp.async.commit_group", 0, first_wait.start())
    per_iteration = commits - int(first_wait.group(1))
    return max(1, commits // per_iteration) if per_iteration > 0 else 1


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
