"""Tensor and sequence parallelism through DTensor (:mod:`layernorm_gpu.sharding`), with gloo
on CPU processes.

- The sharding rules, entry point by entry point: inputs sharded on a leading dim keep that
  sharding through y, h, dx and dresidual; dW / dB come back as ``Partial`` sums; with x
  sharded on the normalised dim or replicated too, every value equals the single-process one.
  The rules register lazily (not at import), also when torch.compile traces the first call.
- Training, ecosystem plans unchanged: a small Llama-like model under a torchtitan-style plan
  (attention and MLP ``ColwiseParallel`` / ``RowwiseParallel``, norms ``SequenceParallel``),
  alone on 2 ranks and under FSDP2 on a 2 x 2 mesh. Each step's loss and every parameter's
  gathered gradient equal those of one process training torch's own norms on the whole batch.
  Our modules go in either before ``parallelize_module`` or through ``replace_norms`` after
  (which re-classes the planned modules in place, keeping the plan's hooks).

The kernels run in Triton's interpreter when there is no CUDA (the ranks inherit
``TRITON_INTERPRET``). The ranks check what they can themselves (placements) and leave losses
and gradients in files for the test to compare.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

import layernorm_gpu as lg
from distributed_helpers import run_ranks
from helpers import assert_close
from layernorm_gpu import dispatch

TP = 2
STEPS = 3
BATCH, SEQ, DIM, HEADS, HIDDEN, VOCAB = 4, 8, 16, 4, 32, 32

# The kernels take CPU tensors only in Triton's interpreter (used when there is no CUDA).
CPU_CASES = [pytest.param("reference", torch.float64, id="reference-fp64")]
if not torch.cuda.is_available():
    CPU_CASES.append(pytest.param("triton", torch.float32, id="triton-fp32"))


def test_import_does_not_load_dtensor() -> None:
    """``torch.distributed.tensor`` costs seconds to import: the rules register lazily."""
    code = "import sys, layernorm_gpu; print('torch.distributed.tensor' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# The rules, op by op

RULE_SHAPE, RULE_N = (4, 6, 8), 8
RULE_ROWS = RULE_SHAPE[0] * RULE_SHAPE[1]
# x placed on a leading dim, on the normalised dim, replicated
RULE_PLACEMENTS = {
    "Shard(0)": Shard(0),
    "Shard(1)": Shard(1),
    "Shard(2)": Shard(2),
    "R": Replicate(),
}
INPUT_NAMES = ("x", "residual", "weight", "bias")


def _rule_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fresh inputs; weight and bias such that memory_efficient=True recomputes x_hat from y
    (scales well away from 0, small shifts)."""
    gen = torch.Generator().manual_seed(7)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    inputs = {name: 0.5 + randn(*RULE_SHAPE) for name in ("x", "residual", "dy", "dh")}
    inputs |= {"weight": 1 + 0.25 * randn(RULE_N), "bias": 0.25 * randn(RULE_N)}
    return {name: t.to(dtype) for name, t in inputs.items()}


def _rule_calls(backend: str) -> dict:
    """Every functional entry point as ``fn(x, residual, weight, bias) -> outputs``."""
    n = RULE_N
    calls = {
        "layer_norm": lambda x, r, w, b: (lg.layer_norm(x, n, w, b, backend=backend),),
        "rms_norm": lambda x, r, w, b: (lg.rms_norm(x, n, w, eps=1e-6, backend=backend),),
        "fused_add_layer_norm": lambda x, r, w, b: lg.fused_add_layer_norm(
            x, r, n, w, b, backend=backend
        ),
        "fused_add_rms_norm": lambda x, r, w, b: lg.fused_add_rms_norm(x, r, n, w, backend=backend),
    }
    if backend == "reference":  # the kernels' memory-efficient backward is not there yet
        calls |= {
            "layer_norm(memory_efficient)": lambda x, r, w, b: (
                lg.layer_norm(x, n, w, b, memory_efficient=True, backend=backend),
            ),
            "rms_norm(memory_efficient)": lambda x, r, w, b: (
                lg.rms_norm(x, n, w, eps=1e-6, memory_efficient=True, backend=backend),
            ),
        }
    return calls


def _run_rule_call(fn, inputs: dict[str, torch.Tensor]) -> dict[str, list]:
    """Outputs of ``fn`` and the gradients of its inputs (None where unused), for the
    cotangents dy (and dh) on y (and h); DTensors gathered, their placements as text."""
    leaves = [inputs[name].requires_grad_() for name in INPUT_NAMES]
    outputs = fn(*leaves)

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    cotangents = (inputs["dy"], inputs["dh"])[: len(outputs)]
    sum(full(o).mul(c).sum() for o, c in zip(outputs, cotangents, strict=True)).backward()
    grads = [t.grad for t in leaves]
    return {
        "outputs": [full(o).detach() for o in outputs],
        "grads": [None if g is None else full(g) for g in grads],
        "output_placements": [repr(getattr(o, "placements", None)) for o in outputs],
        "grad_placements": [repr(getattr(g, "placements", None)) for g in grads],
    }


