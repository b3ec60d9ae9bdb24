"""The norms as ``torch.library`` custom operators, with their fake kernels and their vmap and
autocast rules (autograd and forward-mode AD: :mod:`.autograd`).

``layernorm_gpu::norm_fwd`` and ``layernorm_gpu::norm_bwd`` serve LayerNorm and RMSNorm, with
or without the fused residual add. Each op picks the backend named by its ``backend`` argument
(resolved by :mod:`.dispatch` before the call): ``"triton"`` runs the kernels' launchers,
``"reference"`` the torch reference; both have the same ``norm_fwd`` / ``norm_bwd`` signature,
and the dtype rules come from :mod:`.dtypes`. Why opaque ``custom_op``s rather than
``triton_op``: Inductor decomposes a ``triton_op`` into its Triton kernels, so one that also
has a CPU implementation fails to compile on CPU (torch 2.13: "0 active drivers"). An opaque op
compiles the same on CPU and CUDA, with no graph break, and keeps the kernels' own launch
heuristics.

Outputs (every one a new contiguous tensor, from the fake kernel and both backends alike):
``norm_fwd`` gives ``(y, h, mean, rstd)``: y ``x.shape`` in the casting rule's dtype; h
``x.shape`` in h's dtype (an empty ``(0,)`` tensor without residual); mean and rstd in the
leading shape ``x.shape[:-n_norm_dims]``, float32 (float64 for float64 input), mean an empty
``(0,)`` tensor for RMSNorm. ``norm_bwd`` gives ``(dx, dweight, dbias)``: dx ``x.shape`` in x's
dtype; dweight / dbias in the normalised shape, or empty when not asked for.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import dispatch, reference
from ._checks import check_dtypes
from .dtypes import acc_dtype, h_dtype, output_dtypes

_LIB = "layernorm_gpu"
# Defined through torch.library.Library rather than the custom_op decorator: a custom_op's
# implementation is wrapped in torch._dynamo.disable, so the first eager call would import
# torch._dynamo (seconds); these ops' first call costs milliseconds.
_LIBRARY = torch.library.Library(_LIB, "DEF")
_LIBRARY.define(
    "norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, int n_norm_dims, "
    "float eps, float weight_offset, bool is_rms, bool residual_in_fp32, str casting, "
    "str backend, bool memory_efficient=False) -> (Tensor, Tensor, Tensor, Tensor)"
)
_LIBRARY.define(
    "norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, Tensor? dh, "
    "int n_norm_dims, float weight_offset, bool is_rms, ScalarType? dweight_dtype, "
    "ScalarType? dbias_dtype, str backend, Tensor? bias=None, bool x_is_y=False, "
    "ScalarType? dx_dtype=None) -> (Tensor, Tensor, Tensor)"
)


def _backend(name: str) -> ModuleType:
    """The module with ``norm_fwd`` / ``norm_bwd`` for the resolved backend ``name``."""
    dispatch.calls[name] += 1
    if name == "triton":
        from . import kernels

        return kernels
    return reference


def _fwd_dtypes(x, residual, weight, residual_in_fp32, casting):
    """``(h_dtype, y_dtype, x_hat_dtype)`` of a forward call."""
    h = None if residual is None else h_dtype(x.dtype, residual.dtype, residual_in_fp32)
    w = None if weight is None else weight.dtype
    return (h, *output_dtypes(x.dtype, h or x.dtype, w, casting))


def _lead(x: torch.Tensor, n_norm_dims: int) -> torch.Size:
    return x.shape[: x.dim() - n_norm_dims]


def _forward(backend, x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms,
             residual_in_fp32, casting):  # fmt: skip
    """The op's body on the module ``backend`` (also the vmap rule's, with batched weights)."""
    h_dt, y_dt, x_hat_dt = _fwd_dtypes(x, residual, weight, residual_in_fp32, casting)
    y, h, mean, rstd = backend.norm_fwd(
        x,
        residual,
        None if weight is None else weight.contiguous(),
        None if bias is None else bias.contiguous(),
        n_norm_dims=n_norm_dims,
        eps=eps,
        is_rms=is_rms,
        weight_offset=weight_offset,
        h_dtype=h_dt,
        y_dtype=y_dt,
        x_hat_dtype=x_hat_dt,
    )
    lead = _lead(x, n_norm_dims)
    return (
        y,
        x.new_empty(0) if h is None else h,
        mean if is_rms else mean.view(lead),
        rstd.view(lead),
    )


def _norm_fwd_impl(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    n_norm_dims: int,
    eps: float,
    weight_offset: float,
    is_rms: bool,
    residual_in_fp32: bool,
    casting: str,
    backend: str,
    memory_efficient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise the rows (last ``n_norm_dims`` dims) of ``x`` (``x + residual`` if given).

    ``memory_efficient`` only tells autograd to save y rather than the norm's input.
    Returns ``(y, h, mean, rstd)`` (see the module docstring for shapes and dtypes).
    """
    check_dtypes(x, weight, bias, is_rms=is_rms)
    return _forward(
        _backend(backend), x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms,
        residual_in_fp32, casting,
    )  # fmt: skip


def norm_fwd_differentiable(x, residual, weight, bias, n_norm_dims, eps, weight_offset,
                            is_rms, residual_in_fp32, casting, backend,
                            memory_efficient=False):  # fmt: skip
    """``norm_fwd`` as the reference's torch ops, not the op: what autograd, ``torch.func`` and
    ``torch.compile`` then differentiate are those ops themselves, to any order and in any
    nesting (see :func:`.autograd.norm_fwd` for when). ``backend`` and ``memory_efficient`` are
    not used."""
    return _norm_fwd_impl(
        x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms, residual_in_fp32,
        casting, "reference",
    )  # fmt: skip


