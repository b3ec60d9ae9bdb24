"""L2-window model: which re-reads of a traced program an L2 share would serve.

A kernel that reads a row twice (statistics, then the normalised output or dx) moves it from
DRAM once only if the row is still in L2 when it is read again. Every resident program streams
its own rows at the same time, so each gets about ``L2 / resident programs`` of the cache. The
model replays one program's traced accesses (:func:`bench.proof.trace.trace`, in program order)
through a least-recently-used cache of that share, in 32-byte sectors (loads and stores both
allocate), and counts the bytes of each tensor that miss: what DRAM serves.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .trace import Traffic

SECTOR_BYTES = 32  # the unit an L2 line is filled from DRAM in


def dram_loaded(traffic: Traffic, cache_bytes: int) -> tuple[dict[str, int], dict[str, int]]:
    """``(from_dram, distinct)``: bytes each tensor loads from DRAM when ``traffic``'s accesses
    run through an LRU cache of ``cache_bytes``, and the bytes it would load with an unbounded
    cache, both in whole 32-byte sectors (what DRAM serves; a sector shared by two rows is
    fetched once)."""
    capacity = max(1, cache_bytes // SECTOR_BYTES)
    cache: OrderedDict[int, None] = OrderedDict()
    from_dram: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for role, addresses, _, is_store in traffic.sequence:
        sectors = np.unique(addresses // SECTOR_BYTES).tolist()
        missed = 0
        for sector in sectors:
            if sector in cache:
                cache.move_to_end(sector)
                continue
            missed += 1
            cache[sector] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
        if not is_store:
            from_dram[role] = from_dram.get(role, 0) + missed * SECTOR_BYTES
            seen.setdefault(role, set()).update(sectors)
    return from_dram, {role: len(s) * SECTOR_BYTES for role, s in seen.items()}
