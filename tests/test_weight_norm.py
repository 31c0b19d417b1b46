"""paranorm.weight_norm against torch.nn.utils.parametrizations.weight_norm and float64 math."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations as torch_param

import paranorm as pn
from _layers import layers_and_dims

LAYERS = {
    "linear": lambda: nn.Linear(5, 7),
    "conv1d": lambda: nn.Conv1d(3, 4, 3),
    "conv2d": lambda: nn.Conv2d(2, 3, (2, 3)),
    "convtr1d": lambda: nn.ConvTranspose1d(3, 4, 3),
    "convtr2d": lambda: nn.ConvTranspose2d(2, 3, 2, groups=1),
}
INPUTS = {
    "linear": (2, 5),
    "conv1d": (2, 3, 9),
    "conv2d": (2, 2, 5, 6),
    "convtr1d": (2, 3, 6),
    "convtr2d": (2, 2, 4, 4),
}


def twins(kind: str, dim: int | None, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The same freshly initialized layer, under torch's weight_norm and under paranorm's."""
    torch.manual_seed(seed)
    layer = LAYERS[kind]()
    theirs = torch_param.weight_norm(copy.deepcopy(layer), dim=dim)
    ours = pn.weight_norm(copy.deepcopy(layer), dim=dim)
    return theirs, ours


def g_v(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    p = module.parametrizations.weight
    return p.original0, p.original1


def test_signature_matches_torch():
    theirs = inspect.signature(torch_param.weight_norm).parameters
    ours = inspect.signature(pn.weight_norm).parameters
    for name, param in theirs.items():
        assert ours[name].default == param.default
        assert ours[name].kind == param.kind
    assert ours["eps"].kind is inspect.Parameter.KEYWORD_ONLY and ours["eps"].default == 0


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("dim", [0, 1, None])
def test_forward_and_gradients_bit_exact(kind, dim):
    theirs, ours = twins(kind, dim)
    x = torch.randn(INPUTS[kind])
    y_theirs, y_ours = theirs(x), ours(x)
    assert torch.equal(y_theirs, y_ours)
    y_theirs.square().sum().backward()
    y_ours.square().sum().backward()
    for a, b in zip(theirs.parameters(), ours.parameters(), strict=True):
        assert a.shape == b.shape
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("dim", [0, None])
def test_state_dict_keys_and_shapes_match_torch(kind, dim):
    theirs, ours = twins(kind, dim)
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_theirs) == list(sd_ours)
    assert "parametrizations.weight.original0" in sd_ours
    for key in sd_theirs:
        assert sd_theirs[key].shape == sd_ours[key].shape
        assert torch.equal(sd_theirs[key], sd_ours[key])


@pytest.mark.parametrize("dim", [0, None])
def test_load_state_dict_torch_to_paranorm_and_back(dim):
    theirs, _ = twins("conv1d", dim, seed=1)
    _, ours = twins("conv1d", dim, seed=2)
    x = torch.randn(INPUTS["conv1d"])
    assert not torch.equal(theirs(x), ours(x))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert torch.equal(theirs(x), ours(x))

    theirs2, _ = twins("conv1d", dim, seed=3)
    _, ours2 = twins("conv1d", dim, seed=4)
    theirs2.load_state_dict(ours2.state_dict(), strict=True)
    assert torch.equal(theirs2(x), ours2(x))


@pytest.mark.parametrize("dim", [0, 1])
def test_loads_legacy_weight_g_weight_v(dim):
    torch.manual_seed(5)
    legacy = torch.nn.utils.weight_norm(nn.Conv1d(3, 4, 3), dim=dim)
    sd = legacy.state_dict()
    assert {"weight_g", "weight_v", "bias"} == set(sd)
    torch.manual_seed(6)
    ours = pn.weight_norm(nn.Conv1d(3, 4, 3), dim=dim)
    ours.load_state_dict(sd, strict=False)
    g, v = g_v(ours)
    assert torch.equal(g, legacy.weight_g) and torch.equal(v, legacy.weight_v)
    x = torch.randn(2, 3, 8)
    assert torch.equal(ours(x), legacy(x))


