"""``replace_norms`` on torch's norms: outputs and gradients of whole models, and a patched
module keeping all of its state (hooks, parametrizations, attributes, shared modules, DTensor
parameters, ...) as the original had it; the report and its warnings.

Model outputs and gradients are compared with a float64 copy of the unpatched model at the
helpers tolerances, on both backends. The transformers norms: ``test_hf.py``.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import types

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from bench.model import tiny_model
from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import LayerNorm, RMSNorm, dispatch, replace_norms
from layernorm_gpu.modules import ReplaceReport

BACKENDS = ("reference", "triton")
TORCH_NORMS = (nn.LayerNorm, nn.RMSNorm)


def _randomize_norms(model: nn.Module) -> None:
    """Random (non-default) values in every parameter of every torch norm of ``model``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TORCH_NORMS):
                for param in module.parameters():
                    param.copy_(make_input(param.shape, param.dtype, param.device, scale=0.5))


def _oracle(model: nn.Module, x_dtype: torch.dtype) -> nn.Module:
    """A float64 copy of ``model``, its RMSNorms' ``eps=None`` pinned to what torch adds on
    ``x_dtype`` inputs (float32's machine epsilon below float64)."""
    oracle = copy.deepcopy(model).double()
    for module in oracle.modules():
        if isinstance(module, nn.RMSNorm) and module.eps is None:
            dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
            module.eps = torch.finfo(dtype).eps
    return oracle


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, TORCH_NORMS)]


def _encoder_layer(norm_first: bool) -> nn.Module:
    return nn.TransformerEncoderLayer(
        16, 2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=norm_first
    )


def _mlp() -> nn.Module:
    """RMSNorm (default eps) and a bias-free LayerNorm over two dims, nested."""
    return nn.Sequential(
        nn.Linear(16, 16),
        nn.Sequential(nn.RMSNorm(16), nn.GELU()),
        nn.Unflatten(-1, (2, 8)),
        nn.LayerNorm((2, 8), bias=False),
        nn.Flatten(-2),
        nn.Linear(16, 16),
    )


MODELS = {
    "encoder-prenorm": lambda: _encoder_layer(True),
    "encoder-postnorm": lambda: _encoder_layer(False),
    "mlp-rmsnorm-nobias": _mlp,
    "gpt2": lambda: tiny_model("gpt2", num_layers=1),
}


def _model_input(name: str, dtype: torch.dtype) -> torch.Tensor:
    if name == "gpt2":
        return torch.randint(0, 128, (2, 8), device=KERNEL_DEVICE)
    return make_input((2, 5, 16), dtype)


