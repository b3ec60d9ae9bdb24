"""L2 model: which reads of traced launches one shared L2 would serve, and which DRAM would.

A kernel that reads a row more than once (the looped forward's statistics, then y; the looped
backward's c1 and c2, then the band's column sums of dW and dB, read by programs that do not
own the row, then dx) moves it from DRAM once only if the row is still in L2 at each later read.
Every program of a launch runs at once and shares the one L2, and the backward's programs read
each other's rows, so the model replays the accesses of every program of a traced launch
through one least-recently-used cache, in 32-byte sectors (loads and stores both allocate), in
*lockstep*: the i-th access of each program at step i, programs in order within a step
(:func:`lockstep`; the interpreter runs them one after another). Real programs drift apart;
lockstep is the order where no program runs ahead of the others. It counts the bytes of each
tensor that miss: what DRAM serves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from .trace import Access

SECTOR_BYTES = 32  # the unit an L2 line is filled from DRAM in


def lockstep(sequence: list[Access]) -> list[Access]:
    """``sequence`` (launch after launch, each launch's programs one after another) reordered
    as its programs would run together: launch after launch, and within a launch step ``i`` holds
    the ``i``-th access of each program that has one, in program order."""
    by_launch: dict[int, dict[int, list[Access]]] = {}
    for access in sequence:
        by_launch.setdefault(access.launch, {}).setdefault(access.program, []).append(access)
    ordered = []
    for launch in sorted(by_launch):
        programs = [by_launch[launch][p] for p in sorted(by_launch[launch])]
        for step in range(max(len(p) for p in programs)):
            ordered += [p[step] for p in programs if step < len(p)]
    return ordered


def dram_loaded(
    accesses: Iterable[Access], cache_bytes: int
) -> tuple[dict[str, int], dict[str, int]]:
    """``(from_dram, distinct)``: bytes each tensor loads from DRAM when ``accesses`` run, in
    their order, through an LRU cache of ``cache_bytes``, and the bytes it would load with an
    unbounded cache, both in whole 32-byte sectors (what DRAM serves; a sector shared by two
    rows is fetched once)."""
    capacity = max(1, cache_bytes // SECTOR_BYTES)
    cache: OrderedDict[int, None] = OrderedDict()
    from_dram: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for access in accesses:
        sectors = np.unique(access.addresses // SECTOR_BYTES).tolist()
        missed = 0
        for sector in sectors:
            if sector in cache:
                cache.move_to_end(sector)
                continue
            missed += 1
            cache[sector] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
        if not access.is_store:
            from_dram[access.role] = from_dram.get(access.role, 0) + missed * SECTOR_BYTES
            seen.setdefault(access.role, set()).update(sectors)
    return from_dram, {role: len(s) * SECTOR_BYTES for role, s in seen.items()}
