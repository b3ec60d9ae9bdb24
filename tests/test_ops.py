"""The custom ops' contracts: ``torch.library.opcheck`` (schema, fake kernel, autograd
registration, dispatch) over the whole layout matrix, and fake and real outputs that agree in
shape, strides and dtype on both backends."""

from __future__ import annotations

import pytest
import torch

from helpers import KERNEL_DEVICE, make_input
from layernorm_gpu import ops

BACKENDS = ("reference", "triton")


def _device(backend: str) -> torch.device:
    return torch.device("cpu") if backend == "reference" else KERNEL_DEVICE


def _t(shape, device, dtype=torch.float32):
    return make_input(shape, dtype, device, requires_grad=True)


def _layouts(device):
    """(name, x, residual, n_norm_dims): every row layout the kernels address without a copy,
    and the ones they copy."""
    wide = _t((4, 12), device)
    return [
        ("contiguous", _t((3, 8), device), None, 1),
        ("transposed", _t((8, 6), device).t(), None, 1),
        ("permuted-3d", _t((2, 3, 8), device).permute(1, 0, 2), None, 1),
        ("sliced-rows", wide[:, :8], None, 1),
        ("strided-rows", _t((6, 8), device)[::2], None, 1),
        ("broadcast-rows", _t((1, 8), device).expand(5, 8), None, 1),
        ("multi-dim-norm", _t((2, 3, 4), device), None, 2),
        ("non-contiguous-norm", _t((4, 3), device).t().unsqueeze(0), None, 2),
        ("fused-transposed-x", _t((8, 6), device).t(), _t((6, 8), device), 1),
        ("fused-transposed-residual", _t((6, 8), device), _t((8, 6), device).t(), 1),
        ("fused-multi-dim", _t((2, 3, 4), device), _t((2, 3, 4), device).transpose(0, 1).
         contiguous().transpose(0, 1), 2),
    ]  # fmt: skip


def _params(x, n_norm_dims, dtype=None):
    shape = x.shape[x.dim() - n_norm_dims :]
    dtype = dtype or x.dtype
    return _t(shape, x.device, dtype), _t(shape, x.device, dtype)


def _fwd_kwargs(backend, n_norm_dims, is_rms=False, casting="torch", residual_in_fp32=False):
    return dict(
        n_norm_dims=n_norm_dims,
        eps=1e-5,
        weight_offset=0.0,
        is_rms=is_rms,
        residual_in_fp32=residual_in_fp32,
        casting=casting,
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("is_rms", [False, True], ids=["layer", "rms"])
def test_opcheck_norm_fwd_over_layouts(backend, is_rms):
    for name, x, residual, n_norm_dims in _layouts(_device(backend)):
        weight, bias = _params(x, n_norm_dims)
        args = (x, residual, weight, None if is_rms else bias)
        kwargs = _fwd_kwargs(backend, n_norm_dims, is_rms, residual_in_fp32=residual is not None)
        try:
            torch.library.opcheck(ops.norm_fwd, args, kwargs)
        except Exception as e:
            raise AssertionError(f"layout {name}") from e


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_norm_fwd_over_dtypes_and_options(backend):
    device = _device(backend)
    x16 = _t((3, 8), device, torch.bfloat16)
    cases = [
        (x16, None, *_params(x16, 1, torch.float32), _fwd_kwargs(backend, 1)),
        (x16, _t((3, 8), device), *_params(x16, 1), _fwd_kwargs(backend, 1)),
        (x16, None, _params(x16, 1)[0], None, _fwd_kwargs(backend, 1, True)),
        (_t((3, 8), device), None, None, None, _fwd_kwargs(backend, 1, True)),
    ]
    for x, residual, weight, bias, kwargs in cases:
        torch.library.opcheck(ops.norm_fwd, (x, residual, weight, bias), kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_norm_bwd(backend):
    device = _device(backend)
    x, w = make_input((3, 5), torch.float32, device), make_input(5, torch.float32, device)
    _, _, mean, rstd = ops.norm_fwd(x, None, w, None, **_fwd_kwargs(backend, 1))
    _, _, rms_mean, rms_rstd = ops.norm_fwd(x, None, w, None, **_fwd_kwargs(backend, 1, True))
    dy = make_input((3, 5), torch.float32, device)
    common = dict(n_norm_dims=1, backend=backend)
    cases = [
        ((dy, x, w, mean, rstd, None), dict(weight_offset=0.0, is_rms=False,
         dweight_dtype=torch.float32, dbias_dtype=torch.float32)),
        ((dy, x, None, mean, rstd, dy.clone()), dict(weight_offset=0.0, is_rms=False,
         dweight_dtype=None, dbias_dtype=None)),
        ((dy.t().contiguous().t(), x, w, rms_mean, rms_rstd, None), dict(weight_offset=1.0,
         is_rms=True, dweight_dtype=torch.bfloat16, dbias_dtype=None)),
    ]  # fmt: skip
    for args, kwargs in cases:
        torch.library.opcheck(ops.norm_bwd, args, {**kwargs, **common})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("casting", ["torch", "llama", "t5"])
def test_fake_and_real_outputs_agree(backend, casting):
    """Shape, strides and dtype of every output, from the fake kernel and from the backend."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = _device(backend)
    for name, x, residual, n_norm_dims in _layouts(device):
        for is_rms in (False, True):
            for param_dtype in (torch.float32, torch.bfloat16):
                x16 = x.detach().to(torch.bfloat16)
                weight, bias = _params(x16, n_norm_dims, param_dtype)
                if not is_rms and param_dtype != torch.float32:
                    continue
                args = (x16, residual, weight, None if is_rms else bias)
                kwargs = _fwd_kwargs(backend, n_norm_dims, is_rms, casting)
                real = ops.norm_fwd(*args, **kwargs)
                with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                    fake = ops.norm_fwd(*(mode.from_tensor(t) if t is not None else None
                                          for t in args), **kwargs)  # fmt: skip
                for r, f in zip(real, fake, strict=True):
                    got = (tuple(f.shape), f.stride(), f.dtype)
                    assert (tuple(r.shape), r.stride(), r.dtype) == got, (name, is_rms, casting)
