"""DTensor sharding rules for ``layernorm_gpu::norm_fwd`` / ``norm_bwd``: tensor and sequence
parallelism (``torch.distributed.tensor.parallel``) with our norms.

The rules, per mesh dimension (DTensor expands them over every dimension of the mesh and picks
the combination that costs the least redistribution):

- Rows sharded: x (and residual) sharded on a leading dim ``d`` (any dim before the
  ``n_norm_dims`` normalised ones) keep ``Shard(d)`` through y, h, mean and rstd, since rows
  are independent; weight and bias are replicated. Sequence parallelism is this rule on the
  sequence dim. The backward takes dy, x, mean, rstd and dh sharded the same way and returns
  dx ``Shard(d)`` and dW / dB as ``Partial`` sums of the ranks' row sums, which DTensor
  reduces when they are read (or FSDP2 reduce-scatters).
- Everything replicated. An input sharded on a normalised dim (or ``Partial``) matches no row
  rule: DTensor redistributes it first, to ``Replicate`` (an all-gather of x: every rank then
  normalises every row, and y comes back replicated) or to a leading-dim ``Shard`` (an
  all-to-all), whichever its cost model rates cheaper. Correct, but it moves all of x; a plan
  should hand the norms rows (``SequenceParallel``) instead.

Empty placeholders (h without residual, RMSNorm's mean, dW / dB that were not asked for, the
mean the backward gets when it recomputes from y under ``memory_efficient``) are replicated.
Arguments are bound by their schema names, so the rules keep working when the ops gain
arguments.

The rules are registered lazily: importing ``torch.distributed.tensor`` costs seconds, so
``import layernorm_gpu`` does not. ``autograd.norm_fwd``, which every functional call goes
through, calls :func:`register_if_dtensor` on its input: the rules register the first time a
DTensor arrives (also while ``torch.compile`` traces). Code that calls the ops directly on
DTensors calls :func:`register` once first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["register", "register_if_dtensor"]

_registered = False


def register_if_dtensor(x: torch.Tensor) -> None:
    """Register the rules if ``x`` is a DTensor (and they are not registered yet).

    Costs a flag test once registered, a dict lookup while ``torch.distributed.tensor`` has
    not been imported (no DTensor can exist then).
    """
    if _registered:
        return
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(x, dtensor.DTensor):
        register()


def register() -> None:
    """Register the sharding rules of both ops with DTensor (idempotent)."""
    global _registered
    if _registered:
        return
    from torch.distributed.tensor.experimental import register_sharding

    register_sharding(torch.ops.layernorm_gpu.norm_fwd.default)(_norm_fwd_rules)
    register_sharding(torch.ops.layernorm_gpu.norm_bwd.default)(_norm_bwd_rules)
    _registered = True


# What torch.compiler.assume_constant_result(register) sets, without importing torch._dynamo
# (seconds): Dynamo runs the registration while tracing instead of tracing into it, so a model
# compiled (fullgraph too) before any eager DTensor call registers the rules as well.
register._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _is_tensor_argument(argument: torch.Argument) -> bool:
    kind = argument.type
    if isinstance(kind, torch.OptionalType):
        kind = kind.getElementType()
    return isinstance(kind, torch.TensorType)


def _rules(
    op: torch._ops.OpOverload,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    outputs: Callable[[Any, dict[str, Any]], list[Any]],
    row_inputs: Callable[[dict[str, Any]], set[str]],
) -> list[tuple[list[Any], list[Any]]]:
    """``(output placements, input placements)`` for each acceptable sharding of ``op``.

    ``register_sharding`` passes the op's arguments as called, with each tensor replaced by
    its spec. ``outputs(row, bound)`` gives the output placements when the rows are placed as
    ``row``; ``row_inputs(bound)`` names the tensor inputs that follow the rows (the others
    are replicated). Input placements come in the order DTensor lists the op's tensors
    (positional arguments, then keywords), None for a non-tensor or an absent tensor.
    """
    from torch.distributed.tensor import Replicate, Shard

    tensor_names = {a.name for a in op._schema.arguments if _is_tensor_argument(a)}
    order = [a.name for a in op._schema.arguments][: len(args)] + list(kwargs)
    bound = dict(zip(order, (*args, *kwargs.values()), strict=True))
    follows_rows = row_inputs(bound)

    def rule(row: Any) -> tuple[list[Any], list[Any]]:
        inputs = [
            None
            if name not in tensor_names or bound[name] is None
            else row
            if name in follows_rows
            else Replicate()
            for name in order
        ]
        return outputs(row, bound), inputs

    n_lead_dims = bound["x"].ndim - bound["n_norm_dims"]
    return [rule(Replicate())] + [rule(Shard(dim)) for dim in range(n_lead_dims)]


def _norm_fwd_rules(*args: Any, **kwargs: Any) -> list[tuple[list[Any], list[Any]]]:
    """y, h, mean, rstd follow the rows of x and residual; weight and bias replicated."""
    from torch.distributed.tensor import Replicate

    def outputs(row, bound):
        h = row if bound["residual"] is not None else Replicate()
        mean = Replicate() if bound["is_rms"] else row
        return [row, h, mean, row]

    return _rules(
        torch.ops.layernorm_gpu.norm_fwd.default,
        args,
        kwargs,
        outputs,
        lambda bound: {"x", "residual"},
    )


def _norm_bwd_rules(*args: Any, **kwargs: Any) -> list[tuple[list[Any], list[Any]]]:
    """dx follows the rows of dy, x, mean, rstd and dh; dW / dB are partial sums over the
    rows when the rows are sharded; weight replicated."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    def outputs(row, bound):
        def parameter_grad(dtype):
            return Partial() if isinstance(row, Shard) and dtype is not None else Replicate()

        return [row, parameter_grad(bound["dweight_dtype"]), parameter_grad(bound["dbias_dtype"])]

    def row_inputs(bound):
        # mean is an empty placeholder for RMSNorm and when x is y (memory_efficient)
        n_lead_dims = bound["x"].ndim - bound["n_norm_dims"]
        mean_has_rows = bound["mean"].shape == bound["x"].shape[:n_lead_dims]
        return {"dy", "x", "rstd", "dh"} | ({"mean"} if mean_has_rows else set())

    return _rules(torch.ops.layernorm_gpu.norm_bwd.default, args, kwargs, outputs, row_inputs)
