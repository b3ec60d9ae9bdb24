"""Autocast: our modules follow torch's norms in every autocast region.

Policy (the same for LayerNorm and RMSNorm, the modules and the functional API):

* CUDA autocast puts ``layer_norm`` and ``rms_norm`` on its float32 list: x and the parameters
  are cast to float32 and the output is float32, whatever the activations' dtype. The
  ``layernorm_gpu::norm_fwd`` op registers the same rule for CUDA, so ``LayerNorm(x)`` under
  ``torch.autocast("cuda", dtype=torch.bfloat16)`` returns float32 exactly like
  ``torch.nn.LayerNorm(x)``.
* CPU autocast has no rule for either norm: they run in the input's dtype (float32 input gives
  float32; bfloat16 activations, e.g. from an autocast Linear, with float32 parameters give
  bfloat16). Our op registers no CPU rule, so it does the same.

Values are checked against torch's module in float64 fed the same (already rounded) input the
norm receives inside the region, at the helpers tolerance of the output's dtype.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import LayerNorm, RMSNorm, replace_norms

# The kernels take CPU tensors only in Triton's interpreter (used when there is no CUDA).
CPU_BACKENDS = ("reference", "triton") if KERNEL_DEVICE.type == "cpu" else ("reference",)
CLASSES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "layer": (nn.LayerNorm, LayerNorm),
    "rms": (nn.RMSNorm, RMSNorm),
}
HIDDEN = 32


def _pair(
    kind: str, backend: str | None, device: torch.device | str
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(torch's norm with random float32 parameters, ours with the same, float64 oracle)."""
    torch_cls, our_cls = CLASSES[kind]
    theirs = torch_cls(HIDDEN, eps=1e-5, device=device)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(make_input(param.shape, param.dtype, device, scale=0.5))
    ours = our_cls(HIDDEN, eps=1e-5, device=device, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours, copy.deepcopy(theirs).double()


def _check_norm_under_autocast(
    kind: str,
    backend: str | None,
    device_type: str,
    amp_dtype: torch.dtype,
    x_dtype: torch.dtype,
    expected_dtype: torch.dtype,
) -> None:
    """The norm alone inside the region: output and gradient dtypes equal torch's (and
    ``expected_dtype``); y, dx and dW equal the float64 oracle."""
    device = torch.device(device_type)
    theirs, ours, oracle = _pair(kind, backend, device)
    x = make_input((4, 3, HIDDEN), x_dtype, device)
    results = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast(device_type, dtype=amp_dtype):
            y = module(leaf)
        dy = make_input(y.shape, y.dtype, device)
        y.backward(dy)
        results[name] = (y.detach(), leaf.grad, module.weight.grad, dy)
    y, dx, dw, dy = results["ours"]
    y_torch, dx_torch, dw_torch, _ = results["torch"]
    assert y.dtype == y_torch.dtype == expected_dtype
    assert dx.dtype == dx_torch.dtype == x_dtype
    assert dw.dtype == dw_torch.dtype == torch.float32

    leaf64 = x.double().requires_grad_(True)
    y_ref = oracle(leaf64)
    y_ref.backward(dy.double())
    assert_close(y, y_ref, msg="y")
    assert_close(dx, leaf64.grad, msg="dx")
    assert_close(dw, oracle.weight.grad, reduction=12, msg="dW")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", CLASSES)
def test_cpu_autocast_keeps_input_dtype(kind: str, x_dtype: torch.dtype, backend: str) -> None:
    _check_norm_under_autocast(kind, backend, "cpu", torch.bfloat16, x_dtype, x_dtype)


# (device, backend, the norm's output dtype): CPU autocast leaves the norm in bfloat16, CUDA
# autocast runs it in float32
MODEL_CASES = [pytest.param("cpu", b, torch.bfloat16, id=f"cpu-{b}") for b in CPU_BACKENDS]
MODEL_CASES.append(pytest.param("cuda", None, torch.float32, id="cuda-auto", marks=pytest.mark.gpu))


@pytest.mark.parametrize(("device", "backend", "out_dtype"), MODEL_CASES)
@pytest.mark.parametrize("kind", CLASSES)
def test_autocast_model_matches_torch(
    kind: str, device: str, backend: str | None, out_dtype: torch.dtype
) -> None:
    """Linear -> norm under autocast: the Linear hands the norm bfloat16 activations and
    float32 parameters; the swapped model's output has torch's dtype and equals the float64
    norm of those activations."""
    theirs, _, oracle = _pair(kind, None, device)
    linear = nn.Linear(16, HIDDEN, device=device)
    model = nn.Sequential(linear, theirs)
    swapped = replace_norms(copy.deepcopy(model), backend=backend)
    x = make_input((64, 16), torch.float32, device)
    with torch.autocast(device, dtype=torch.bfloat16):
        hidden = linear(x)
        y_torch = model(x)
        y = swapped(x)
    assert hidden.dtype == torch.bfloat16
    assert y.dtype == y_torch.dtype == out_dtype
    assert_close(y.cpu(), oracle(hidden.double()).cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton", "reference"])
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", CLASSES)
def test_cuda_autocast_runs_in_float32(
    kind: str, x_dtype: torch.dtype, amp_dtype: torch.dtype, backend: str
) -> None:
    """CUDA autocast: float32 output and float32 arithmetic, as torch's modules."""
    _check_norm_under_autocast(kind, backend, "cuda", amp_dtype, x_dtype, torch.float32)
