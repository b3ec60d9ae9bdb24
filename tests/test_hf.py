"""Hugging Face transformers norms: the recognition table, each convention against the module
it replaces, whole models after ``replace_norms`` (outputs, loss, every gradient, ten AdamW
steps), and the ``kernels`` hub layers. (A patched Llama under ``torch.compile(fullgraph=True)``:
``test_compile.py``.)

The oracle is the unpatched transformers code run in float64: its ``.float()`` /
``.to(torch.float32)`` upcasts are turned into float64 by :class:`_Float64`, so every
intermediate is float64. The error rule is the project's (``test_properties.py``): our max
error against the oracle is at most twice the transformers module's own max error in the same
dtype, plus the helpers tolerance of the compared dtype (atol growing with sqrt of the rows
summed for weight gradients). float32 is therefore held to 1e-6 relative; bfloat16 to one
rounding. Models are the tiny ones of ``bench/model.py`` (hidden 64, 2 layers, sequence 16).
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import io
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from bench.model import ARCHS, tiny_model
from helpers import make_input, tolerance
from layernorm_gpu import dispatch, hf, hub, replace_norms
from layernorm_gpu.modules import _ConventionNorm

BACKENDS = ("reference", "triton")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_PREFIX = "transformers.models."


class _Float64(TorchFunctionMode):
    """Runs transformers code in float64: casts to any floating dtype (``.to``, ``.type``,
    ``.float()``, ``.type_as``, ``dtype=`` arguments) become casts to float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.float, torch.Tensor.type_as):
            return args[0].double()

        def f64(v):
            return torch.float64 if isinstance(v, torch.dtype) and v.is_floating_point else v

        args = tuple(f64(a) for a in args)
        kwargs = {k: f64(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _check_2x(name: str, ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor, rows=1):
    """Our error against ``exact`` is at most twice transformers' own plus the tolerance of
    ``ours``' dtype."""
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape, name
    atol, rtol = tolerance(ours.dtype, rows)
    bound = 2 * _max_err(theirs, exact) + atol + rtol * exact.abs().max().item()
    err = _max_err(ours, exact)
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g}"


# --- the table -------------------------------------------------------------------------------

# One class per form of each convention: each is checked numerically below, and every class
# of the table must have the source text of a representative of its own convention.
REPRESENTATIVES = (
    "llama.modeling_llama.LlamaRMSNorm",
    "llama4.modeling_llama4.Llama4TextRMSNorm",
    "olmo2.modeling_olmo2.Olmo2RMSNorm",
    "helium.modeling_helium.HeliumRMSNorm",
    "gemma3n.modeling_gemma3n.Gemma3nRMSNorm",
    "moshi.modeling_moshi.MoshiRMSNorm",
    "gemma3.modeling_gemma3.Gemma3RMSNorm",
    "llama4.modeling_llama4.Llama4TextL2Norm",
    "inkling2.modeling_inkling2.Inkling2UnweightedRMSNorm",
    "falcon_mamba.modeling_falcon_mamba.FalconMambaWeightlessRMSNorm",
    "t5.modeling_t5.T5LayerNorm",
    "cohere.modeling_cohere.CohereLayerNorm",
    "olmo.modeling_olmo.OlmoLayerNorm",
)


def _class_source(path: str) -> str:
    """The bodies of ``__init__``, ``forward`` and ``_norm`` of the class at ``path``, read
    from its file (nothing imported), normalised (docstrings dropped, class name replaced)."""
    module_name, _, cls_name = path.rpartition(".")
    text = Path(importlib.util.find_spec(module_name).origin).read_text()
    # the class block alone: from its `class` line to the next unindented line
    start = text.index(f"\nclass {cls_name}(") + 1
    end = re.compile(r"^\S", re.M).search(text, text.index("\n", start) + 1)
    node = ast.parse(text[start : end.start() if end else len(text)]).body[0]
    parts = []
    for fn in node.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("__init__", "forward", "_norm"):
            body = fn.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            parts.append(fn.name + ":\n" + "\n".join(ast.unparse(s) for s in body))
    bases = ", ".join(ast.unparse(b) for b in node.bases)
    return f"({bases})\n" + "\n".join(sorted(parts)).replace(cls_name, "CLS")


def test_every_table_class_has_the_source_of_its_conventions_representative() -> None:
    """transformers 5.24's classes, read from their files: a class whose forward changes
    upstream (or is misplaced in the table) fails here instead of computing another rounding."""
    forms: dict[hf.Convention, set[str]] = {}
    for rep in REPRESENTATIVES:
        forms.setdefault(hf.TABLE[_PREFIX + rep], set()).add(_class_source(_PREFIX + rep))
    transformers_entries = {k: c for k, c in hf.TABLE.items() if k.startswith(_PREFIX)}
    assert len(transformers_entries) >= 200
    assert set(transformers_entries.values()) == set(forms)
    for path, convention in transformers_entries.items():
        assert _class_source(path) in forms[convention], path


def test_table_is_keyed_by_class_path_without_importing_transformers() -> None:
    """Keys are the module path and name of the class (strings); importing layernorm_gpu
    imports no transformers module."""
    code = (
        "import sys, layernorm_gpu, layernorm_gpu.hf, layernorm_gpu.hub; "
        "assert not [m for m in sys.modules if m.startswith('transformers')]"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert hf.class_path(LlamaRMSNorm) == _PREFIX + "llama.modeling_llama.LlamaRMSNorm"
    assert hf.convention_of(LlamaRMSNorm) is hf.LLAMA
    assert hf.convention_of(nn.LayerNorm) is hf.TORCH_LAYER_NORM


# --- each convention against the module it replaces -----------------------------------------


def _build(path: str, hidden: int | tuple[int, ...] = 64, **kwargs) -> nn.Module:
    """An instance of the transformers class at ``path``, hidden size ``hidden``, random
    parameters (Gemma's zero-centred weight near zero)."""
    module_name, _, cls_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    params = inspect.signature(cls).parameters
    size = {next(iter(params)): hidden} if next(iter(params)) != "eps" else {}
    module = cls(**size, **kwargs)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(make_input(param.shape, torch.float32, "cpu", scale=0.5))
    return module


MODULE_CASES = [pytest.param(rep, {}, id=rep.rpartition(".")[2]) for rep in REPRESENTATIVES] + [
    pytest.param(
        "gemma3n.modeling_gemma3n.Gemma3nRMSNorm",
        {"with_scale": False},
        id="Gemma3nRMSNorm-no-scale",
    )
]
# (activation dtype, parameter dtype)
MODULE_DTYPES = [
    pytest.param(torch.float32, torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, torch.bfloat16, id="bf16"),
    pytest.param(torch.bfloat16, torch.float32, id="bf16-fp32params"),
    pytest.param(torch.float16, torch.float16, id="fp16"),
]


def _module_run(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    """y and the gradients of x and of every parameter."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy.to(y.dtype))
    return y.detach(), {"x": x.grad, **{n: p.grad for n, p in module.named_parameters()}}


def _check_module(theirs: nn.Module, x: torch.Tensor, backend: str) -> None:
    """``theirs`` replaced runs our ops (two: forward and backward) and gives y, dx and every
    parameter gradient within twice the module's own error of the module run in float64."""
    ours = replace_norms(copy.deepcopy(theirs), backend=backend)
    assert isinstance(ours, type(theirs)) and type(ours) is not type(theirs)
    exact = copy.deepcopy(theirs).double()
    dy = make_input(x.shape, torch.float32)
    calls = dispatch.calls[backend]
    y, grads = _module_run(ours, x, dy)
    assert dispatch.calls[backend] == calls + 2
    y_hf, grads_hf = _module_run(theirs, x, dy)
    with _Float64():
        y_exact, grads_exact = _module_run(exact, x.double(), dy.double())
    _check_2x("y", y, y_hf, y_exact)
    assert grads.keys() == grads_hf.keys()
    for name, grad in grads.items():
        rows = 1 if name == "x" else x.numel() // grad.numel()  # the rows a gradient sums
        _check_2x(name, grad, grads_hf[name], grads_exact[name], rows=rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "param_dtype"), MODULE_DTYPES)
@pytest.mark.parametrize(("path", "kwargs"), MODULE_CASES)
def test_convention_reproduces_the_transformers_module(
    path: str, kwargs: dict, x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    """Same output dtype as the module; y, dx and every parameter gradient within twice the
    module's own error of the module run in float64."""
    theirs = _build(_PREFIX + path, **kwargs).to(param_dtype)
    _check_module(theirs, make_input((4, 16, 64), x_dtype), backend)


# Cohere's query/key norms are a CohereLayerNorm((heads, head_dim)): a weight per head,
# broadcast against (..., heads, head_dim), the norm over head_dim alone. The other
# conventions, built the same way, broadcast their weights just as well.
PER_HEAD = ["cohere.modeling_cohere.CohereLayerNorm"] + [
    rep
    for rep in REPRESENTATIVES
    if rep.rpartition(".")[2] in ("LlamaRMSNorm", "T5LayerNorm", "Gemma3RMSNorm")
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "param_dtype"), MODULE_DTYPES[:3])
@pytest.mark.parametrize("path", PER_HEAD, ids=lambda p: p.rpartition(".")[2])
def test_per_head_weights_broadcast_as_in_transformers(
    path: str, x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    theirs = _build(_PREFIX + path, hidden=(4, 16)).to(param_dtype)
    assert theirs.weight.shape == (4, 16)
    _check_module(theirs, make_input((3, 5, 4, 16), x_dtype), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("x_dtype", "param_dtype"),
    [
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float16),
        (torch.float16, torch.float64),
    ],
    ids=["fp32-bf16params", "bf16-fp16params", "fp16-fp64params"],
)
def test_float32_parameter_conventions_take_any_parameter_dtype(
    x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    """CohereLayerNorm scales by ``weight.float()``: any weight dtype runs, as in transformers
    (torch's LayerNorm dtype rule would reject these)."""
    theirs = _build(_PREFIX + "cohere.modeling_cohere.CohereLayerNorm").to(param_dtype)
    _check_module(theirs, make_input((4, 16, 64), x_dtype), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cohere_with_query_key_norms_matches_unpatched(backend: str) -> None:
    """A Cohere model with ``use_qk_norm``: its per-head norms are replaced and the model's
    logits, loss and gradients hold the rule of :func:`test_patched_model_matches_unpatched`."""
    import transformers

    config = transformers.CohereConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, use_qk_norm=True, pad_token_id=0,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    theirs = transformers.CohereForCausalLM(config)
    _randomize_norms(theirs)
    ours = copy.deepcopy(theirs)
    report = replace_norms(ours, backend=backend, report=True)
    per_head = [r for r in report.replaced if r.name.endswith(("q_norm", "k_norm"))]
    assert len(per_head) == 2 and not report.left_alone
    exact = copy.deepcopy(theirs).double()
    ids = torch.randint(0, 128, (2, 8))
    logits, loss, grads = _model_run(ours, ids)
    logits_hf, loss_hf, grads_hf = _model_run(theirs, ids)
    with _Float64():
        logits_exact, loss_exact, grads_exact = _model_run(exact, ids)
    _check_2x("logits", logits, logits_hf, logits_exact)
    _check_2x("loss", loss, loss_hf, loss_exact)
    assert grads.keys() == grads_hf.keys()
    for name, grad in grads.items():
        _check_2x(name, grad, grads_hf[name], grads_exact[name], rows=ids.numel())


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_float32_parameter_conventions_take_float64_x(param_dtype: torch.dtype) -> None:
    """``weight.float()`` on float64 x is the float64 arithmetic (the reference backend's)."""
    theirs = _build(_PREFIX + "cohere.modeling_cohere.CohereLayerNorm").to(param_dtype)
    _check_module(theirs, make_input((4, 16, 64), torch.float64), "reference")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
def test_norm_forward_of_torch_norms_normalises_their_normalized_shape(cls, backend) -> None:
    """torch's norms in the table normalise every dim of their ``normalized_shape``, not the
    last alone (their weight is not a per-head one)."""
    module = cls((4, 16))
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(make_input(param.shape, torch.float32, "cpu", scale=0.5))
    x = make_input((3, 4, 16), torch.float32)
    y = hf.norm_forward(module, x, hf.convention_of(cls), backend)
    torch.testing.assert_close(y, module(x))


def test_replaced_norm_takes_its_argument_by_its_own_name() -> None:
    """transformers' norms name their input (``hidden_states``, ``x``): a keyword call still
    works once replaced; anything but one tensor is a TypeError, as in transformers."""
    norm = replace_norms(_build(_PREFIX + "llama.modeling_llama.LlamaRMSNorm"))
    x = make_input((3, 64), torch.float32)
    assert torch.equal(norm(hidden_states=x), norm(x))
    for args, kwargs in (((), {}), ((x, x), {}), ((x,), {"hidden_states": x})):
        with pytest.raises(TypeError, match="one tensor"):
            norm(*args, **kwargs)


def test_bitwise_equal_to_transformers_in_bfloat16() -> None:
    """The share of bfloat16 outputs equal bit for bit to transformers' eager module, per
    convention, on both backends (printed with ``-s``; README.md states the figures). The
    kernels' and the reference's float32 row sums differ from torch's in order only, so the
    large majority of outputs round to the same bfloat16 value."""
    x = make_input((1024, 64), torch.bfloat16)
    lines = []
    for rep in REPRESENTATIVES:
        theirs = _build(_PREFIX + rep).to(torch.bfloat16)
        y_hf = theirs(x)
        shares = []
        for backend in BACKENDS:
            ours = replace_norms(copy.deepcopy(theirs), backend=backend)
            y = ours(x)
            assert y.dtype == y_hf.dtype
            shares.append((y.view(torch.int16) == y_hf.view(torch.int16)).double().mean().item())
        convention = hf.TABLE[_PREFIX + rep]
        lines.append(
            f"{rep.rpartition('.')[2]:<36} {convention.name:<7} {convention.casting:<6} "
            f"reference {shares[0]:8.3%}  triton {shares[1]:8.3%}"
        )
        assert min(shares) >= 0.99, lines[-1]
    print("\nbf16 outputs bitwise equal to transformers eager (1024 x 64):")
    print("\n".join(lines))


# --- whole models ---------------------------------------------------------------------------


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    """The recognised norms of ``model``, re-classed by replace_norms or not."""
    return [
        m
        for m in model.modules()
        if hf.convention_of(type(m)) is not None or isinstance(m, _ConventionNorm)
    ]


def _randomize_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for module in _norm_modules(model):
            for param in module.parameters():
                param.copy_(make_input(param.shape, param.dtype, "cpu", scale=0.5))


def _model_run(model: nn.Module, ids: torch.Tensor):
    """Logits, loss and every parameter's gradient of ``model(ids, labels=ids)``."""
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def _model_case(arch: str, dtype: torch.dtype):
    base = tiny_model(arch)
    _randomize_norms(base)
    return base.to(dtype)


MODEL_CASES = [
    pytest.param(
        arch,
        dtype,
        backend,
        # the interpreter on every model in both dtypes: CI (slow); Llama's also by default
        marks=[pytest.mark.slow] if backend == "triton" and arch != "llama" else [],
    )
    for arch in ARCHS
    for dtype in DTYPES
    for backend in BACKENDS
]


@pytest.mark.parametrize(("arch", "dtype", "backend"), MODEL_CASES)
def test_patched_model_matches_unpatched(arch: str, dtype: str, backend: str) -> None:
    """Logits, loss and every parameter's gradient of the patched model: within twice the
    unpatched model's own error of the unpatched model run in float64."""
    theirs = _model_case(arch, DTYPES[dtype])
    ours = copy.deepcopy(theirs)
    report = replace_norms(ours, backend=backend, report=True)
    assert len(report.replaced) == len(_norm_modules(theirs)) > 0 and not report.left_alone
    exact = copy.deepcopy(theirs).double()
    ids = torch.randint(0, 128, (2, 16))
    other = "reference" if backend == "triton" else "triton"
    calls = dict(dispatch.calls)
    logits, loss, grads = _model_run(ours, ids)
    assert dispatch.calls[backend] > calls.get(backend, 0)
    assert dispatch.calls[other] == calls.get(other, 0)
    logits_hf, loss_hf, grads_hf = _model_run(theirs, ids)
    with _Float64():
        logits_exact, loss_exact, grads_exact = _model_run(exact, ids)
    _check_2x("logits", logits, logits_hf, logits_exact)
    _check_2x("loss", loss, loss_hf, loss_exact)
    assert grads.keys() == grads_hf.keys() == grads_exact.keys()
    for name, grad in grads.items():
        _check_2x(name, grad, grads_hf[name], grads_exact[name], rows=ids.numel())


def _adamw_curve(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The losses of ten AdamW steps of ``model`` on the one batch ``ids``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    curve = []
    for _ in range(10):
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.detach())
    return torch.stack(curve)


@pytest.fixture(scope="module")
def adamw_setup():
    """The tiny Llama, its batch, and the loss curves of the unpatched model in float32 and
    (once for both backends: the float64 run is the slow one) in float64."""
    torch.manual_seed(0)
    model = _model_case("llama", torch.float32)
    ids = torch.randint(0, 128, (2, 16))
    theirs = _adamw_curve(copy.deepcopy(model), ids)
    with _Float64():
        exact = _adamw_curve(copy.deepcopy(model).double(), ids)
    return model, ids, theirs, exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_loss_curves_agree(backend: str, adamw_setup) -> None:
    """Ten AdamW steps of a tiny Llama on one batch (the loss falls as it learns it): the
    patched model's loss curve stays within twice the unpatched float32 model's distance from
    the float64 curve (plus float32 tolerance)."""
    model, ids, theirs, exact = adamw_setup
    ours = _adamw_curve(replace_norms(copy.deepcopy(model), backend=backend), ids)
    assert exact[-1] < exact[0] - 0.1, "the model did not train"
    _check_2x("loss curve", ours, theirs, exact)


def test_report_on_a_llama_and_qwen3_per_head_norms() -> None:
    """Every norm of a Llama is replaced (input, post-attention, final), Qwen3's per-head
    q_norm / k_norm too; the modules stay instances of their transformers class, with the
    same parameters and state_dict keys."""
    llama = tiny_model("llama")
    params, keys = dict(llama.named_parameters()), list(llama.state_dict())
    report = replace_norms(llama, report=True)
    path = _PREFIX + "llama.modeling_llama.LlamaRMSNorm"
    assert report.counts() == {path: 5} and not report.left_alone
    assert "5 norm modules now run layernorm_gpu" in str(report)
    assert f"replaced   5 x {path}  [llama: weight * x_hat.to(x.dtype); casting='llama']" in str(
        report
    )
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = llama.model.layers[0].input_layernorm
    assert isinstance(norm, LlamaRMSNorm) and "layernorm_gpu='llama'" in repr(norm)
    assert dict(llama.named_parameters()) == params and list(llama.state_dict()) == keys
    qwen = replace_norms(tiny_model("qwen3"), report=True)
    names = {r.name for r in qwen.replaced}
    assert {"model.layers.1.self_attn.q_norm", "model.layers.1.self_attn.k_norm"} <= names
    assert len(names) == 2 * 4 + 1


def test_unrecognised_transformers_norm_is_left_alone_and_reported() -> None:
    """DeBERTa's LayerNorm rounds x_hat to x's dtype and divides by the square root: not a
    convention of the table, so it stays as it is and the report says why."""
    from transformers.models.deberta.modeling_deberta import DebertaLayerNorm

    model = nn.Sequential(DebertaLayerNorm(64), _build(_PREFIX + REPRESENTATIVES[0]))
    with pytest.warns(UserWarning, match="LEFT ALONE"):
        report = replace_norms(model, report=True)
    assert type(model[0]) is DebertaLayerNorm and len(report.replaced) == 1
    assert report.left_alone[0].reason.startswith("class not in layernorm_gpu.hf.TABLE")


def test_gated_norms_are_reported_left_alone() -> None:
    """Mamba2's gated RMSNorm (``norm(x * silu(gate))``, two inputs) is none of the table's
    conventions: named ``...NormGated``, it is still reported, and warned about."""
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    model = nn.Sequential(MambaRMSNormGated(64, 64), _build(_PREFIX + REPRESENTATIVES[0]))
    with pytest.warns(UserWarning, match="LEFT ALONE"):
        report = replace_norms(model, report=True)
    assert type(model[0]) is MambaRMSNormGated and len(report.replaced) == 1
    assert [entry.name for entry in report.left_alone] == ["0"]


def test_patched_transformers_model_saves_and_loads_whole() -> None:
    model = replace_norms(tiny_model("gemma3"), backend="reference")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    twin = torch.load(buffer, weights_only=False)
    ids = torch.randint(0, 128, (2, 16))
    norm = twin.model.layers[0].input_layernorm
    assert type(norm) is type(model.model.layers[0].input_layernorm) and norm.backend == "reference"
    torch.testing.assert_close(twin(ids).logits, model(ids).logits, rtol=0, atol=0)


# --- the kernels hub layers -----------------------------------------------------------------


@pytest.fixture
def hub_kernels(monkeypatch: pytest.MonkeyPatch):
    """PyPI's ``kernels`` package, with transformers' Llama norm marked as its ``"RMSNorm"``
    layer the way kernels >= 0.18.2 makes transformers do it (transformers 5.24 leaves it
    unmarked beside 0.17). The repository's own ``./kernels`` folder is on pytest's
    ``pythonpath`` and shadows the name, so the import looks past it."""
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if str(Path(p or ".").resolve()) != root])
    shadowed = sys.modules.pop("kernels", None)
    try:
        kernels = importlib.import_module("kernels")
        assert Path(kernels.__file__).parent.parent != Path(root)
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        for attr in ("kernel_layer_name", "kernel_condition"):
            monkeypatch.setattr(LlamaRMSNorm, attr, None, raising=False)
        kernels.replace_kernel_forward_from_hub(LlamaRMSNorm, "RMSNorm")
        yield kernels
    finally:
        sys.modules.pop("kernels", None)
        if shadowed is not None:
            sys.modules["kernels"] = shadowed


def _kernelized_llama_check(kernels, mapping, replaced_first: bool = False) -> None:
    theirs = _model_case("llama", torch.float32)
    model = copy.deepcopy(theirs)
    if replaced_first:
        replace_norms(model, backend="reference")
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.TRAINING, device="cpu", use_fallback=False)
    norms = _norm_modules(model)
    assert len(norms) == 5 and all(m.forward.__func__ is hub.RMSNorm.forward for m in norms)
    ids = torch.randint(0, 128, (2, 16))
    calls = sum(dispatch.calls.values())
    logits, loss, grads = _model_run(model, ids)
    assert sum(dispatch.calls.values()) == calls + 2 * 5
    exact = copy.deepcopy(theirs).double()
    logits_hf, loss_hf, grads_hf = _model_run(theirs, ids)
    with _Float64():
        logits_exact, _, grads_exact = _model_run(exact, ids)
    _check_2x("logits", logits, logits_hf, logits_exact)
    for name, grad in grads.items():
        _check_2x(name, grad, grads_hf[name], grads_exact[name], rows=ids.numel())


def test_kernelize_with_our_layers_in_process(hub_kernels) -> None:
    """``kernels.kernelize`` with :func:`layernorm_gpu.hub.kernel_mapping` (repositories that
    hand over the installed layer classes) swaps the forward of every Llama norm for ours."""
    _kernelized_llama_check(hub_kernels, hub.kernel_mapping(("cpu",)))


def test_kernelize_after_replace_norms(hub_kernels) -> None:
    """Norms that replace_norms re-classed keep their class's convention under the hub
    layers; replace_norms after kernelize counts them as ours."""
    _kernelized_llama_check(hub_kernels, hub.kernel_mapping(("cpu",)), replaced_first=True)
    model = _model_case("llama", torch.float32)
    with hub_kernels.use_kernel_mapping(hub.kernel_mapping(("cpu",)), inherit_mapping=False):
        hub_kernels.kernelize(model, mode=hub_kernels.Mode.TRAINING, device="cpu")
    report = replace_norms(model, report=True)
    assert len(report.already_ours) == 5 and not report.replaced and not report.left_alone


def test_kernelize_with_a_local_layer_repository(hub_kernels, tmp_path: Path) -> None:
    """The same through ``kernels.LocalLayerRepository`` reading the directory that
    :func:`layernorm_gpu.hub.write_local_repository` writes."""
    repo = hub.write_local_repository(tmp_path / "layernorm-gpu", backends=("cpu",))
    layer = hub_kernels.LocalLayerRepository(repo_path=repo, layer_name="RMSNorm")
    assert layer.load() is hub.RMSNorm
    _kernelized_llama_check(hub_kernels, {"RMSNorm": {"cpu": layer}})


def test_hub_layers_follow_the_kernels_layer_contract() -> None:
    """No constructor, no members beyond ``forward`` / ``can_torch_compile`` /
    ``has_backward``, forward with the replaced forward's arguments; an unknown class raises."""
    module_members = {name for name, _ in inspect.getmembers(nn.Module)}
    for layer in (hub.RMSNorm, hub.RMSNormZeroCentered):
        assert layer.__init__ is nn.Module.__init__
        extra = {name for name, _ in inspect.getmembers(layer)} - module_members
        assert extra == {"can_torch_compile", "has_backward"}
        assert len(inspect.signature(layer.forward).parameters) == 2
    assert hub.Repository("RMSNorm").load() is hub.RMSNorm
    with pytest.raises(ValueError, match="layer_name must be one of"):
        hub.Repository("LayerNorm")
    stranger = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="no numeric convention for torch.nn.modules.linear"):
        hub.RMSNorm.forward(stranger, torch.ones(2, 4))


def test_zero_centered_layer_runs_gemma_norms() -> None:
    """Bound to a Gemma3 norm (transformers' ``"RMSNormZeroCentered"``), the layer scales by
    ``1 + weight``."""
    theirs = _build(_PREFIX + "gemma3.modeling_gemma3.Gemma3RMSNorm")
    x = make_input((8, 64), torch.float32)
    y = hub.RMSNormZeroCentered.forward(theirs, x)
    with _Float64():
        exact = copy.deepcopy(theirs).double()(x.double())
    _check_2x("y", y, theirs(x), exact)
    assert math.isclose(hf.convention_of(type(theirs)).weight_offset, 1.0)