def _rule_results(mesh: DeviceMesh, backend: str, dtype: torch.dtype) -> dict:
    """Each entry point on DTensors with x (and residual) placed each way, weight and bias
    replicated: ``{"entry point/placement": _run_rule_call's result}``."""
    inputs = _rule_inputs(dtype)
    results = {}
    for name, fn in _rule_calls(backend).items():
        for placement_name, placement in RULE_PLACEMENTS.items():
            placed = {
                arg: distribute_tensor(
                    inputs[arg], mesh, [placement if arg in ("x", "residual") else Replicate()]
                )
                for arg in INPUT_NAMES
            }
            # the cotangents are plain tensors, applied to the gathered outputs
            placed |= {"dy": inputs["dy"], "dh": inputs["dh"]}
            results[f"{name}/{placement_name}"] = _run_rule_call(fn, placed)
    return results


def _compile_worker(rank: int) -> None:
    """The rules register even when the first call on a DTensor is traced by torch.compile."""
    mesh = init_device_mesh("cpu", (TP,))
    inputs = _rule_inputs(torch.float64)
    x, weight = inputs["x"].requires_grad_(), inputs["weight"].requires_grad_()
    x_rows = distribute_tensor(x.detach(), mesh, [Shard(1)]).requires_grad_()
    weight_replicated = distribute_tensor(weight.detach(), mesh, [Replicate()]).requires_grad_()

    def norm(x, weight):
        return lg.rms_norm(x, RULE_N, weight, eps=1e-6, backend="reference") * 2

    y = torch.compile(norm, fullgraph=True)(x_rows, weight_replicated)
    (y.full_tensor() * inputs["dy"]).sum().backward()
    (norm(x, weight) * inputs["dy"]).sum().backward()
    assert y.placements == (Shard(1),) and weight_replicated.grad.placements == (Partial(),)
    assert_close(y.full_tensor(), norm(x, weight).detach())
    assert_close(x_rows.grad.full_tensor(), x.grad)
    assert_close(weight_replicated.grad.full_tensor(), weight.grad, reduction=RULE_ROWS)


@pytest.mark.slow
def test_rules_register_under_torch_compile(tmp_path: Path) -> None:
    run_ranks(_compile_worker, TP, tmp_path)


# ---------------------------------------------------------------------------------------------
# Training a Llama-like model under a torchtitan-style plan


class Attention(nn.Module):
    """Causal self-attention; ``-1`` heads in the view so that a rank holding a column shard of
    wq/wk/wv computes its own heads."""

    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = (
            w(x).view(batch, seq, -1, DIM // HEADS).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(DIM, HIDDEN, bias=False)
        self.w2 = nn.Linear(HIDDEN, DIM, bias=False)
        self.w3 = nn.Linear(DIM, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


NormFactory = Callable[..., nn.Module]


class Block(nn.Module):
    def __init__(self, rms_norm: NormFactory, layer_norm: NormFactory) -> None:
        super().__init__()
        self.attention_norm = rms_norm(DIM, eps=1e-6)
        self.attention = Attention()
        self.ffn_norm = layer_norm(DIM)
        self.feed_forward = FeedForward()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Embedding, one pre-norm block (RMSNorm before attention, LayerNorm before the MLP), a
    final RMSNorm and the output projection: torchtitan's Llama layout, small."""

    def __init__(self, rms_norm: NormFactory, layer_norm: NormFactory) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([Block(rms_norm, layer_norm)])
        self.norm = rms_norm(DIM, eps=1e-6)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


NORMS = ("layers.0.attention_norm", "layers.0.ffn_norm", "norm")


def _model(norms: str, backend: str, dtype: torch.dtype) -> Transformer:
    """The same initial model in every process, with torch's norms (``norms="torch"``) or ours;
    norm parameters random (not ones and zeros)."""
    if norms == "torch":
        rms_norm, layer_norm = nn.RMSNorm, nn.LayerNorm
    else:

        def rms_norm(*args, **kwargs):
            return lg.RMSNorm(*args, **kwargs, backend=backend)

        def layer_norm(*args, **kwargs):
            return lg.LayerNorm(*args, **kwargs, backend=backend)

    torch.manual_seed(1234)
    model = Transformer(rms_norm, layer_norm).to(dtype)
    with torch.no_grad():
        for name in NORMS:
            for param in model.get_submodule(name).parameters():
                param.add_(0.5 * torch.randn_like(param))
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    tokens = torch.randint(VOCAB, (STEPS, BATCH, SEQ), generator=gen)
    targets = torch.randint(VOCAB, (STEPS, BATCH, SEQ), generator=gen)
    return tokens, targets


def _parallelize(model: Transformer, tp_mesh: DeviceMesh) -> Transformer:
    """torchtitan's tensor + sequence parallel plan for Llama (without loss parallelism)."""
    parallelize_module(
        model,
        tp_mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
        },
    )
    for block in model.layers:
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention_norm": SequenceParallel(),
                "attention": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
                "feed_forward.w3": ColwiseParallel(),
            },
        )
    return model