def _model_run(
    model: nn.Module, inp: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output (logits for gpt2) and gradients (of every parameter and a float input)."""
    model.zero_grad(set_to_none=True)
    if inp.is_floating_point():
        inp = inp.detach().clone().requires_grad_(True)
    out = model(inp)
    out = out if isinstance(out, torch.Tensor) else out.logits
    out.backward(dy.to(out.dtype))
    grads = {name: p.grad for name, p in model.named_parameters()}
    if inp.is_floating_point():
        grads["input"] = inp.grad
    return out.detach(), grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_name", MODELS)
def test_replace_norms_keeps_outputs_gradients_and_parameters(
    model_name: str, backend: str
) -> None:
    """After the swap every norm is ours, holds the very same Parameter objects, runs on the
    requested backend, and the model's output and gradients equal the float64 model's
    (float64 on the reference backend, float32 on the kernels)."""
    dtype = torch.float64 if backend == "reference" else torch.float32
    model = MODELS[model_name]().to(KERNEL_DEVICE, dtype)
    _randomize_norms(model)
    oracle = _oracle(model, dtype)
    params = dict(model.named_parameters())
    names = [name for name, _ in model.named_modules()]
    n_norms = len(_norms(model))

    assert replace_norms(model, backend=backend) is model

    assert [name for name, _ in model.named_modules()] == names
    norms = _norms(model)
    assert len(norms) == n_norms > 0
    assert all(type(m) in (LayerNorm, RMSNorm) and m.backend == backend for m in norms)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[name] is param for name, param in params.items())

    inp = _model_input(model_name, dtype)
    with torch.no_grad():
        out_ref = oracle(inp.double() if inp.is_floating_point() else inp)
    out_shape = (out_ref if isinstance(out_ref, torch.Tensor) else out_ref.logits).shape
    dy = make_input(out_shape, dtype)
    calls = dispatch.calls[backend]
    out, grads = _model_run(model, inp, dy)
    assert dispatch.calls[backend] == calls + 2 * n_norms
    out_ref, grads_ref = _model_run(
        oracle, inp.double() if inp.is_floating_point() else inp, dy.double()
    )
    tokens = out_shape[0] * out_shape[1]
    assert_close(out, out_ref, msg="output")
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], reduction=tokens, msg=name)


def test_optimizer_built_before_replace_norms_steps_the_model() -> None:
    """An optimizer (with momentum state) created before the swap keeps training the swapped
    model exactly as it trains an unswapped twin."""
    model = tiny_model("gpt2", num_layers=1, dtype=torch.float64)
    _randomize_norms(model)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    idx = _model_input("gpt2", torch.float64)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(3):
        if step == 1:
            replace_norms(model, backend="reference")
        for net, optimizer in ((model, opt), (twin, twin_opt)):
            optimizer.zero_grad()
            net(idx).logits.logsumexp(-1).mean().backward()
            optimizer.step()
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert not torch.equal(param, initial[name]), f"{name} was not trained"
        assert_close(param, twin_param, msg=name)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_replace_norms_on_a_norm_reclasses_it_in_place(kind: str) -> None:
    """A model that is itself a norm becomes ours in place, with its options, parameters and
    training mode."""
    torch_cls, our_cls = (nn.LayerNorm, LayerNorm) if kind == "layer" else (nn.RMSNorm, RMSNorm)
    kwargs = {"eps": 1e-3, "bias": False} if kind == "layer" else {"eps": None}
    norm = torch_cls((4, 8), **kwargs, dtype=torch.float64).eval()
    _randomize_norms(norm)
    twin, weight = copy.deepcopy(norm), norm.weight
    assert replace_norms(norm, backend="reference") is norm
    assert type(norm) is our_cls and isinstance(norm, torch_cls)
    assert (norm.normalized_shape, norm.eps, norm.elementwise_affine) == (
        twin.normalized_shape,
        twin.eps,
        twin.elementwise_affine,
    )
    assert norm.weight is weight and not norm.training
    assert (norm.weight_offset, norm.backend) == (0.0, "reference")
    x = make_input((3, 4, 8), torch.float64)
    assert_close(norm(x), twin(x))
    plain = replace_norms(torch_cls(8, elementwise_affine=False))
    assert type(plain) is our_cls and plain.weight is None and plain.backend is None


def test_replace_norms_reaches_nested_modules() -> None:
    model = nn.Sequential(
        nn.Linear(8, 8),
        nn.ModuleDict(
            {
                "inner": nn.Sequential(nn.LayerNorm(8), nn.ReLU()),
                "rms": nn.RMSNorm(8, elementwise_affine=False),
            }
        ),
        nn.ModuleList([nn.Sequential(nn.Sequential(nn.LayerNorm(8, bias=False)))]),
    )
    names = [name for name, _ in model.named_modules()]
    replace_norms(model, backend="reference")
    assert [name for name, _ in model.named_modules()] == names
    assert isinstance(model[1]["inner"][0], LayerNorm)
    assert isinstance(model[1]["rms"], RMSNorm) and model[1]["rms"].weight is None
    assert isinstance(model[2][0][0][0], LayerNorm) and model[2][0][0][0].bias is None
    assert all(type(m) in (LayerNorm, RMSNorm) for m in _norms(model))


def test_replace_norms_keeps_a_norm_registered_twice_shared() -> None:
    """One norm reachable under two names (shared weights) is one module, replaced once."""
    model = nn.Module()
    model.first = model.second = nn.LayerNorm(8)
    report = replace_norms(model, backend="reference", report=True)
    assert model.first is model.second and type(model.first) is LayerNorm
    assert [r.name for r in report.replaced] == ["first"]


def test_replace_norms_leaves_our_modules_alone() -> None:
    ours = LayerNorm(16, weight_offset=1.0, backend="reference")
    inner = RMSNorm(16, eps=1e-6, backend="reference")
    model = nn.Sequential(ours, nn.Linear(16, 16), nn.Sequential(inner), nn.LayerNorm(16))
    replace_norms(model, backend="triton")
    assert model[0] is ours and model[2][0] is inner
    assert (ours.backend, ours.weight_offset, inner.backend) == ("reference", 1.0, "reference")
    assert isinstance(model[3], LayerNorm) and model[3].backend == "triton"
    swapped = model[3]
    report = replace_norms(model, backend="reference", report=True)
    assert model[3] is swapped and swapped.backend == "triton"
    assert not report.replaced and report.already_ours == ["0", "2.0", "3"]
    assert replace_norms(ours, backend="triton") is ours


# --- per-module state (issue 8.4): a patched module is the same module -----------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_hooks_attributes_and_training_flag_survive(kind: str, backend: str) -> None:
    """Forward hooks and pre-hooks (which may change input and output), state-dict hooks,
    extra attributes and the training flag are the module's own, so they all stay."""
    torch_cls = nn.LayerNorm if kind == "layer" else nn.RMSNorm
    norm = torch_cls(8, eps=1e-5, device=KERNEL_DEVICE).eval()
    _randomize_norms(norm)
    fired: list[str] = []

    def pre_hook(module, args):
        fired.append("pre")
        return (args[0] * 2.0,)

    def hook(module, args, output):
        fired.append("forward")
        return output + 1.0

    norm.register_forward_pre_hook(pre_hook)
    norm.register_forward_hook(hook)
    norm.register_state_dict_post_hook(lambda *args: fired.append("state_dict"))
    norm.register_load_state_dict_post_hook(lambda *args: fired.append("load_state_dict"))
    norm.tag = {"layer": 3}
    oracle = _oracle(norm, torch.float32)
    keys = list(norm.state_dict())

    replace_norms(norm, backend=backend)

    assert norm.tag == {"layer": 3} and not norm.training
    x = make_input((4, 8), torch.float32)
    fired.clear()
    y = norm(x)
    assert fired == ["pre", "forward"]
    assert_close(y, oracle(x.double()))
    fired.clear()
    state = norm.state_dict()
    norm.load_state_dict(state)
    assert fired == ["state_dict", "load_state_dict"] and list(state) == keys


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_set_to_none_stays_none(backend: str) -> None:
    """A norm whose weight was set to None (bias kept) runs without one, as torch's does."""
    norm = nn.LayerNorm(8, device=KERNEL_DEVICE)
    _randomize_norms(norm)
    norm.weight = None
    oracle = _oracle(norm, torch.float32)
    replace_norms(norm, backend=backend)
    assert norm.weight is None and list(norm.state_dict()) == ["bias"]
    x = make_input((4, 8), torch.float32)
    assert_close(norm(x), oracle(x.double()))


class _Scale(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 3.0 * w


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "how", ["parametrize", "weight_norm-parametrization", "weight_norm-hook"], ids=str
)
def test_parametrized_weights_stay_parametrized(how: str, backend: str) -> None:
    """Parametrizations (``parametrize``, ``parametrizations.weight_norm``) and the old hook
    based ``weight_norm`` keep computing the weight, gradients reach the underlying
    parameters, and removing a parametrization afterwards leaves our module."""
    norm = nn.LayerNorm(8, device=KERNEL_DEVICE)
    _randomize_norms(norm)
    oracle = copy.deepcopy(norm).double()
    for module in (norm, oracle):
        if how == "parametrize":
            parametrize.register_parametrization(module, "weight", _Scale())
        elif how == "weight_norm-parametrization":
            parametrizations.weight_norm(module, dim=None)
        else:
            torch.nn.utils.weight_norm(module, dim=None)
    names = [name for name, _ in norm.named_parameters()]

    report = replace_norms(norm, backend=backend, report=True)

    assert [r.cls for r in report.replaced] == ["torch.nn.modules.normalization.LayerNorm"]
    assert not report.left_alone, "weight_norm's parametrization is not a model norm"
    assert isinstance(norm, LayerNorm) and [name for name, _ in norm.named_parameters()] == names
    x, dy = make_input((4, 8), torch.float32), make_input((4, 8), torch.float32)
    for module, dtype in ((norm, torch.float32), (oracle, torch.float64)):
        module(x.to(dtype)).backward(dy.to(dtype))
    for (name, param), (_, expected) in zip(
        norm.named_parameters(), oracle.named_parameters(), strict=True
    ):
        assert_close(param.grad, expected.grad, reduction=4, msg=name)
    if how != "weight_norm-hook":
        parametrize.remove_parametrizations(norm, "weight")
        assert type(norm) is LayerNorm and isinstance(norm.weight, nn.Parameter)
        assert_close(norm(x), oracle(x.double()))


def test_dtensor_parameters_are_kept_as_they_are() -> None:
    """Re-classing touches no parameter: DTensor parameters stay the same DTensors."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        norm = nn.LayerNorm(8)
        for name, param in list(norm.named_parameters()):
            setattr(
                norm, name, nn.Parameter(distribute_tensor(param.detach(), mesh, [Replicate()]))
            )
        before = dict(norm.named_parameters())
        replace_norms(norm, backend="reference")
        after = dict(norm.named_parameters())
        assert type(norm) is LayerNorm
        assert all(after[n] is p and isinstance(p, DTensor) for n, p in before.items())
    finally:
        dist.destroy_process_group()


def test_patched_model_pickles_and_deepcopies() -> None:
    """torch.save of a whole patched model and copy.deepcopy give patched twins."""
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.RMSNorm(8))
    replace_norms(model, backend="reference")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
        assert [type(m) for m in twin] == [nn.Linear, LayerNorm, RMSNorm]
        assert twin[1].backend == "reference"
        x = make_input((2, 8), torch.float32)
        torch.testing.assert_close(twin(x), model(x))
    assert pickle.loads(pickle.dumps(model[1])).backend == "reference"


# --- the report -----------------------------------------------------------------------------


class _CustomRMSNorm(nn.Module):
    """A norm with its own forward: not in the table."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True) * self.weight


class _ChannelsFirstLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, -1)).transpose(1, -1)


