"""Resident programs per SM: the pure count against hand-computed cases, and the glue that
takes a compiled kernel's numbers (a fake compiled kernel here: no GPU needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from layernorm_gpu.kernels import heuristics, occupancy, registry
from layernorm_gpu.kernels.occupancy import SmLimits, resident_programs, sm_limits

H100 = sm_limits(90)
A100 = sm_limits(80)


@pytest.mark.parametrize(
    "regs, warps, shared, limits, expected",
    [
        # 16384 x 4096 bf16 forward before pipelining: a warp takes 79 x 32 -> 2560 registers,
        # a 16384-register partition holds 6 warps, the SM 24: 3 programs of 8 warps
        (79, 8, 32, H100, 3),
        # the widest single block: 128 x 32 = 4096 per warp, 4 per partition, 16 warps: 1
        (127, 16, 64, H100, 1),
        # the looped forward: 32 registers x 16 warps; threads bind first (2048 / 512 = 4)
        (32, 16, 64, H100, 4),
        # ... and with a 40 KiB pipeline on an A100: (41024 + 1024) -> 42112 B per program,
        # 164 KiB / 42112 = 3
        (32, 16, 41024, A100, 3),
        # registers are per partition: 80 x 1 warp -> 6 warps per partition = 24 programs,
        # not 65536 // 2560 = 25
        (80, 1, 0, H100, 24),
        # the resident-program cap: 16 registers x 1 warp would fit 128
        (16, 1, 0, H100, 32),
        (16, 1, 0, SmLimits(max_programs=16), 16),
        # a program asking for more shared memory than an SM has fits nowhere
        (32, 4, 300 * 1024, H100, 0),
    ],
)
def test_resident_programs(regs, warps, shared, limits, expected):
    assert resident_programs(regs, warps, shared, limits) == expected


def test_sm_limits_of_an_unknown_arch_is_an_error():
    with pytest.raises(ValueError, match="sm_75"):
        sm_limits(75)


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


def _h100(index: int) -> SmLimits:
    return H100


def test_programs_per_sm_from_the_compiled_kernel_cached_per_specialisation():
    fn = FakeFn(n_regs=79, num_warps=8, shared=16416)
    x = torch.empty(4, 8, dtype=torch.bfloat16)
    args, kwargs = (x, None, 8, 1, 1e-5), dict(BLOCK_N=8, num_warps=8)
    # 79 registers x 8 warps: 3 (shared: 17536 B per program, 13 would fit)
    assert occupancy.programs_per_sm(fn, args, kwargs, CUDA0, _h100) == 3
    assert len(fn.warmups) == 1 and fn.loads == [1]
    # same specialisation (values differ, facts equal): no new compile
    assert occupancy.programs_per_sm(fn, (x, None, 16, 1, 1e-6), kwargs, CUDA0, _h100) == 3
    assert len(fn.warmups) == 1
    # a constexpr, a dtype, an integer equal to one, another device: each compiles once
    occupancy.programs_per_sm(fn, args, dict(kwargs, BLOCK_N=16), CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x.float(), *args[1:]), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, (x, None, 8, 2, 1e-5), kwargs, CUDA0, _h100)
    occupancy.programs_per_sm(fn, args, kwargs, torch.device("cuda", 1), _h100)
    assert len(fn.warmups) == 5
    assert fn.warmups[0] == (args, kwargs)


def test_programs_per_sm_is_at_least_one():
    fn = FakeFn(n_regs=255, num_warps=32, shared=0)
    assert resident_programs(255, 32, 0, H100) == 0
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
