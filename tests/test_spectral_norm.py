"""paranorm.spectral_norm against torch.nn.utils.parametrizations.spectral_norm and a dense SVD."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations as torch_param

import paranorm as pn
from _layers import layers_and_dims

LAYERS = {
    "linear": (lambda: nn.Linear(5, 7), (2, 5)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), (2, 3, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 3, (2, 3)), (2, 2, 5, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (1, 2, 3, 4, 4)),
    "convtr1d": (lambda: nn.ConvTranspose1d(3, 4, 3), (2, 3, 6)),
    "convtr2d": (lambda: nn.ConvTranspose2d(2, 3, 2, groups=1), (2, 2, 4, 4)),
}


def twins(kind: str, seed: int = 0, **kwargs) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The same layer under torch's and paranorm's spectral_norm, from the same RNG state."""
    torch.manual_seed(seed)
    make, input_shape = LAYERS[kind]
    layer = make()
    x = torch.randn(input_shape)
    torch.manual_seed(seed + 1000)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer), **kwargs)
    torch.manual_seed(seed + 1000)
    ours = pn.spectral_norm(copy.deepcopy(layer), **kwargs)
    return theirs, ours, x


def uv(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    p = module.parametrizations.weight[0]
    return p._u, p._v


def original(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


def as_matrix(w: torch.Tensor, dim: int) -> torch.Tensor:
    return w.movedim(dim, 0).reshape(w.shape[dim], -1)


def test_signature_matches_torch():
    theirs = inspect.signature(torch_param.spectral_norm).parameters
    ours = inspect.signature(pn.spectral_norm).parameters
    for name, param in theirs.items():
        assert ours[name].default == param.default
        assert ours[name].kind == param.kind
    assert ours["method"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["coeff"].kind is inspect.Parameter.KEYWORD_ONLY and ours["coeff"].default is None


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("n_power_iterations", [1, 3])
def test_training_steps_bit_exact(kind, n_power_iterations):
    theirs, ours, x = twins(kind, n_power_iterations=n_power_iterations)
    for a, b in zip(uv(theirs), uv(ours), strict=True):
        assert torch.equal(a, b)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    for _ in range(3):
        y_theirs, y_ours = theirs(x), ours(x)
        assert torch.equal(y_theirs, y_ours)
        y_theirs.square().mean().backward()
        y_ours.square().mean().backward()
        for a, b in zip(theirs.parameters(), ours.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad)
        opt_theirs.step()
        opt_ours.step()
        opt_theirs.zero_grad()
        opt_ours.zero_grad()
    for a, b in zip(uv(theirs), uv(ours), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kind", "dim"), [("conv2d", -1), ("conv2d", 2), ("conv1d", -2), ("linear", 1)]
)
def test_explicit_and_negative_dims_bit_exact(kind, dim):
    theirs, ours, x = twins(kind, dim=dim)
    assert ours.parametrizations.weight[0].dim == dim % original(ours).ndim
    assert uv(ours)[0].shape == uv(theirs)[0].shape
    assert torch.equal(theirs(x), ours(x))


@pytest.mark.parametrize("kind", ["convtr1d", "convtr2d"])
def test_conv_transpose_defaults_to_dim_1(kind):
    theirs, ours, x = twins(kind)
    weight = original(ours)
    assert ours.parametrizations.weight[0].dim == 1
    # weight is (in, out, *k) for a ConvTranspose: dim 1 is its output axis.
    assert uv(ours)[0].shape == (weight.shape[1],)
    assert torch.equal(theirs(x), ours(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d", "convtr1d"])
def test_state_dict_keys_and_load_both_ways(kind):
    theirs, ours, x = twins(kind, seed=1)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape
    assert "parametrizations.weight.0._u" in ours.state_dict()

    other_theirs, other_ours, _ = twins(kind, seed=2)
    other_ours.load_state_dict(theirs.state_dict(), strict=True)  # torch -> paranorm
    other_theirs.load_state_dict(ours.state_dict(), strict=True)  # paranorm -> torch
    for module in (theirs, ours, other_theirs, other_ours):
        module.eval()
    assert torch.equal(other_ours(x), theirs(x))
    assert torch.equal(other_theirs(x), ours(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d", "convtr1d"])
def test_loads_legacy_weight_orig_u_v(kind):
    torch.manual_seed(3)
    make, input_shape = LAYERS[kind]
    legacy = torch.nn.utils.spectral_norm(make())
    x = torch.randn(input_shape)
    for _ in range(5):  # let the legacy hook's u, v move away from their start
        legacy(x)
    legacy.eval()
    sd = legacy.state_dict()
    assert {"weight_orig", "weight_u", "weight_v", "bias"} == set(sd)
    ours = pn.spectral_norm(make()).eval()
    ours.load_state_dict(sd, strict=False)
    assert torch.equal(original(ours), legacy.weight_orig)
    assert torch.equal(uv(ours)[0], legacy.weight_u) and torch.equal(uv(ours)[1], legacy.weight_v)
    torch.testing.assert_close(ours(x), legacy(x), rtol=1e-6, atol=1e-7)


def test_eval_keeps_u_v_and_recomputes_sigma_from_the_current_weight():
    _, ours, x = twins("conv1d", seed=4)
    ours.eval()
    u, v = (t.clone() for t in uv(ours))
    ours(x)
    assert torch.equal(uv(ours)[0], u) and torch.equal(uv(ours)[1], v)
    with torch.no_grad():
        original(ours).mul_(3).add_(0.1)
    w = original(ours).detach().double()
    sigma = torch.dot(u.double(), as_matrix(w, 0) @ v.double())
    torch.testing.assert_close(ours.weight.double(), w / sigma, rtol=1e-6, atol=1e-7)
    assert torch.equal(uv(ours)[0], u) and torch.equal(uv(ours)[1], v)


def test_training_forward_takes_one_power_step():
    _, ours, x = twins("linear", seed=5)
    v = uv(ours)[1].double().clone()
    w = as_matrix(original(ours).detach().double(), 0)
    ours(x)
    u_next = F.normalize(w @ v, dim=0)
    v_next = F.normalize(w.T @ u_next, dim=0)
    torch.testing.assert_close(uv(ours)[0].double(), u_next, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(uv(ours)[1].double(), v_next, rtol=1e-5, atol=1e-6)


def test_two_forwards_per_step_both_backprop_like_torch():
    theirs, ours, real = twins("conv2d", seed=6)
    fake = torch.randn_like(real)
    results = []
    for module in (theirs, ours):
        loss = module(real).mean() - module(fake).mean()  # D(real), D(fake) in one step
        loss.backward()
        results.append([p.grad.clone() for p in module.parameters()] + list(uv(module)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_deepcopy_is_independent():
    _, ours, x = twins("conv1d", seed=7)
    clone = copy.deepcopy(ours)
    assert torch.equal(clone(x), ours(x))  # both took one step from the same u, v
    u = uv(ours)[0].clone()
    clone(x)
    assert torch.equal(uv(ours)[0], u)
    assert uv(clone)[0].data_ptr() != uv(ours)[0].data_ptr()
    legacy = torch.nn.utils.spectral_norm(nn.Conv1d(3, 4, 3))
    clone.load_state_dict(legacy.state_dict(), strict=True)
    assert torch.equal(original(clone), legacy.weight_orig)


class Scale(nn.Module):
    """A layer whose weight is 1-D."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_one_dimensional_weight_is_exactly_normalized():
    torch.manual_seed(8)
    layer = Scale(6)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer))
    ours = pn.spectral_norm(copy.deepcopy(layer))
    assert torch.equal(ours.weight, F.normalize(layer.weight, dim=0, eps=1e-12))
    assert torch.equal(ours.weight, theirs.weight)
    keys = ["parametrizations.weight.original"]
    assert list(ours.state_dict()) == list(theirs.state_dict()) == keys


def scaled_linear(sigma: float, seed: int = 9) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight.mul_(sigma / torch.linalg.matrix_norm(layer.weight, ord=2))
    return layer


def test_soft_coeff_leaves_a_layer_below_c_unchanged():
    layer = scaled_linear(0.5)
    plain = copy.deepcopy(layer)
    ours = pn.spectral_norm(layer, coeff=0.9)
    assert torch.equal(ours.weight, plain.weight)
    x = torch.randn(3, 6)
    ours(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert torch.equal(original(ours).grad, plain.weight.grad)  # the identity, gradients too


@pytest.mark.parametrize("coeff", [0.9, 1, 2.5])
def test_soft_coeff_brings_a_layer_above_c_down_to_c(coeff):
    ours = pn.spectral_norm(scaled_linear(4.0), n_power_iterations=50, coeff=coeff)
    sigma = torch.linalg.matrix_norm(ours.weight.detach().double(), ord=2)
    torch.testing.assert_close(sigma.item(), float(coeff), rtol=1e-5, atol=0)


def test_soft_coeff_on_a_one_dimensional_weight():
    torch.manual_seed(10)
    layer = Scale(4)
    with torch.no_grad():
        layer.weight.mul_(3 / layer.weight.norm())
    ours = pn.spectral_norm(layer, coeff=0.5)
    torch.testing.assert_close(ours.weight.norm().item(), 0.5, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_against_a_float64_svd(dtype):
    torch.manual_seed(11)
    layer = nn.Conv1d(4, 6, 3).to(dtype)
    ours = pn.spectral_norm(layer, n_power_iterations=50)
    w = ours.weight
    assert w.dtype == dtype and uv(ours)[0].dtype == dtype
    w64 = original(ours).detach().double()
    expected = w64 / torch.linalg.matrix_norm(as_matrix(w64, 0), ord=2)
    tol = {torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(w.detach().double(), expected, rtol=tol, atol=tol * 1e-2)
    x = torch.randn(2, 4, 5, dtype=dtype)
    assert ours(x).dtype == dtype


def test_float64_bit_exact_with_torch():
    torch.manual_seed(12)
    layer = nn.Conv2d(3, 4, 2).double()
    torch.manual_seed(13)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer))
    torch.manual_seed(13)
    ours = pn.spectral_norm(copy.deepcopy(layer))
    assert torch.equal(theirs.weight, ours.weight)


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (lambda: nn.Linear(4, 3), {}),
        (lambda: nn.ConvTranspose1d(3, 2, 3), {}),
        (lambda: nn.Conv2d(2, 3, 2), {"coeff": 0.5}),
        (lambda: Scale(5), {}),
        (lambda: Scale(5), {"coeff": 0.5}),
    ],
)
def test_gradcheck_float64_eval_mode(make, kwargs):
    torch.manual_seed(14)
    layer = make().double()
    with torch.no_grad():
        layer.weight.mul_(3)  # sigma well above any coeff used here: the soft branch is smooth
    ours = pn.spectral_norm(layer, **kwargs).eval()
    parametrization = ours.parametrizations.weight[0]
    w = original(ours).detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(parametrization, (w,))


# --- properties over shapes, dims and layer types -------------------------------------------

@settings(max_examples=25, deadline=None)
@given(layers_and_dims(), st.integers(0, 2**31 - 1))
def test_property_parity_with_torch(layer_dim, seed):
    layer, dim = layer_dim
    torch.manual_seed(seed)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer), dim=dim)
    torch.manual_seed(seed)
    ours = pn.spectral_norm(copy.deepcopy(layer), dim=dim)
    assert torch.equal(theirs.weight, ours.weight)
    theirs.eval()
    ours.eval()
    assert torch.equal(theirs.weight, ours.weight)


@settings(max_examples=25, deadline=None)
@given(layers_and_dims(), st.integers(0, 2**31 - 1))
def test_property_largest_singular_value_is_one(layer_dim, seed):
    layer, dim = layer_dim
    torch.manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        layer.weight.normal_()
    # 15 warm-up + 300 in the registration check + 300 in this forward: the Rayleigh quotient's
    # relative error is at most about 1 / (4 e k) for k steps, whatever the singular gap.
    ours = pn.spectral_norm(layer, n_power_iterations=300, dim=dim)
    w = ours.weight.detach()
    d = ours.parametrizations.weight[0].dim
    sigma = torch.linalg.matrix_norm(as_matrix(w, d), ord=2).item()
    assert 1 - 1e-9 <= sigma <= 1 + 1e-3  # power iteration under-estimates sigma: never below 1


def test_legacy_keys_load_under_a_prefix():
    torch.manual_seed(15)
    legacy = nn.Sequential(nn.Linear(3, 3), torch.nn.utils.spectral_norm(nn.Linear(3, 2))).eval()
    ours = nn.Sequential(nn.Linear(3, 3), pn.spectral_norm(nn.Linear(3, 2))).eval()
    assert "1.weight_orig" in legacy.state_dict()
    ours.load_state_dict(legacy.state_dict(), strict=True)
    x = torch.randn(4, 3)
    torch.testing.assert_close(ours(x), legacy(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_power_step_updates_the_buffers_in_place(dtype):
    # In place, as torch does: DDP broadcasts the same buffer objects, and optimizers or hooks
    # holding a reference see the update.
    torch.manual_seed(16)
    ours = pn.spectral_norm(nn.Linear(4, 3).to(dtype))
    u, v = uv(ours)
    u_before = u.clone()
    ours(torch.randn(2, 4, dtype=dtype))
    assert uv(ours)[0] is u and uv(ours)[1] is v
    assert not torch.equal(u, u_before)


def test_assigning_the_weight_sets_the_original():
    torch.manual_seed(17)
    ours = pn.spectral_norm(nn.Linear(3, 4)).eval()
    target = torch.randn(4, 3)
    ours.weight = target
    assert torch.equal(original(ours), target)
    u, v = uv(ours)
    torch.testing.assert_close(ours.weight, target / torch.dot(u, target @ v))


def test_torch_remove_parametrizations_bakes_the_effective_weight():
    _, ours, x = twins("conv1d", seed=18)
    ours.eval()
    effective = ours.weight.detach().clone()
    y = ours(x)
    torch.nn.utils.parametrize.remove_parametrizations(ours, "weight")
    assert type(ours) is nn.Conv1d
    assert torch.equal(ours.weight, effective)
    assert torch.equal(ours(x), y)
