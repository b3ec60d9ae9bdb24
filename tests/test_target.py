"""The launch target of a device, from its properties, on CUDA and ROCm builds of torch (no GPU:
the properties are stand-ins with the attributes torch reports)."""

from __future__ import annotations

import types

import pytest
import torch

from layernorm_gpu import dispatch
from layernorm_gpu.kernels import heuristics as h
from layernorm_gpu.kernels import target as target_module

# What torch.cuda.get_device_properties reports for an H100 SXM (CUDA build) and an MI300X
# (ROCm build: gcnArchName carries the feature flags, warp_size is 64).
H100_PROPS = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3",
    major=9,
    minor=0,
    multi_processor_count=132,
    warp_size=32,
    L2_cache_size=50 * 2**20,
    regs_per_multiprocessor=65536,
    shared_memory_per_multiprocessor=233472,
    max_threads_per_multi_processor=2048,
)
MI300X_PROPS = types.SimpleNamespace(
    name="AMD Instinct MI300X",
    major=9,
    minor=4,
    gcnArchName="gfx942:sramecc+:xnack-",
    multi_processor_count=304,
    warp_size=64,
    L2_cache_size=4 * 2**20,
    regs_per_multiprocessor=131072,
    shared_memory_per_multiprocessor=65536,
    max_threads_per_multi_processor=2048,
)


@pytest.fixture
def fake_device(monkeypatch):
    """Make ``torch.cuda.get_device_properties`` return ``props`` and ``torch.version.hip``
    say whether torch is a ROCm build; the per-device target cache is cleared around it."""

    def install(props, hip: str | None) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
        monkeypatch.setattr(torch.version, "hip", hip)
        target_module._cuda_target.cache_clear()

    yield install
    target_module._cuda_target.cache_clear()


def test_cuda_h100_target(fake_device):
    fake_device(H100_PROPS, hip=None)
    target = target_module.device_target(torch.device("cuda", 0))
    assert (target.arch, target.backend, target.warp_size, target.sm_count) == (
        "sm_90",
        "cuda",
        32,
        132,
    )
    assert target.shared_memory_per_sm == 233472 and target.registers_per_sm == 65536
    assert target.name == "NVIDIA H100 80GB HBM3"
    # The configs are the H100's: the heuristics see the same SMs, warp size and limits.
    for n in (1024, 4096, 16384, 65536):
        for config in (h.forward_config, h.backward_config):
            assert config(16384, n, 2, target) == config(16384, n, 2, h.H100)


def test_rocm_mi300x_target(fake_device):
    fake_device(MI300X_PROPS, hip="6.4.0")
    target = target_module.device_target(torch.device("cuda"))
    assert (target.arch, target.backend, target.warp_size, target.sm_count) == (
        "gfx942",
        "hip",
        64,
        304,
    )
    # The properties win over the table (the L2 torch reports is one XCD's), the table fills in
    # what torch does not report.
    assert target.l2_bytes == 4 * 2**20
    assert target.dram_bandwidth == h.MI300X.dram_bandwidth
    cfg = h.backward_config(16384, 65536, 2, target)
    assert cfg.num_warps * target.warp_size == 512


def test_unknown_architectures_and_missing_properties(fake_device):
    """A device no table entry knows, on a torch that reports only the basics: its arch and SM
    count, the rest from the H100 (with 64-wide waves on ROCm)."""
    basic = types.SimpleNamespace(major=8, minor=9, multi_processor_count=128)
    fake_device(basic, hip=None)
    target = target_module.device_target(torch.device("cuda", 0))
    assert (target.arch, target.sm_count, target.warp_size) == ("sm_89", 128, 32)
    rocm = types.SimpleNamespace(major=11, minor=0, gcnArchName="gfx1100", multi_processor_count=48)
    fake_device(rocm, hip="6.4.0")
    target = target_module.device_target(torch.device("cuda", 0))
    assert (target.arch, target.backend, target.warp_size) == ("gfx1100", "hip", 64)


def test_cpu_tensors_use_the_h100_target():
    assert target_module.device_target(torch.device("cpu")) == h.H100


def test_auto_dispatch_picks_the_kernels_on_a_rocm_device(monkeypatch):
    """On ROCm builds tensors on the HIP device are ``cuda`` tensors (``is_cuda`` is True), so
    ``auto`` takes the kernels there exactly as on CUDA. A stand-in tensor: no GPU here."""
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    monkeypatch.setattr(dispatch, "TRITON_AVAILABLE", True)
    x = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device=torch.device("cuda", 0))
    assert dispatch.resolve_backend("auto", x) == "triton"
    assert dispatch.resolve_backend("triton", x) == "triton"
    x64 = types.SimpleNamespace(is_cuda=True, dtype=torch.float64, device=torch.device("cuda", 0))
    assert dispatch.resolve_backend("auto", x64) == "reference"
