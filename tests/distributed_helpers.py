"""Launching test ranks as child processes so that a failing or hung rank fails the test
instead of stalling CI.

Ranks are started with ``torch.multiprocessing.spawn`` and rendezvous through a file in the
test's tmp_path, so no port is involved; collectives time out after 60 s and the ranks as a
whole after ``RANK_TIMEOUT_S``. The children inherit the environment, ``TRITON_INTERPRET``
included (set by conftest when there is no CUDA). Imported as ``distributed_helpers``.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

# bounds a hung rank so that the suite fails instead of stalling CI
RANK_TIMEOUT_S = 180
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def _rank_main(
    rank: int,
    fn: Callable[..., None],
    world: int,
    pg_backend: str,
    init_file: str,
    args: tuple[Any, ...],
) -> None:
    dist.init_process_group(
        pg_backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        fn(rank, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without running destructors: tearing down DDP's reducer and the gloo process group
    # joins gloo's worker thread while holding the GIL, and that thread may need the GIL to
    # free a finished work item: a teardown deadlock seen here (torch 2.13, CPU).
    os._exit(0)


def run_ranks(
    fn: Callable[..., None],
    world: int,
    tmp_path: Path,
    args: tuple[Any, ...] = (),
    pg_backend: str = "gloo",
) -> None:
    """Run ``fn(rank, *args)`` in ``world`` processes joined in one process group; fail the
    test if a rank raises or they do not all finish within ``RANK_TIMEOUT_S``.

    ``fn`` must be a module-level function (the children import it) and leaves its results in
    files (under ``tmp_path``) for the test to check.
    """
    init_file = str(tmp_path / "rendezvous")
    ranks = mp.spawn(
        _rank_main,
        args=(fn, world, pg_backend, init_file, args),
        nprocs=world,
        join=False,
    )
    deadline = time.monotonic() + RANK_TIMEOUT_S
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the {world} ranks did not finish within {RANK_TIMEOUT_S} s")