def _train(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, loss_group=None):
    """``STEPS`` steps of SGD with momentum on the cross entropy; returns each step's loss and
    every parameter's full gradient (gathered from its shards). ``loss_group``: average the
    loss over the ranks of this group (data parallelism on equal shares of the batch)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, grads = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        logits = model(tokens[step])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets[step].flatten())
        loss.backward()
        loss = loss.detach().clone()
        if loss_group is not None:
            # gloo has no ReduceOp.AVG
            dist.all_reduce(loss, group=loss_group)
            loss /= dist.get_world_size(loss_group)
        losses.append(loss)
        grads.append(
            {
                name: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach()
                for name, p in model.named_parameters()
            }
        )
        opt.step()
    return torch.stack(losses), grads


def _train_parallel(
    how: str, backend: str, dtype: torch.dtype, tp_mesh: DeviceMesh, dp_mesh: DeviceMesh | None
) -> dict:
    """Train our norms under the plan, put in before it (``how="ours_then_plan"``) or swapped in
    by ``replace_norms`` after it (``"plan_then_replace_norms"``); FSDP2 over ``dp_mesh`` if
    given. Returns losses, gradients, op call counts and the placements of the norms' outputs."""
    tokens, targets = _data()
    if dp_mesh is not None:
        share = BATCH // dp_mesh.size()
        rows = slice(dp_mesh.get_local_rank() * share, (dp_mesh.get_local_rank() + 1) * share)
        tokens, targets = tokens[:, rows], targets[:, rows]
    if how == "ours_then_plan":
        model = _parallelize(_model("ours", backend, dtype), tp_mesh)
    else:
        model = _parallelize(_model("torch", backend, dtype), tp_mesh)
        before = dict(model.named_parameters())
        lg.replace_norms(model, backend=backend)
        after = dict(model.named_parameters())
        assert after.keys() == before.keys()
        assert all(after[name] is before[name] for name in before), "parameters not kept"
    for name in NORMS:
        norm = model.get_submodule(name)
        assert isinstance(norm, lg.LayerNorm | lg.RMSNorm), f"{how}: {name} is {norm}"
        assert all(isinstance(p, DTensor) for p in norm.parameters()), f"{how}: {name}"
    placements: list[str] = []
    for name in NORMS:
        model.get_submodule(name).register_forward_hook(
            lambda _module, _inputs, y, seen=placements: seen.append(repr(y.placements))
        )
    if dp_mesh is not None:
        for block in model.layers:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
    dispatch.calls.clear()
    losses, grads = _train(model, tokens, targets, None if dp_mesh is None else dp_mesh.get_group())
    return {
        "losses": losses,
        "grads": grads,
        "calls": dispatch.calls[backend],
        "norm_output_placements": placements,
    }


def _parallel_worker(rank: int, mode: str, cases: list, out: str) -> None:
    """One rank of ``mode``: "tp" (2 ranks: the rules, then TP/SP training) or "fsdp_tp" (a
    2 x 2 mesh: FSDP2 over TP training), for each ``(backend, dtype)`` of ``cases``. Rank 0
    saves the results."""
    if mode == "tp":
        tp_mesh, dp_mesh = init_device_mesh("cpu", (TP,)), None
    else:
        mesh = init_device_mesh("cpu", (2, TP), mesh_dim_names=("dp", "tp"))
        tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    results = {}
    for backend, dtype in cases:
        result = results[backend] = {}
        if mode == "tp":
            result["rules"] = _rule_results(tp_mesh, backend, dtype)
        result["ours_then_plan"] = _train_parallel(
            "ours_then_plan", backend, dtype, tp_mesh, dp_mesh
        )
        result["plan_then_replace_norms"] = _train_parallel(
            "plan_then_replace_norms", backend, dtype, tp_mesh, dp_mesh
        )
    if rank == 0:
        torch.save(results, Path(out) / "results.pt")


CASES = [tuple(case.values) for case in CPU_CASES]