def test_report_counts_replacements_and_says_what_was_left_alone() -> None:
    model = nn.Sequential(
        nn.LayerNorm(8),
        nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8)),
        _CustomRMSNorm(),
        _ChannelsFirstLayerNorm(8),
        nn.BatchNorm1d(8),
    )
    with pytest.warns(UserWarning, match="LEFT ALONE"):
        report = replace_norms(model, report=True)
    assert isinstance(report, ReplaceReport) and report.backend is None
    assert report.counts() == {
        "torch.nn.modules.normalization.LayerNorm": 2,
        "torch.nn.modules.normalization.RMSNorm": 1,
    }
    left = {item.name: item.reason for item in report.left_alone}
    assert left.keys() == {"2", "3", "4"}
    assert "not in layernorm_gpu.hf.TABLE" in left["2"]
    assert "subclass of torch.nn.modules.normalization.LayerNorm" in left["3"]
    assert "channels or groups" in left["4"]
    assert type(model[3]) is _ChannelsFirstLayerNorm
    text = str(report)
    assert "3 norm modules now run layernorm_gpu" in text
    assert "replaced   2 x torch.nn.modules.normalization.LayerNorm" in text
    assert "LEFT ALONE   1 x test_replace_norms._CustomRMSNorm" in text


def test_a_forward_set_on_the_instance_is_left_alone_and_reported() -> None:
    """A parallel plan (transformers' tensor-parallel styles), ``kernels.kernelize`` or an
    accelerate hook sets ``forward`` on the instance, which a new class would not reach:
    such a norm is reported left alone, with a warning, and keeps running its own forward."""
    model = nn.Sequential(nn.LayerNorm(8), nn.RMSNorm(8), nn.LayerNorm(8))
    original = model[0].forward
    model[0].forward = lambda x: original(x)
    model[1].forward = types.MethodType(nn.RMSNorm.forward, model[1])
    with pytest.warns(UserWarning, match="set on the instance"):
        report = replace_norms(model, report=True)
    assert [item.name for item in report.left_alone] == ["0", "1"]
    assert [r.name for r in report.replaced] == ["2"]
    assert type(model[0]) is nn.LayerNorm and type(model[1]) is nn.RMSNorm
    dispatch.calls.clear()
    model(make_input((2, 8), torch.float32))
    assert sum(dispatch.calls.values()) == 1


