"""``layernorm_gpu.LayerNorm`` / ``RMSNorm`` as drop-in replacements of torch's modules, the
``weight_offset`` (Gemma-style) scale, and ``replace_norms``.

Outputs and gradients are compared with torch's own module run in float64 on the same (already
rounded) inputs and parameters, at the helpers tolerances of the compared tensor's dtype; the
module under test runs on both backends: ``"reference"`` and ``"triton"`` (Triton's interpreter
on CPU tensors without CUDA).
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

from bench.train import GPTConfig, TinyGPT
from helpers import KERNEL_DEVICE, assert_close, make_input
from layernorm_gpu import LayerNorm, RMSNorm, dispatch, layer_norm, replace_norms, rms_norm

BACKENDS = ("reference", "triton")
CLASSES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "layer": (nn.LayerNorm, LayerNorm),
    "rms": (nn.RMSNorm, RMSNorm),
}
# (activation dtype, parameter dtype); bf16 activations with float32 parameters is the
# master-weights layout of mixed-precision training.
DTYPE_CASES = [
    pytest.param(torch.float32, torch.float32, id="fp32"),
    pytest.param(torch.float16, torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, torch.bfloat16, id="bf16"),
    pytest.param(torch.bfloat16, torch.float32, id="bf16-fp32params"),
]
CONSTRUCTOR_CASES = [
    pytest.param("layer", {"normalized_shape": 16}, id="ln"),
    pytest.param("layer", {"normalized_shape": (4, 8), "eps": 1e-3}, id="ln-2d-eps"),
    pytest.param(
        "layer", {"normalized_shape": torch.Size([2, 3, 4]), "bias": False}, id="ln-3d-nobias"
    ),
    pytest.param("layer", {"normalized_shape": 16, "elementwise_affine": False}, id="ln-noaffine"),
    pytest.param(
        "layer",
        {"normalized_shape": [16], "elementwise_affine": False, "bias": False},
        id="ln-noaffine-nobias",
    ),
    pytest.param("rms", {"normalized_shape": 16}, id="rms"),
    pytest.param("rms", {"normalized_shape": 16, "eps": None}, id="rms-eps-none"),
    pytest.param("rms", {"normalized_shape": (4, 8), "eps": 1e-6}, id="rms-2d-eps"),
    pytest.param("rms", {"normalized_shape": 16, "elementwise_affine": False}, id="rms-noaffine"),
]
PARITY_CASES = [
    pytest.param("layer", {"normalized_shape": 32}, id="ln"),
    pytest.param("layer", {"normalized_shape": (4, 8), "bias": False}, id="ln-2d-nobias"),
    pytest.param(
        "layer",
        {"normalized_shape": 32, "elementwise_affine": False, "eps": 1e-3},
        id="ln-noaffine",
    ),
    pytest.param("rms", {"normalized_shape": 32}, id="rms-eps-none"),
    pytest.param("rms", {"normalized_shape": (4, 8), "eps": 1e-6}, id="rms-2d"),
    pytest.param("rms", {"normalized_shape": 32, "elementwise_affine": False}, id="rms-noaffine"),
]
TINY_GPT = {"vocab_size": 32, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}


def _randomize(module: nn.Module) -> None:
    """Random (non-default) values in every parameter of ``module``."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(make_input(param.shape, param.dtype, param.device, scale=0.5))


def _randomize_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.RMSNorm):
            _randomize(module)


def _default_rms_eps(x_dtype: torch.dtype) -> float:
    """What torch's RMSNorm adds with ``eps=None``: the machine epsilon of the computation
    (opmath) type, float32 for 16-bit and float32 inputs, float64 for float64 ones."""
    return torch.finfo(torch.float64 if x_dtype == torch.float64 else torch.float32).eps


def _oracle(model: nn.Module, x_dtype: torch.dtype) -> nn.Module:
    """A float64 copy of ``model``, its RMSNorms' ``eps=None`` pinned to the value torch uses
    on ``x_dtype`` inputs."""
    oracle = copy.deepcopy(model).double()
    for module in oracle.modules():
        if isinstance(module, nn.RMSNorm) and module.eps is None:
            module.eps = _default_rms_eps(x_dtype)
    return oracle


def _run(
    module: nn.Module, x: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward (seeded with ``dy``): the output and the gradients of x and of
    every parameter, by name."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy.to(y.dtype))
    grads = {"x": x.grad}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return y.detach(), grads


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.RMSNorm)]


# --- construction: torch's contract --------------------------------------------------------