def _run(tmp_path_factory, mode: str, world: int) -> dict:
    out = tmp_path_factory.mktemp(mode)
    run_ranks(_parallel_worker, world, out, (mode, CASES, str(out)))
    return torch.load(out / "results.pt", weights_only=True)


@pytest.fixture(scope="module")
def tp_results(tmp_path_factory) -> dict:
    """The 2 ranks' results for every backend: one launch for the module (ranks start slowly)."""
    return _run(tmp_path_factory, "tp", TP)


@pytest.fixture(scope="module")
def fsdp_tp_results(tmp_path_factory) -> dict:
    return _run(tmp_path_factory, "fsdp_tp", 2 * TP)


@pytest.mark.parametrize(("backend", "dtype"), CPU_CASES)
def test_rules_keep_rows_sharded(tp_results: dict, backend: str, dtype: torch.dtype) -> None:
    """Rows sharded in, rows sharded out (y, h, dx, dresidual), dW / dB ``Partial``; any
    placement gives the single-process values."""
    results = tp_results[backend]["rules"]
    for name, fn in _rule_calls(backend).items():
        expected = _run_rule_call(fn, _rule_inputs(dtype))
        for placement_name, placement in RULE_PLACEMENTS.items():
            where = f"{name}, x placed {placement_name}"
            result = results[f"{name}/{placement_name}"]
            if isinstance(placement, Shard) and placement.dim < len(RULE_SHAPE) - 1:
                rows = repr((placement,))
                assert result["output_placements"] == [rows] * len(expected["outputs"]), where
                # parameter gradients: each rank's sum over its rows, reduced when read
                grad_rows = [rows, rows, repr((Partial(),)), repr((Partial(),))]
                for grad_name, want, got, grad in zip(
                    INPUT_NAMES,
                    grad_rows,
                    result["grad_placements"],
                    expected["grads"],
                    strict=True,
                ):
                    if grad is not None:
                        assert got == want, f"{where}: d{grad_name} placed {got}"
            for output, want in zip(result["outputs"], expected["outputs"], strict=True):
                assert_close(output, want.double(), msg=where)
            for grad_name, grad, want in zip(
                INPUT_NAMES, result["grads"], expected["grads"], strict=True
            ):
                if want is None:
                    assert grad is None, f"{where}: d{grad_name} should be None"
                else:
                    msg = f"{where}: d{grad_name}"
                    assert_close(grad, want.double(), reduction=RULE_ROWS, msg=msg)


def _check_against_single_process(result: dict, backend: str, dtype: torch.dtype) -> None:
    """Losses and every parameter's gradient at every step against one process training
    torch's norms on the whole batch; ours in one process too."""
    # sequence parallel: every norm ran on its rank's rows only
    assert result["norm_output_placements"] == [repr((Shard(1),))] * (len(NORMS) * STEPS)
    # forward and backward of the three norms at every step ran on the requested backend
    assert result["calls"] == 2 * len(NORMS) * STEPS
    tokens, targets = _data()
    torch_losses, torch_grads = _train(_model("torch", backend, dtype), tokens, targets)
    dispatch.calls.clear()
    ours_losses, ours_grads = _train(_model("ours", backend, dtype), tokens, targets)
    assert dispatch.calls[backend] == 2 * len(NORMS) * STEPS
    runs = {
        "single process": (ours_losses, ours_grads),
        "parallel": (result["losses"], result["grads"]),
    }
    for how, (losses, grads) in runs.items():
        assert_close(losses, torch_losses.double(), msg=f"{how}: losses")
        for step in range(STEPS):
            assert grads[step].keys() == torch_grads[step].keys()
            for name, expected in torch_grads[step].items():
                assert_close(
                    grads[step][name],
                    expected.double(),
                    reduction=BATCH * SEQ,
                    msg=f"{how}: step {step}: {name}",
                )


@pytest.mark.parametrize(("backend", "dtype"), CPU_CASES)
# replace_norms re-classes the planned modules in place, so the plan's hooks stay on them
@pytest.mark.parametrize("how", ["ours_then_plan", "plan_then_replace_norms"])
def test_tensor_sequence_parallel_matches_single_process(
    tp_results: dict, how: str, backend: str, dtype: torch.dtype
) -> None:
    _check_against_single_process(tp_results[backend][how], backend, dtype)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "dtype"), CPU_CASES)
# replace_norms re-classes the planned modules in place, so the plan's hooks stay on them
@pytest.mark.parametrize("how", ["ours_then_plan", "plan_then_replace_norms"])
def test_fsdp2_over_tensor_parallel_matches_single_process(
    fsdp_tp_results: dict, how: str, backend: str, dtype: torch.dtype
) -> None:
    _check_against_single_process(fsdp_tp_results[backend][how], backend, dtype)