@torch.library.register_fake(f"{_LIB}::norm_fwd")
def _(x, residual, weight, bias, n_norm_dims, eps, weight_offset, is_rms, residual_in_fp32,
      casting, backend, memory_efficient=False):  # fmt: skip
    check_dtypes(x, weight, bias, is_rms=is_rms)
    h_dt, y_dt, _ = _fwd_dtypes(x, residual, weight, residual_in_fp32, casting)
    stats = acc_dtype(h_dt or x.dtype)
    lead = _lead(x, n_norm_dims)
    return (
        x.new_empty(x.shape, dtype=y_dt),
        x.new_empty(0) if h_dt is None else x.new_empty(x.shape, dtype=h_dt),
        x.new_empty(0 if is_rms else lead, dtype=stats),
        x.new_empty(lead, dtype=stats),
    )


def _norm_fwd_vmap(info, in_dims, x, residual, weight, bias, n_norm_dims, eps, weight_offset,
                   is_rms, residual_in_fp32, casting, backend, memory_efficient=False):  # fmt: skip
    """vmap of ``norm_fwd``: the vmapped dim is more rows (moved to the front, or x expanded
    when only the parameters are batched). A batched weight or bias cannot be one vector for all
    rows: then the reference runs, with the parameters broadcast over each batch's rows."""
    x_dim, r_dim, w_dim, b_dim = in_dims[:4]
    size = info.batch_size

    def to_front(t, dim):
        return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)

    x = to_front(x, x_dim)
    residual = None if residual is None else to_front(residual, r_dim)
    args = (n_norm_dims, eps, weight_offset, is_rms, residual_in_fp32, casting)
    del memory_efficient  # an autograd choice; the vmapped forward is not saved from
    if w_dim is None and b_dim is None:
        out = torch.ops.layernorm_gpu.norm_fwd(x, residual, weight, bias, *args, backend)
    else:
        broadcast = [1] * (x.dim() - 1 - n_norm_dims)

        def per_batch(t, dim):
            if t is None or dim is None:
                return t
            t = t.movedim(dim, 0)
            return t.reshape(size, *broadcast, *t.shape[1:])

        weight, bias = per_batch(weight, w_dim), per_batch(bias, b_dim)
        out = _forward(_backend("reference"), x, residual, weight, bias, *args)
    return out, (0, None if residual is None else 0, None if is_rms else 0, 0)


_LIBRARY.impl("norm_fwd", _norm_fwd_impl, "CompositeExplicitAutograd")
torch.library.register_vmap(f"{_LIB}::norm_fwd", _norm_fwd_vmap)
norm_fwd = torch.ops.layernorm_gpu.norm_fwd


def _norm_bwd_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dh: torch.Tensor | None,
    n_norm_dims: int,
    weight_offset: float,
    is_rms: bool,
    dweight_dtype: torch.dtype | None,
    dbias_dtype: torch.dtype | None,
    backend: str,
    bias: torch.Tensor | None = None,
    x_is_y: bool = False,
    dx_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``norm_fwd`` from its saved norm input ``x`` (h when fused), mean and
    rstd; or, with ``x_is_y``, from its output y (x_hat recomputed as ``(y - bias) / (weight +
    weight_offset)``; mean unused). ``dh`` (optional) is the gradient on the fused output h,
    added to dx. dW / dB are computed only when their dtype is given.

    Returns ``(dx, dweight, dbias)`` (see the module docstring; dx in ``dx_dtype``, default
    x's).
    """
    options = {"bias": bias, "x_is_y": True, "dx_dtype": dx_dtype} if x_is_y else {}
    dx, dweight, dbias = _backend(backend).norm_bwd(
        dy,
        x,
        None if weight is None else weight.contiguous(),
        mean.reshape(-1),
        rstd.reshape(-1),
        dh,
        n_norm_dims=n_norm_dims,
        is_rms=is_rms,
        weight_offset=weight_offset,
        dweight_dtype=dweight_dtype,
        dbias_dtype=dbias_dtype,
        **options,
    )
    empty = x.new_empty(0)
    return dx, empty if dweight is None else dweight, empty.clone() if dbias is None else dbias


@torch.library.register_fake(f"{_LIB}::norm_bwd")
def _(dy, x, weight, mean, rstd, dh, n_norm_dims, weight_offset, is_rms, dweight_dtype,
      dbias_dtype, backend, bias=None, x_is_y=False, dx_dtype=None):  # fmt: skip
    norm_shape = x.shape[x.dim() - n_norm_dims :]

    def grad(dtype):
        return x.new_empty(0) if dtype is None else x.new_empty(norm_shape, dtype=dtype)

    return x.new_empty(x.shape, dtype=dx_dtype), grad(dweight_dtype), grad(dbias_dtype)


_LIBRARY.impl("norm_bwd", _norm_bwd_impl, "CompositeExplicitAutograd")
norm_bwd = torch.ops.layernorm_gpu.norm_bwd

# torch.nn.LayerNorm and RMSNorm run in float32 under CUDA autocast; so do these ops. CPU
# autocast leaves both in the input's dtype, which is what an op without a rule does.
torch.library.register_autocast(f"{_LIB}::norm_fwd", "cuda", torch.float32)
