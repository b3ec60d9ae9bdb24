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
  for looped kernels their first pass, the one loop that streams from DRAM: the forward's
  second pass and the backward's column sums and second pass re-read from L2), times the
  **pipeline depth** of that loop: the iterations whose loads are in flight at once, counted
  from the PTX's ``cp.async`` commit and wait groups (:func:`pipeline_depth`: the first
  pipelined loop's; 1 without asynchronous copies, since a plain load's data is consumed in
  the iteration that issues it).
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

__all__ = [
    "RATIO_TARGETS",
    "InFlight",
    "in_flight",
    "pipeline_depth",
    "pipeline_depths",
    "resident_programs",
]
# Little's law ratio each target's kernels must reach (issue 10); other targets are reported.
RATIO_TARGETS = {"sm_80": 1.5, "sm_90": 1.5, "sm_100": 1.0}


def pipeline_depths(ptx: str) -> list[int]:
    """Loop iterations whose loads are in flight together, for each software-pipelined loop of
    the PTX, in the order the PTX lays the loops out (the kernels' source order): empty without
    asynchronous copies.

    A loop pipelined ``S`` deep commits ``g`` copy groups per iteration (one per tensor or group
    of tensors): its prologue commits ``(S - 1) x g`` and each iteration waits with
    ``cp.async.wait_group N``, ``N = (S - 2) x g``, then commits the ``g`` groups of the
    iteration ``S - 1`` ahead. So ``g`` is the commits between a wait and the next one, or the
    commits since the previous wait less ``N`` (each an upper bound: another loop's commits may
    lie in between; the smaller is taken), and the depth is ``N / g + 1``. Waits for 0 drain a
    loop's copies and say nothing of its depth.
    """
    commits, waits = [0], []  # commits before the first wait, between waits, after the last
    for line in ptx.splitlines():
        wait = re.search(r"cp\.async\.wait_group\s+(\d+)", line)
        if wait:
            waits.append(int(wait.group(1)))
            commits.append(0)
        elif "cp.async.commit_group" in line:
            commits[-1] += 1
    depths = []
    for i, pending in enumerate(waits):
        before, after = commits[i] - pending, commits[i + 1]
        groups = min(g for g in (before, after, pending + 1) if g > 0)
        if pending:
            depths.append(pending // groups + 1)
    return depths


def pipeline_depth(ptx: str) -> int:
    """The pipeline depth of a kernel's first pipelined loop (:func:`pipeline_depths`; 1
    without asynchronous copies): the loop that streams from DRAM in every kernel (the looped
    kernels' first pass, which comes first; the backward's column sums and second pass, later
    in the PTX, re-read the band from L2)."""
    depths = pipeline_depths(ptx)
    return depths[0] if depths else 1


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
    """Bytes one loop iteration loads from DRAM of the streamed tensors: ``loaded`` maps each
    tile role the compiled kernel loads (x, residual, h, dy, dh) to its element size. Looped
    kernels walk a row twice: the first pass streams x, residual and dy from DRAM; the second
    (and the backward's column sums over its band, between them) re-read from L2 (the
    heuristics size the grid for it, the traffic report's L2 model checks it), so Little's law
    for DRAM is taken on the first (the backward's dh, read in the second pass only, is left
    out: a lower bound)."""
    if not looped:
        return tile_elems * sum(loaded.values())
    return tile_elems * sum(loaded[r] for r in ("x", "residual", "dy") if r in loaded)