@pytest.mark.parametrize(("kind", "kwargs"), CONSTRUCTOR_CASES)
def test_constructor_matches_torch(kind: str, kwargs: dict[str, Any]) -> None:
    """Attributes, parameters (names, shapes, dtypes, initial values), state_dict keys and
    repr are torch's (the repr naming the class layernorm_gpu.X)."""
    torch_cls, our_cls = CLASSES[kind]
    theirs, ours = torch_cls(**kwargs), our_cls(**kwargs)
    assert isinstance(ours, torch_cls)
    for attr in ("normalized_shape", "eps", "elementwise_affine"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.weight_offset == 0.0 and ours.backend is None
    ours_params, their_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert ours_params.keys() == their_params.keys()
    for name, param in their_params.items():
        assert isinstance(ours_params[name], nn.Parameter)
        assert ours_params[name].dtype == param.dtype
        assert torch.equal(ours_params[name], param), name
    assert (ours.weight is None) == (theirs.weight is None)
    if kind == "layer":
        assert (ours.bias is None) == (theirs.bias is None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.extra_repr() == theirs.extra_repr()
    assert repr(ours) == "layernorm_gpu." + repr(theirs)


def test_positional_arguments_match_torch() -> None:
    """torch's positional order, device and dtype included; our options are keyword-only."""
    ours = LayerNorm([4, 8], 1e-3, True, False, "cpu", torch.float64)
    theirs = nn.LayerNorm([4, 8], 1e-3, True, False, "cpu", torch.float64)
    assert repr(ours) == "layernorm_gpu." + repr(theirs)
    assert ours.bias is None and ours.weight.dtype == torch.float64
    ours_rms = RMSNorm(16, 1e-6, False, "cpu", torch.float16)
    assert repr(ours_rms) == "layernorm_gpu." + repr(
        nn.RMSNorm(16, 1e-6, False, "cpu", torch.float16)
    )
    with pytest.raises(TypeError):
        LayerNorm(16, 1e-5, True, True, None, None, 1.0)
    with pytest.raises(TypeError):
        RMSNorm(16, None, True, None, None, 1.0)


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("device", [KERNEL_DEVICE, torch.device("meta")], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, None], ids=str)
def test_device_and_dtype_arguments(
    kind: str, device: torch.device, dtype: torch.dtype | None
) -> None:
    torch_cls, our_cls = CLASSES[kind]
    ours = our_cls((2, 8), device=device, dtype=dtype)
    theirs = torch_cls((2, 8), device=device, dtype=dtype)
    for name, param in theirs.named_parameters():
        mine = getattr(ours, name)
        assert (mine.device, mine.dtype) == (param.device, param.dtype), name
        assert mine.dtype == (dtype or torch.get_default_dtype())
        assert mine.device.type == device.type


@pytest.mark.parametrize(("kind", "kwargs"), CONSTRUCTOR_CASES)
def test_reset_parameters_matches_torch(kind: str, kwargs: dict[str, Any]) -> None:
    torch_cls, our_cls = CLASSES[kind]
    ours, fresh = our_cls(**kwargs), torch_cls(**kwargs)
    _randomize(ours)
    if kwargs.get("elementwise_affine", True):
        assert not torch.equal(ours.weight, fresh.weight)
    ours.reset_parameters()
    for name, param in fresh.named_parameters():
        assert torch.equal(getattr(ours, name), param), name


@pytest.mark.parametrize("kind", CLASSES)
def test_extra_repr_shows_our_options(kind: str) -> None:
    torch_cls, our_cls = CLASSES[kind]
    ours = our_cls(16, weight_offset=1.0, backend="triton")
    assert ours.extra_repr() == (
        torch_cls(16).extra_repr() + ", weight_offset=1.0, backend='triton'"
    )
    assert our_cls(16, backend="reference").extra_repr().endswith(", backend='reference'")


@pytest.mark.parametrize(("kind", "kwargs"), CONSTRUCTOR_CASES)
@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
def test_checkpoint_loads_both_ways(kind: str, kwargs: dict[str, Any], direction: str) -> None:
    """A checkpoint (torch.save / torch.load) of one module loads strictly into the other."""
    torch_cls, our_cls = CLASSES[kind]
    source, target = torch_cls(**kwargs), our_cls(**kwargs, backend="reference")
    if direction == "ours-to-torch":
        source, target = target, source
    _randomize(source)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    result = target.load_state_dict(torch.load(buffer, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    for name, param in source.named_parameters():
        assert torch.equal(getattr(target, name), param), name


def test_deepcopy_keeps_our_options() -> None:
    ours = RMSNorm(16, weight_offset=1.0, backend="reference")
    twin = copy.deepcopy(ours)
    assert (twin.weight_offset, twin.backend, twin.eps) == (1.0, "reference", None)
    assert twin.weight is not ours.weight and torch.equal(twin.weight, ours.weight)


# --- outputs and gradients against torch's module in float64 -------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "param_dtype"), DTYPE_CASES)
@pytest.mark.parametrize(("kind", "kwargs"), PARITY_CASES)
def test_module_parity_with_torch(
    kind: str, kwargs: dict[str, Any], x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    """Same parameters in torch's module and ours: y, dx, dW, dB in torch's dtypes, and equal
    to torch's module in float64 at the helpers tolerances (dW/dB: sums over the rows)."""
    torch_cls, our_cls = CLASSES[kind]
    theirs = torch_cls(**kwargs, device=KERNEL_DEVICE, dtype=param_dtype)
    _randomize(theirs)
    ours = our_cls(**kwargs, device=KERNEL_DEVICE, dtype=param_dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    oracle = _oracle(theirs, x_dtype)
    shape = (3, 2, *ours.normalized_shape)
    x, dy = make_input(shape, x_dtype), make_input(shape, x_dtype)
    rows = shape[0] * shape[1]

    calls = dispatch.calls[backend]
    y, grads = _run(ours, x, dy)
    assert dispatch.calls[backend] == calls + 2, "forward and backward ran on another backend"
    y_torch, grads_torch = _run(theirs, x, dy)
    y_ref, grads_ref = _run(oracle, x.double(), dy.double())

    assert y.dtype == y_torch.dtype == x_dtype and y.shape == y_torch.shape
    assert_close(y, y_ref, msg="y")
    assert grads.keys() == grads_torch.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert grad.dtype == grads_torch[name].dtype, name
        assert_close(grad, grads_ref[name], reduction=1 if name == "x" else rows, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "param_dtype"), DTYPE_CASES)
def test_rms_norm_default_eps_is_torchs(
    x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    """``RMSNorm(eps=None)`` adds torch's default eps. Rows with a small RMS make the eps
    visible: 1e-2 * randn has mean(x^2) ~ 1e-4, so a 16-bit eps (2**-7 for bfloat16) in place
    of float32's changes y far beyond rounding."""
    theirs = nn.RMSNorm(32, device=KERNEL_DEVICE, dtype=param_dtype)
    _randomize(theirs)
    ours = RMSNorm(32, device=KERNEL_DEVICE, dtype=param_dtype, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    x, dy = make_input((4, 32), x_dtype, scale=1e-2), make_input((4, 32), x_dtype)
    y, grads = _run(ours, x, dy)
    y_ref, grads_ref = _run(_oracle(theirs, x_dtype), x.double(), dy.double())
    assert_close(y, y_ref, msg="y")
    assert_close(grads["weight"], grads_ref["weight"], reduction=4, msg="weight")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CLASSES)
def test_output_can_be_modified_in_place(kind: str, backend: str) -> None:
    """As with torch's modules, the output is a fresh tensor that autograd lets the caller
    modify in place (``y = norm(x); y += residual``)."""
    torch_cls, our_cls = CLASSES[kind]
    oracle = torch_cls(32, dtype=torch.float64, device=KERNEL_DEVICE)
    _randomize(oracle)
    ours = our_cls(32, backend=backend, device=KERNEL_DEVICE)
    ours.load_state_dict(oracle.state_dict())
    x, residual = make_input((4, 32), torch.float32), make_input((4, 32), torch.float32)
    grads = {}
    for name, module, dtype in (("ours", ours, torch.float32), ("oracle", oracle, torch.float64)):
        leaf = x.to(dtype).clone().requires_grad_(True)
        y = module(leaf)
        y += residual.to(dtype)
        y.square().sum().backward()
        grads[name] = leaf.grad
    assert_close(grads["ours"], grads["oracle"])


# --- weight_offset: y = x_hat * (weight_offset + w) + b -------------------------------------


def _offset_formula(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    eps: float,
    weight_offset: float,
    is_rms: bool,
) -> torch.Tensor:
    """The Gemma-style norm written out (use float64 inputs)."""
    dims = tuple(range(x.dim() - w.dim(), x.dim()))
    if is_rms:
        x_hat = x * torch.rsqrt(x.square().mean(dims, keepdim=True) + eps)
    else:
        centred = x - x.mean(dims, keepdim=True)
        x_hat = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
    y = x_hat * (weight_offset + w)
    return y if b is None else y + b


@pytest.mark.parametrize(("kind", "kwargs"), CONSTRUCTOR_CASES)
def test_weight_offset_module_initialises_weight_to_zeros(
    kind: str, kwargs: dict[str, Any]
) -> None:
    """With ``weight_offset=1.0`` the weight starts (and resets) at zeros, the effective scale
    at 1; the bias and the state_dict keys are torch's."""
    torch_cls, our_cls = CLASSES[kind]
    theirs = torch_cls(**kwargs)
    fresh = our_cls(**kwargs, weight_offset=1.0)
    reset = our_cls(**kwargs, weight_offset=1.0)
    _randomize(reset)
    reset.reset_parameters()
    for module in (fresh, reset):
        assert list(module.state_dict()) == list(theirs.state_dict())
        for name, param in theirs.named_parameters():
            expected = torch.zeros_like(param) if name == "weight" else param
            assert torch.equal(getattr(module, name), expected), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", CLASSES)
def test_weight_offset_module_starts_at_unit_scale(kind: str, backend: str) -> None:
    """Freshly built, the offset module computes what torch's freshly built module does."""
    torch_cls, our_cls = CLASSES[kind]
    ours = our_cls(32, weight_offset=1.0, backend=backend, device=KERNEL_DEVICE)
    oracle = _oracle(torch_cls(32, device=KERNEL_DEVICE), torch.float32)
    x, dy = make_input((4, 32), torch.float32), make_input((4, 32), torch.float32)
    y, grads = _run(ours, x, dy)
    y_ref, grads_ref = _run(oracle, x.double(), dy.double())
    assert_close(y, y_ref)
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], reduction=4, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("x_dtype", "param_dtype"), DTYPE_CASES)
@pytest.mark.parametrize("weight_offset", [1.0, 0.25])
@pytest.mark.parametrize("kind", CLASSES)
def test_weight_offset_functional_matches_formula(
    kind: str, weight_offset: float, x_dtype: torch.dtype, param_dtype: torch.dtype, backend: str
) -> None:
    """layer_norm / rms_norm with ``weight_offset``: y and the gradients of x, w, b equal the
    hand-written float64 formula (autograd through it)."""
    is_rms = kind == "rms"
    shape, norm_shape, eps = (3, 2, 32), (32,), 1e-5
    x, dy = make_input(shape, x_dtype), make_input(shape, x_dtype)
    w = make_input(norm_shape, param_dtype, scale=0.2)
    b = None if is_rms else make_input(norm_shape, param_dtype, scale=0.5)
    inputs = [t for t in (x, w, b) if t is not None]
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    leaves64 = [t.double().requires_grad_(True) for t in inputs]
    if is_rms:
        y = rms_norm(
            leaves[0], norm_shape, leaves[1], eps, weight_offset=weight_offset, backend=backend
        )
        y_ref = _offset_formula(leaves64[0], leaves64[1], None, eps, weight_offset, True)
    else:
        y = layer_norm(
            leaves[0],
            norm_shape,
            leaves[1],
            leaves[2],
            eps,
            weight_offset=weight_offset,
            backend=backend,
        )
        y_ref = _offset_formula(*leaves64, eps, weight_offset, False)
    assert y.dtype == x_dtype
    assert_close(y, y_ref, msg="y")
    y.backward(dy)
    y_ref.backward(dy.double())
    for name, leaf, leaf64 in zip("xwb", leaves, leaves64, strict=False):
        assert leaf.grad.dtype == leaf.dtype, name
        assert_close(leaf.grad, leaf64.grad, reduction=1 if name == "x" else 6, msg=name)


# --- replace_norms ---------------------------------------------------------------------------


def _encoder_layer(norm_first: bool) -> nn.Module:
    return nn.TransformerEncoderLayer(
        16, 2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=norm_first
    )


MODELS = {
    "encoder-prenorm": lambda: _encoder_layer(True),
    "encoder-postnorm": lambda: _encoder_layer(False),
    "gpt-layernorm": lambda: TinyGPT(GPTConfig(**TINY_GPT, norm="layer")),
    "gpt-layernorm-nobias": lambda: TinyGPT(GPTConfig(**TINY_GPT, norm="layer", bias=False)),
    "gpt-rmsnorm": lambda: TinyGPT(GPTConfig(**TINY_GPT, norm="rms")),
}


def _model_input(name: str, dtype: torch.dtype) -> torch.Tensor:
    if name.startswith("gpt"):
        return torch.randint(
            0, TINY_GPT["vocab_size"], (2, TINY_GPT["block_size"]), device=KERNEL_DEVICE
        )
    return make_input((2, 5, 16), dtype)


def _model_run(
    model: nn.Module, inp: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients (of every parameter, and of a float input) of ``model``."""
    model.zero_grad(set_to_none=True)
    if inp.is_floating_point():
        inp = inp.detach().clone().requires_grad_(True)
    out = model(inp)
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
    assert all(isinstance(m, LayerNorm | RMSNorm) and m.backend == backend for m in norms)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[name] is param for name, param in params.items())

    inp = _model_input(model_name, dtype)
    out_shape = oracle(inp.double() if inp.is_floating_point() else inp).shape
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
    model = TinyGPT(GPTConfig(**TINY_GPT)).double()
    _randomize_norms(model)
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    idx = _model_input("gpt", torch.float64)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    for step in range(3):
        if step == 1:
            replace_norms(model, backend="reference")
        for net, optimizer in ((model, opt), (twin, twin_opt)):
            optimizer.zero_grad()
            net(idx).logsumexp(-1).mean().backward()
            optimizer.step()
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in model.parameters()}
    for (name, param), twin_param in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert not torch.equal(param, initial[name]), f"{name} was not trained"
        assert_close(param, twin_param, msg=name)


@pytest.mark.parametrize("kind", CLASSES)
def test_replace_norms_on_a_norm_returns_ours(kind: str) -> None:
    """A model that is itself a norm comes back as ours, with its options, parameters and
    training mode."""
    torch_cls, our_cls = CLASSES[kind]
    kwargs = {"eps": 1e-3, "bias": False} if kind == "layer" else {"eps": None}
    norm = torch_cls((4, 8), **kwargs, dtype=torch.float64).eval()
    _randomize(norm)
    swapped = replace_norms(norm, backend="reference")
    assert type(swapped) is our_cls and swapped is not norm
    assert (swapped.normalized_shape, swapped.eps, swapped.elementwise_affine) == (
        norm.normalized_shape,
        norm.eps,
        norm.elementwise_affine,
    )
    assert swapped.weight is norm.weight and not swapped.training
    if kind == "layer":
        assert swapped.bias is None
    x = make_input((3, 4, 8), torch.float64)
    assert_close(swapped(x), norm(x))
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


def test_replace_norms_swaps_a_norm_registered_twice() -> None:
    """One norm reachable under two names (shared weights) is swapped under both."""
    model = nn.Module()
    model.first = model.second = nn.LayerNorm(8)
    replace_norms(model, backend="reference")
    assert isinstance(model.first, LayerNorm) and isinstance(model.second, LayerNorm)
    assert model.first.weight is model.second.weight


def test_replace_norms_leaves_our_modules_alone() -> None:
    ours = LayerNorm(16, weight_offset=1.0, backend="reference")
    inner = RMSNorm(16, eps=1e-6, backend="reference")
    model = nn.Sequential(ours, nn.Linear(16, 16), nn.Sequential(inner), nn.LayerNorm(16))
    replace_norms(model, backend="triton")
    assert model[0] is ours and model[2][0] is inner
    assert (ours.backend, ours.weight_offset, inner.backend) == ("reference", 1.0, "reference")
    assert isinstance(model[3], LayerNorm) and model[3].backend == "triton"
    swapped = model[3]
    assert replace_norms(model, backend="reference") is model
    assert model[3] is swapped and swapped.backend == "triton"
    assert replace_norms(ours, backend="triton") is ours


def test_options_are_validated_when_the_module_is_built():
    with pytest.raises(ValueError, match="backend"):
        LayerNorm(16, backend="nope")
    with pytest.raises(ValueError, match="casting"):
        RMSNorm(16, casting="gemma2")


def test_repr_shows_ours():
    model = nn.Sequential(LayerNorm(8), RMSNorm(8, casting="llama", backend="reference"))
    text = repr(model)
    assert "layernorm_gpu.LayerNorm((8,), eps=1e-05" in text
    assert (
        "layernorm_gpu.RMSNorm((8,), eps=None, elementwise_affine=True, casting='llama', "
        "backend='reference')" in text
    )


def test_torchscript_names_the_supported_paths():
    with pytest.raises(RuntimeError, match="torch.compile") as info:
        torch.jit.script(LayerNorm(8))
    assert "torch.export" in str(info.value)
