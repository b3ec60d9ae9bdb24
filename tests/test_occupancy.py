"""Resident programs per SM: the pure count against hand-computed cases, and the glue that
takes a compiled kernel's numbers (a fake compiled kernel here: no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layernorm_gpu.kernels import heuristics, occupancy, registry
from layernorm_gpu.kernels.heuristics import A100, H100, MI300X, RTX5090, Target
from layernorm_gpu.kernels.occupancy import resident_programs


@pytest.mark.parametrize(
    "target, regs, warps, shared, expected",
    [
        # 16384 x 4096 bf16 forward before pipelining: a warp takes 79 x 32 -> 2560 registers,
        # a 16384-register partition holds 6 warps, the SM 24: 3 programs of 8 warps
        (H100, 79, 8, 32, 3),
        # 127 -> 4096 per warp, 4 per partition, 16 per SM: 2 programs of 8 warps, 1 of 16
        (H100, 127, 8, 1024, 2),
        (H100, 127, 16, 64, 1),
        # the looped forward: 32 registers x 16 warps; threads bind first (2048 / 512 = 4)
        (H100, 32, 16, 64, 4),
        # ... and with a 40 KiB pipeline on an A100: (41024 + 1024) -> 42112 B per program,
        # 164 KiB / 42112 = 3
        (A100, 32, 16, 41024, 3),
        # registers are per partition: 80 x 1 warp -> 6 warps per partition = 24 programs,
        # not 65536 // 2560 = 25
        (H100, 80, 1, 0, 24),
        # the resident-program cap: 16 registers x 1 warp would fit 128
        (H100, 16, 1, 0, 32),
        (Target(max_blocks_per_sm=16), 16, 1, 0, 16),
        # sm_120 holds 1536 threads: 3 programs of 512 threads even with few registers
        (RTX5090, 32, 16, 1024, 3),
        # shared memory: 100 KiB per program (+1 KiB reserved) leaves room for 2 on an H100
        (H100, 32, 4, 100 * 1024, 2),
        # a program asking for more shared memory than an SM has fits nowhere
        (H100, 32, 4, 300 * 1024, 0),
        # MI300X: 106 VGPRs -> 112 (granules of 8); 512 // 112 = 4 waves per SIMD; a program of
        # 4 waves takes one per SIMD: 4 programs
        (MI300X, 106, 4, 0, 4),
        # 70 -> 72: 7 waves per SIMD; 8 waves take 2 per SIMD: 3 programs
        (MI300X, 70, 8, 0, 3),
        # 32 VGPRs: 16 waves by registers, capped at 8 per SIMD; 16 KiB of LDS: 64 KiB / 16 = 4
        (MI300X, 32, 4, 16 * 1024, 4),
        # one-wave workgroups spread over the 4 SIMDs: 8 waves each, capped at 32 programs
        (MI300X, 32, 1, 0, 32),
    ],
)
def test_resident_programs(target, regs, warps, shared, expected):
    assert resident_programs(target, regs, warps, shared) == expected


class FakeFn:
    """A jit function whose ``warmup`` returns a compiled kernel of fixed numbers."""

    def __init__(self, n_regs: int, num_warps: int, shared: int):
        self.compiled = SimpleNamespace(
            n_regs=n_regs,
            metadata=SimpleNamespace(num_warps=num_warps, shared=shared),
            _init_handles=lambda: self.loads.append(1),
        )
        self.warmups: list[tuple[tuple, dict]] = []
        self.loads: list[int] = []

    def warmup(self, *args, grid, **kwargs):
        assert grid == (1,)
        self.warmups.append((args, kwargs))
        return self.compiled


CUDA0 = torch.device("cuda", 0)


def _h100(device: torch.device) -> Target:
    return H100


def test_programs_per_sm_from_the_compiled_kernel_cached_per_specialisation():
    fn = FakeFn(n_regs=79, num_warps=8, shared=16416)
    x = torch.empty(4, 8, dtype=torch.bfloat16)
    args, kwargs = (x, None, 8, 1, 1e-5), dict(BLOCK_N=8, num_warps=8)
    # 79 registers x 8 warps: 3 (shared: 17536 B per program, 13 would fit)
    assert occupancy.programs_per_sm(fn, args, kwargs, CUDA0, _h100) == 3
    assert len(fn.warmups) == 1 and fn.loads == [1]
    # same specialisation (values differ, facts equal): no new compile
    assert occupancy.programs_per_sm(fn, (x, None, 24, 1, 1e-6), kwargs, CUDA0, _h100) == 3
    assert len(fn.warmups) == 1
    # a constexpr, a dtype, an integer equal to one, another device, an integer divisible by
    # 16, one past int32, a tensor not 16-byte aligned: each compiles once
    occupancy.programs_per_sm(fn, args, dict(kwargs, BLOCK_N=16), CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x.float(), *args[1:]), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x, None, 8, 2, 1e-5), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, args, kwargs, torch.device("cuda", 1), _h100)
    occupancy.programs_per_sm(fn, (x, None, 32, 1, 1e-5), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x, None, 2**31 + 8, 1, 1e-5), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x.view(-1)[1:], None, 8, 1, 1e-5), kwargs, CUDA0, _h100)
    assert len(fn.warmups) == 8
    assert fn.warmups[0] == (args, kwargs)


def test_programs_per_sm_is_at_least_one():
    fn = FakeFn(n_regs=255, num_warps=32, shared=0)
    assert resident_programs(H100, 255, 32, 0) == 0
    assert occupancy.programs_per_sm(fn, (), dict(num_warps=32), CUDA0, _h100) == 1


def test_no_compiled_kernel_without_cuda(monkeypatch):
    fn = FakeFn(n_regs=32, num_warps=4, shared=0)
    for device in (torch.device("cpu"), torch.device("meta")):
        assert occupancy.programs_per_sm(fn, (), {}, device, _h100) is None
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert occupancy.programs_per_sm(fn, (), {}, CUDA0, _h100) is None
    assert fn.warmups == []


@pytest.mark.parametrize("n_rows, n_cols", [(1000, 4096), (1000, 32768)])
def test_forward_launcher_grids_one_wave_of_the_compiled_kernel(monkeypatch, n_rows, n_cols):
    """The launcher asks the glue for the kernel it is about to launch and sizes the grid to
    that many programs per SM; the tile shape and stages stay."""
    from layernorm_gpu import kernels

    asked = []

    def programs_per_sm(fn, args, kwargs, device):
        asked.append((fn, kwargs))
        return 2

    monkeypatch.setattr(occupancy, "programs_per_sm", programs_per_sm)
    x = torch.empty(n_rows, n_cols, dtype=torch.bfloat16, device="meta")
    launches = []
    with registry.intercepted(lambda launch, run: launches.append(launch)):
        kernels.norm_fwd(x, None, None, None, n_norm_dims=1, eps=1e-5, is_rms=True)
    (launch,) = launches
    static = heuristics.forward_config(n_rows, n_cols, 2)
    expected = heuristics.forward_config(n_rows, n_cols, 2, programs_per_sm=2)
    assert asked == [(launch.kernel.fn, {**launch.kwargs})]
    assert launch.grid == (expected.grid,)
    assert launch.named_args()["tiles_per_program"] == expected.tiles_per_program
    assert launch.kwargs["NUM_STAGES"] == static.num_stages
    assert expected.grid <= heuristics.H100.sm_count * 2