def test_legacy_spectral_weight_v_is_not_taken_for_weight_norm():
    # Legacy spectral norm writes weight_v (a singular vector) but no weight_g: it must never
    # be read as weight norm's direction v.
    sd = torch.nn.utils.spectral_norm(nn.Linear(3, 4)).state_dict()
    ours = pn.weight_norm(nn.Linear(3, 4))
    g, v = (t.detach().clone() for t in g_v(ours))
    with pytest.raises(RuntimeError, match="spectral_norm"):
        ours.load_state_dict(sd, strict=False)
    assert torch.equal(g_v(ours)[0], g) and torch.equal(g_v(ours)[1], v)


def test_preserves_the_function_and_eval_equals_train():
    torch.manual_seed(7)
    plain = nn.Conv2d(2, 3, 3)
    x = torch.randn(1, 2, 6, 6)
    expected = plain(x)
    ours = pn.weight_norm(copy.deepcopy(plain))
    torch.testing.assert_close(ours(x), expected)
    ours.eval()
    torch.testing.assert_close(ours(x), expected)


def test_deepcopy_is_independent_and_keeps_the_legacy_loader():
    _, ours = twins("conv1d", 0)
    clone = copy.deepcopy(ours)
    x = torch.randn(INPUTS["conv1d"])
    assert torch.equal(clone(x), ours(x))
    with torch.no_grad():
        g_v(clone)[0].mul_(2)
    assert not torch.equal(clone(x), ours(x))
    legacy = torch.nn.utils.weight_norm(nn.Conv1d(3, 4, 3))
    clone.load_state_dict(legacy.state_dict(), strict=True)
    assert torch.equal(clone(x), legacy(x))
    assert not torch.equal(ours(x), legacy(x))


@pytest.mark.parametrize(("dim", "positive"), [(-2, 2), (-3, 1), (-4, 0), (2, 2)])
def test_negative_dims_count_from_the_end(dim, positive):
    torch.manual_seed(8)
    layer = nn.Conv2d(2, 3, 3)
    ours = pn.weight_norm(copy.deepcopy(layer), dim=dim)
    theirs = torch_param.weight_norm(copy.deepcopy(layer), dim=positive)
    assert ours.parametrizations.weight[0].dim == positive
    assert torch.equal(ours.weight, theirs.weight)
    assert g_v(ours)[0].shape == g_v(theirs)[0].shape


def test_dim_none_is_one_norm_for_the_whole_tensor():
    torch.manual_seed(9)
    ours = pn.weight_norm(nn.Linear(4, 3), dim=None)
    g, v = g_v(ours)
    assert g.shape == torch.Size([])
    v64 = v.detach().double()
    expected = g.detach().double() * v64 / v64.norm()
    torch.testing.assert_close(ours.weight.detach().double(), expected, rtol=1e-6, atol=0)


def test_eps_zero_slice_gives_zeros_and_finite_gradients():
    torch.manual_seed(10)
    layer = nn.Linear(3, 4)
    with torch.no_grad():
        layer.weight[1] = 0
    ours = pn.weight_norm(layer, eps=1e-12)
    y = ours(torch.randn(5, 3))
    assert torch.equal(ours.weight[1], torch.zeros(3))
    y.square().sum().backward()
    g, v = g_v(ours)
    assert torch.isfinite(g.grad).all() and torch.isfinite(v.grad).all()
    assert torch.isfinite(ours.bias.grad).all()


