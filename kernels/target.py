"""The GPU a launch runs on, and the device guard around launches."""

from __future__ import annotations

import contextlib
import functools

import torch

from .heuristics import H100, Target


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(
        sm_count=props.multi_processor_count,
        arch=props.major * 10 + props.minor,
        l2_bytes=props.L2_cache_size,
    )


def device_target(device: torch.device) -> Target:
    """The launch target of ``device``: its own SM count on CUDA, an H100 otherwise.

    The interpreter (CPU tensors) uses the H100 target so that it runs the same configs.
    """
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else 0)
    return H100


def launch_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current while launching: Triton launches on the current CUDA device, and
    a tensor on ``cuda:1`` launched from ``cuda:0`` is an illegal memory access."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()
