"""Data-parallel training with our modules: DDP and FSDP2 (``fully_shard``) with 2 processes.

Each rank trains on its half of a batch; gradients are averaged across the ranks, so after
every SGD step the parameters must equal those of one process trained on the whole batch
(mean losses over equal halves). CPU runs use gloo (the kernels in Triton's interpreter when
there is no CUDA, which the spawned ranks inherit through ``TRITON_INTERPRET``); the NCCL run
needs two GPUs. The ranks are child processes with bounded run time
(:mod:`distributed_helpers`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from distributed_helpers import run_ranks
from helpers import assert_close
from layernorm_gpu import LayerNorm, RMSNorm, dispatch

WORLD = 2
BATCH = 8
STEPS = 3
WIDTH = 16


def _model(backend: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The same initial model in every process: Linear -> LayerNorm -> GELU -> Linear ->
    RMSNorm -> Linear, norms with random affine parameters."""
    torch.manual_seed(1234)
    model = nn.Sequential(
        nn.Linear(8, WIDTH),
        LayerNorm(WIDTH, backend=backend),
        nn.GELU(),
        nn.Linear(WIDTH, WIDTH),
        RMSNorm(WIDTH, eps=1e-6, backend=backend),
        nn.Linear(WIDTH, 4),
    ).to(device, dtype)
    with torch.no_grad():
        for module in (model[1], model[4]):
            for param in module.parameters():
                param.add_(0.5 * torch.randn_like(param))
    return model


def _data(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(STEPS, BATCH, 8, generator=gen, dtype=torch.float64)
    target = torch.randn(STEPS, BATCH, 4, generator=gen, dtype=torch.float64)
    return x.to(device, dtype), target.to(device, dtype)


def _train(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    """``STEPS`` steps of SGD with momentum on the mean squared error."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x[step]), target[step]).backward()
        opt.step()


def _worker(
    rank: int,
    mode: str,
    pg_backend: str,
    backend: str,
    dtype: torch.dtype,
    out_dir: str,
) -> None:
    """One rank: train its half of every batch under ``mode`` ("ddp" or "fsdp"), save the
    full parameters and how many op calls ran on ``backend``."""
    device = torch.device(f"cuda:{rank}" if pg_backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = _model(backend, dtype, device)
    if mode == "ddp":
        wrapped: nn.Module = DistributedDataParallel(
            model, device_ids=[rank] if device.type == "cuda" else None
        )
    else:
        mesh = init_device_mesh(device.type, (WORLD,))
        for module in model:
            if next(module.parameters(), None) is not None:
                fully_shard(module, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    x, target = _data(dtype, device)
    half = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    dispatch.calls.clear()
    _train(wrapped, x[:, half], target[:, half])
    params = {}
    for name, param in model.named_parameters():
        full = param.full_tensor() if mode == "fsdp" else param
        params[name] = full.detach().cpu()
    torch.save(
        {"params": params, "calls": dispatch.calls[backend]}, Path(out_dir) / f"rank{rank}.pt"
    )


def _check_against_single_process(
    tmp_path: Path,
    mode: str,
    pg_backend: str,
    backend: str,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    run_ranks(
        _worker, WORLD, tmp_path, (mode, pg_backend, backend, dtype, str(tmp_path)), pg_backend
    )
    model = _model(backend, dtype, device)
    initial = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    _train(model, *_data(dtype, device))
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # forward and backward of both norms at every step ran on the requested backend
        assert result["calls"] == 2 * 2 * STEPS
        assert result["params"].keys() == initial.keys()
        for name, param in model.named_parameters():
            trained = result["params"][name]
            assert not torch.equal(trained, initial[name]), f"rank {rank}: {name} not trained"
            assert_close(trained, param.detach().cpu(), msg=f"rank {rank}: {name}")


# The kernels take CPU tensors only in Triton's interpreter (used when there is no CUDA).
CPU_CASES = [pytest.param("reference", torch.float64, id="reference-fp64")]
if not torch.cuda.is_available():
    CPU_CASES.append(pytest.param("triton", torch.float32, id="triton-fp32"))
CPU = torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "dtype"), CPU_CASES)
def test_ddp_gloo_matches_single_process(tmp_path: Path, backend: str, dtype: torch.dtype) -> None:
    _check_against_single_process(tmp_path, "ddp", "gloo", backend, dtype, CPU)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "dtype"), CPU_CASES)
def test_fsdp2_gloo_matches_single_process(
    tmp_path: Path, backend: str, dtype: torch.dtype
) -> None:
    _check_against_single_process(tmp_path, "fsdp", "gloo", backend, dtype, CPU)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_nccl_matches_single_process(tmp_path: Path, mode: str) -> None:
    if torch.cuda.device_count() < WORLD or not dist.is_nccl_available():
        pytest.skip(
            f"NCCL needs one GPU per rank: {WORLD} GPUs and NCCL, "
            f"found {torch.cuda.device_count()} GPU(s)"
        )
    _check_against_single_process(
        tmp_path, mode, "nccl", "triton", torch.float32, torch.device("cuda:0")
    )