def test_a_norm_hooked_by_accelerate_is_replaced_under_its_hook() -> None:
    """accelerate's ``add_hook_to_module`` keeps the class's forward bound as
    ``module._old_forward`` and calls it from the instance forward: replace_norms re-classes
    the module and binds ``_old_forward`` to the new forward, so the hook runs our norm."""
    model = nn.Sequential(nn.LayerNorm(8), LayerNorm(8))
    _randomize_norms(model)
    calls = []

    def hook_forward(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        calls.append(type(module))
        return module._old_forward(*args)

    hooked = model[0]
    hooked._old_forward = hooked.forward
    hooked.forward = functools.partial(hook_forward, hooked)
    x = make_input((2, 8), torch.float32)
    want = hooked(x)
    model[1].forward = types.MethodType(nn.LayerNorm.forward, model[1])  # not ours any more
    with pytest.warns(UserWarning, match="set on the instance"):
        report = replace_norms(model, report=True)
    assert [r.name for r in report.replaced] == ["0"] and not report.already_ours
    assert [item.name for item in report.left_alone] == ["1"]
    assert type(hooked) is LayerNorm
    dispatch.calls.clear()
    assert_close(hooked(x), want.double())
    assert sum(dispatch.calls.values()) == 1 and calls == [nn.LayerNorm, LayerNorm]


def test_nothing_replaced_is_loud() -> None:
    """A model with norm-like modules and nothing replaced warns, and says so in the report;
    so does a model without any norm."""
    with pytest.warns(UserWarning, match="NOTHING REPLACED"):
        report = replace_norms(nn.Sequential(nn.Linear(8, 8), _CustomRMSNorm()), report=True)
    assert not report.replaced and len(report.left_alone) == 1
    with pytest.warns(UserWarning, match=r"NOTHING REPLACED \(no norm modules found\)"):
        replace_norms(nn.Linear(8, 8))


def test_full_replacement_does_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    replace_norms(_encoder_layer(True))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_model_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        replace_norms(torch.ones(3))