@pytest.mark.parametrize("dim", [0, 1, None])
def test_eps_positive_matches_torch_on_nonzero_weights(dim):
    torch.manual_seed(11)
    layer = nn.Conv1d(3, 4, 3)
    ours = pn.weight_norm(copy.deepcopy(layer), dim=dim, eps=1e-12)
    theirs = torch_param.weight_norm(copy.deepcopy(layer), dim=dim)
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_low_and_high_precision_against_float64(dtype, eps, dim):
    torch.manual_seed(12)
    layer = nn.Conv1d(4, 6, 3).to(dtype)
    ours = pn.weight_norm(layer, dim=dim, eps=eps)
    g, v = g_v(ours)
    w = ours.weight
    assert w.dtype == dtype and g.dtype == dtype
    g64, v64 = g.detach().double(), v.detach().double()
    dims = [d for d in range(3) if d != dim] if dim is not None else [0, 1, 2]
    expected = g64 * v64 / torch.linalg.vector_norm(v64, dim=dims, keepdim=dim is not None)
    tol = {torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(w.detach().double(), expected, rtol=tol, atol=tol * 1e-2)
    if eps == 0:  # torch's own kernel, in every dtype
        theirs = torch_param.weight_norm(nn.Conv1d(4, 6, 3).to(dtype), dim=dim)
        theirs.load_state_dict(ours.state_dict())
        assert torch.equal(theirs.weight, w)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_gradcheck_float64(eps, dim):
    torch.manual_seed(13)
    ours = pn.weight_norm(nn.Conv1d(3, 4, 2).double(), dim=dim, eps=eps)
    parametrization = ours.parametrizations.weight[0]
    g, v = (t.detach().clone().requires_grad_() for t in g_v(ours))
    assert torch.autograd.gradcheck(parametrization, (g, v))


def test_gradcheck_float64_through_the_layer():
    torch.manual_seed(14)
    ours = pn.weight_norm(nn.Linear(3, 2).double())
    g, v = g_v(ours)
    x = torch.randn(4, 3, dtype=torch.double)

    def f(g_, v_):
        w = ours.parametrizations.weight[0](g_, v_)
        return torch.nn.functional.linear(x, w, ours.bias)

    inputs = tuple(t.detach().clone().requires_grad_() for t in (g, v))
    assert torch.autograd.gradcheck(f, inputs)


# --- properties over shapes, dims and layer types -------------------------------------------

@settings(max_examples=25, deadline=None)
@given(layers_and_dims(allow_minus_one=False), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 1e-12]))
def test_property_parity_with_torch_and_slice_norms_equal_g(layer_dim, seed, eps):
    layer, dim = layer_dim
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.weight.normal_()
    ndim = layer.weight.ndim
    ours = pn.weight_norm(copy.deepcopy(layer), dim=dim, eps=eps)
    theirs = torch_param.weight_norm(copy.deepcopy(layer), dim=None if dim is None else dim % ndim)
    if eps == 0:  # the same kernel: bit for bit
        assert torch.equal(ours.weight, theirs.weight)
    else:
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
    g = g_v(ours)[0]
    with torch.no_grad():
        g.uniform_(0.5, 2.0)  # the property must hold for any g, not just the initial ||w||
    w = ours.weight.detach().double()
    if dim is None:
        norms = w.norm()
    else:
        d = dim % ndim
        norms = torch.linalg.vector_norm(w, dim=[i for i in range(ndim) if i != d], keepdim=True)
    torch.testing.assert_close(norms, g.detach().double().reshape(norms.shape), rtol=1e-5, atol=0)


def test_legacy_keys_load_under_a_prefix():
    torch.manual_seed(15)
    legacy = nn.Sequential(nn.Linear(3, 3), torch.nn.utils.weight_norm(nn.Linear(3, 2)))
    ours = nn.Sequential(nn.Linear(3, 3), pn.weight_norm(nn.Linear(3, 2)))
    assert "1.weight_g" in legacy.state_dict()
    ours.load_state_dict(legacy.state_dict(), strict=True)
    x = torch.randn(4, 3)
    assert torch.equal(ours(x), legacy(x))


def test_assigning_the_weight_goes_through_right_inverse():
    torch.manual_seed(16)
    ours = pn.weight_norm(nn.Linear(3, 4))
    target = torch.randn(4, 3)
    ours.weight = target
    g, v = g_v(ours)
    torch.testing.assert_close(ours.weight, target)
    torch.testing.assert_close(g, target.norm(dim=1, keepdim=True))
    assert torch.equal(v, target)


def test_eps_positive_gradients_match_torch():
    torch.manual_seed(17)
    layer = nn.Conv1d(3, 4, 3)
    ours = pn.weight_norm(copy.deepcopy(layer), eps=1e-12)
    theirs = torch_param.weight_norm(copy.deepcopy(layer))
    x = torch.randn(2, 3, 7)
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    for a, b in zip(theirs.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


def test_torch_remove_parametrizations_bakes_the_effective_weight():
    _, ours = twins("conv1d", 0)
    with torch.no_grad():
        g_v(ours)[0].mul_(0.5)
    effective = ours.weight.detach().clone()
    torch.nn.utils.parametrize.remove_parametrizations(ours, "weight")
    assert type(ours) is nn.Conv1d
    assert torch.equal(ours.weight, effective)
