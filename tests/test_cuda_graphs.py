"""CUDA graphs: forward and backward of our norms captured once, replayed on new inputs.

The kernels allocate with the caching allocator, launch without host synchronisation and are
deterministic (no atomics), so a replay copied new values into the static inputs must give the
bitwise results of running the same step eagerly, and the float64 oracle's at the helpers
tolerances. Needs CUDA (the whole module is marked ``gpu``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from helpers import assert_close, make_input
from layernorm_gpu import LayerNorm, RMSNorm, dispatch, fused_add_layer_norm, fused_add_rms_norm

pytestmark = pytest.mark.gpu

SHAPE = (4, 16, 256)
ROWS = SHAPE[0] * SHAPE[1]
DEVICE = "cuda"
Step = Callable[[nn.Module, dict[str, torch.Tensor]], list[torch.Tensor]]


def _norm_step(norm: nn.Module, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``y = norm(x)``, backward of ``dy``; returns ``[y]``."""
    y = norm(t["x"])
    y.backward(t["dy"])
    return [y]


def _fused_step(norm: nn.Module, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """``(y, h) = fused_add(x, residual)``, backward of ``(dy, dh)``; returns ``[y, h]``."""
    if isinstance(norm, RMSNorm):
        y, h = fused_add_rms_norm(
            t["x"],
            t["residual"],
            norm.normalized_shape,
            norm.weight,
            norm.eps,
            backend=norm.backend,
        )
    else:
        y, h = fused_add_layer_norm(
            t["x"],
            t["residual"],
            norm.normalized_shape,
            norm.weight,
            norm.bias,
            norm.eps,
            backend=norm.backend,
        )
    torch.autograd.backward([y, h], [t["dy"], t["dh"]])
    return [y, h]


def _make_inputs(dtype: torch.dtype, fused: bool) -> dict[str, torch.Tensor]:
    names = ["x", "residual", "dy", "dh"] if fused else ["x", "dy"]
    t = {name: make_input(SHAPE, dtype, DEVICE) for name in names}
    for name in ("x", "residual"):
        if name in t:
            t[name].requires_grad_(True)
    return t


def _grads(norm: nn.Module, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    leaves = [t[name] for name in ("x", "residual") if name in t]
    return [leaf.grad for leaf in leaves] + [p.grad for p in norm.parameters()]


def _zero_grads(norm: nn.Module, t: dict[str, torch.Tensor]) -> None:
    norm.zero_grad(set_to_none=True)
    for name in ("x", "residual"):
        if name in t:
            t[name].grad = None


def _oracle(
    norm: nn.Module, fused: bool, t: dict[str, torch.Tensor], outs: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The step through torch's module in float64 (outputs, gradients). Fused, the norm is fed
    h as stored (rounded to its dtype), and h is checked against the exact x + residual."""
    torch_cls = nn.RMSNorm if isinstance(norm, RMSNorm) else nn.LayerNorm
    kwargs = {} if torch_cls is nn.RMSNorm else {"bias": norm.bias is not None}
    oracle = torch_cls(
        norm.normalized_shape,
        norm.eps,
        norm.elementwise_affine,
        **kwargs,
        device=DEVICE,
        dtype=torch.float64,
    )
    oracle.load_state_dict(norm.state_dict())
    x = (outs[1] if fused else t["x"]).detach().double().requires_grad_(True)
    y = oracle(x)
    y.backward(t["dy"].double())
    param_grads = [p.grad for p in oracle.parameters()]
    if not fused:
        return [y.detach()], [x.grad, *param_grads]
    dnorm = x.grad + t["dh"].double()
    h = t["x"].detach().double() + t["residual"].detach().double()
    return [y.detach(), h], [dnorm, dnorm, *param_grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fused", [False, True], ids=["norm", "fused-add"])
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_graph_replay_matches_eager(kind: str, fused: bool, dtype: torch.dtype) -> None:
    norm = (LayerNorm if kind == "layer" else RMSNorm)(
        SHAPE[-1], eps=1e-5, device=DEVICE, backend="triton"
    )
    with torch.no_grad():
        for param in norm.parameters():
            param.copy_(make_input(param.shape, param.dtype, DEVICE, scale=0.5))
    step: Step = _fused_step if fused else _norm_step
    static = _make_inputs(dtype, fused)
    eager_norm = copy.deepcopy(norm)

    # warm up on a side stream: Triton compiles its kernels before the capture, not in it
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _zero_grads(norm, static)
            step(norm, static)
    torch.cuda.current_stream().wait_stream(side)

    _zero_grads(norm, static)
    calls = dispatch.calls["triton"]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outs = step(norm, static)
    assert dispatch.calls["triton"] == calls + 2, "capture did not run the Triton kernels"
    static_grads = _grads(norm, static)

    for _ in range(2):
        fresh = _make_inputs(dtype, fused)
        with torch.no_grad():
            for name, value in fresh.items():
                static[name].copy_(value)
        graph.replay()
        torch.cuda.synchronize()

        _zero_grads(eager_norm, fresh)
        eager_outs = [out.detach() for out in step(eager_norm, fresh)]
        eager_grads = _grads(eager_norm, fresh)
        assert len(static_outs) == len(eager_outs)
        assert len(static_grads) == len(eager_grads)
        for replayed, eager in zip(
            static_outs + static_grads, eager_outs + eager_grads, strict=True
        ):
            assert torch.equal(replayed, eager)

        ref_outs, ref_grads = _oracle(eager_norm, fused, fresh, static_outs)
        for i, (replayed, ref) in enumerate(zip(static_outs, ref_outs, strict=True)):
            assert_close(replayed, ref, msg=f"output {i}")
        n_inputs = 2 if fused else 1
        for i, (replayed, ref) in enumerate(zip(static_grads, ref_grads, strict=True)):
            assert_close(replayed, ref, reduction=1 if i < n_inputs else ROWS, msg=f"grad {i}")
