"""apply_parametrization_norm and register_norm: EnCodec's helper with keywords and a registry."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_param
from torch.nn.utils import parametrize

import paranorm as pn
from paranorm import ParanormError
from paranorm import _apply as apply_module


@pytest.fixture
def registry():
    """The norm registry, restored after the test so registrations do not leak."""
    saved = dict(apply_module.PARAMETRIZATION_NORMS)
    yield apply_module.PARAMETRIZATION_NORMS
    apply_module.PARAMETRIZATION_NORMS.clear()
    apply_module.PARAMETRIZATION_NORMS.update(saved)


def test_none_returns_the_module_untouched():
    layer = nn.Conv1d(2, 3, 3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    out = pn.apply_parametrization_norm(layer, "none")
    assert out is layer and type(out) is nn.Conv1d
    assert not parametrize.is_parametrized(layer)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    assert pn.apply_parametrization_norm(layer) is layer  # 'none' is the default, as in EnCodec


def test_none_refuses_options():
    layer = nn.Linear(2, 2)
    with pytest.raises(ParanormError, match=r"norm='none' takes no options, got dim for Linear"):
        pn.apply_parametrization_norm(layer, "none", dim=0)
    assert not parametrize.is_parametrized(layer)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_equals_torch_and_gets_its_kwargs(dim):
    torch.manual_seed(0)
    layer = nn.Conv1d(3, 4, 3)
    ours = pn.apply_parametrization_norm(copy.deepcopy(layer), "weight_norm", dim=dim)
    theirs = torch_param.weight_norm(copy.deepcopy(layer), dim=dim)
    assert ours.parametrizations.weight[0].dim == dim
    g_ours, g_theirs = (m.parametrizations.weight.original0 for m in (ours, theirs))
    assert g_ours.shape == g_theirs.shape
    assert torch.equal(ours.weight, theirs.weight)


def test_weight_norm_eps_reaches_the_norm():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0] = 0
    ours = pn.apply_parametrization_norm(layer, "weight_norm", eps=1e-12)
    assert ours.parametrizations.weight[0].eps == 1e-12
    assert torch.equal(ours.weight[0], torch.zeros(3))


def test_spectral_norm_equals_torch_and_gets_its_kwargs():
    torch.manual_seed(1)
    layer = nn.Conv2d(2, 3, 3)
    torch.manual_seed(2)
    ours = pn.apply_parametrization_norm(
        copy.deepcopy(layer), "spectral_norm", n_power_iterations=3, dim=1, eps=1e-6
    )
    torch.manual_seed(2)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer), n_power_iterations=3, dim=1, eps=1e-6)
    p = ours.parametrizations.weight[0]
    assert (p.n_power_iterations, p.dim, p.eps) == (3, 1, 1e-6)
    assert torch.equal(ours.weight, theirs.weight)


def test_spectral_norm_coeff_reaches_the_norm():
    ours = pn.apply_parametrization_norm(nn.Linear(4, 4), "spectral_norm", coeff=0.5)
    assert ours.parametrizations.weight[0].coeff == 0.5


def test_the_norms_own_errors_come_through():
    with pytest.raises(ParanormError, match="n_power_iterations must be >= 1"):
        pn.apply_parametrization_norm(nn.Linear(2, 2), "spectral_norm", n_power_iterations=0)


@pytest.mark.parametrize("name", ["weightnorm", "Weight_Norm", "", "time_layer_norm", "layer_norm"])
def test_unknown_name_lists_the_valid_ones(name):
    layer = nn.Conv1d(2, 2, 1)
    with pytest.raises(ParanormError) as info:
        pn.apply_parametrization_norm(layer, name)
    assert isinstance(info.value, ValueError)  # EnCodec callers catching ValueError keep working
    message = str(info.value)
    assert repr(name) in message and "Conv1d" in message
    for valid in ("'none'", "'weight_norm'", "'spectral_norm'"):
        assert valid in message
    assert type(layer) is nn.Conv1d and not parametrize.is_parametrized(layer)


def test_layer_norm_names_point_to_the_norm_layers():
    with pytest.raises(ParanormError, match=r"paranorm\.nn\.NormConv1d"):
        pn.apply_parametrization_norm(nn.Conv1d(2, 2, 1), "time_group_norm")


def test_non_string_name_is_an_error():
    with pytest.raises(ParanormError, match="unknown norm None"):
        pn.apply_parametrization_norm(nn.Linear(2, 2), None)  # type: ignore[arg-type]


def test_register_norm_adds_one(registry):
    calls = []

    def scale_norm(module: nn.Module, *, factor: float = 1.0) -> nn.Module:
        calls.append(factor)
        with torch.no_grad():
            module.weight.mul_(factor)
        return module

    pn.register_norm("scale", scale_norm)
    layer = nn.Linear(2, 2)
    w = layer.weight.detach().clone()
    assert pn.apply_parametrization_norm(layer, "scale", factor=2.0) is layer
    assert calls == [2.0]
    assert torch.equal(layer.weight, 2 * w)
    with pytest.raises(ParanormError, match="'scale'"):
        pn.apply_parametrization_norm(layer, "nope")


def test_register_norm_refuses_to_overwrite_unless_asked(registry):
    message = r"'weight_norm' is already registered; pass overwrite=True"
    with pytest.raises(ParanormError, match=message):
        pn.register_norm("weight_norm", lambda m, **kw: m)
    assert registry["weight_norm"] is pn.weight_norm

    def mine(module: nn.Module, **kwargs) -> nn.Module:
        return pn.weight_norm(module, dim=None, **kwargs)

    pn.register_norm("weight_norm", mine, overwrite=True)
    layer = pn.apply_parametrization_norm(nn.Linear(3, 2), "weight_norm")
    assert layer.parametrizations.weight.original0.shape == torch.Size([])


def test_register_norm_refuses_a_non_callable(registry):
    with pytest.raises(ParanormError, match="must be callable"):
        pn.register_norm("broken", 42)  # type: ignore[arg-type]
    assert "broken" not in registry


@pytest.mark.parametrize("name", [None, 3, ""])
def test_register_norm_refuses_a_name_that_is_not_a_string(registry, name):
    with pytest.raises(ParanormError, match="name must be a non-empty str"):
        pn.register_norm(name, pn.weight_norm)  # type: ignore[arg-type]
    assert name not in registry


def test_keywords_the_norm_does_not_take_name_the_ones_it_does():
    layer = nn.Linear(3, 4)
    with pytest.raises(ParanormError) as info:
        pn.apply_parametrization_norm(layer, "weight_norm", n_power_iterations=2)
    message = str(info.value)
    assert message.startswith("apply_parametrization_norm: bad norm_kwargs {'n_power_iterations': 2}")
    assert "weight_norm takes name, dim, eps" in message
    assert not hasattr(layer, "parametrizations")
