"""The GPU a launch runs on, and the device guard around launches."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import torch

from .heuristics import H100, TARGETS, Target


def target_from_properties(props: object, hip: bool) -> Target:
    """The :class:`Target` of a device from ``torch.cuda.get_device_properties``.

    On a ROCm build of torch (``hip``; ``torch.cuda`` is the HIP device) the architecture is
    ``gcnArchName`` up to its first ``:`` (``"gfx942:sramecc+:xnack-"`` -> ``"gfx942"``); on
    CUDA it is ``sm_<major><minor>``. SM count, warp size, L2 size, registers and shared memory
    per SM come from the properties where this torch reports them; every other field (and a
    property torch lacks) from the known target of that architecture in ``TARGETS``, else from
    the H100 (warp size 64 on AMD), so the heuristics always see a complete target.
    """
    if hip:
        arch = str(getattr(props, "gcnArchName", "") or "gfx942").split(":")[0]
    else:
        arch = f"sm_{props.major}{props.minor}"
    known = next((t for t in TARGETS if t.arch == arch), None)
    base = known or dataclasses.replace(H100, warp_size=64 if hip else 32)
    measured = {
        "sm_count": getattr(props, "multi_processor_count", None),
        "warp_size": getattr(props, "warp_size", None),
        "l2_bytes": getattr(props, "L2_cache_size", None),
        "registers_per_sm": getattr(props, "regs_per_multiprocessor", None),
        "shared_memory_per_sm": getattr(props, "shared_memory_per_multiprocessor", None),
        "max_threads_per_sm": getattr(props, "max_threads_per_multi_processor", None),
    }
    fields = {key: value for key, value in measured.items() if isinstance(value, int) and value > 0}
    return dataclasses.replace(
        base, arch=arch, name=str(getattr(props, "name", "") or base.name), **fields
    )


@functools.cache
def _cuda_target(index: int) -> Target:
    hip = torch.version.hip is not None
    return target_from_properties(torch.cuda.get_device_properties(index), hip)


def device_target(device: torch.device) -> Target:
    """The launch target of ``device``: its own properties on CUDA (and ROCm, whose devices are
    ``cuda`` devices too), an H100 otherwise.

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
