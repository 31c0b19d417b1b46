"""Pins every private-torch access of paranorm (paranorm._torch_compat) against the installed torch.

When a new torch release lands, this file says which of them moved.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn.utils import parametrizations, parametrize

from paranorm import _torch_compat as compat


def test_torchs_parametrization_classes():
    assert type(parametrizations.weight_norm(nn.Linear(2, 3)).parametrizations.weight[0]) is compat.TorchWeightNorm
    assert type(parametrizations.spectral_norm(nn.Linear(2, 3)).parametrizations.weight[0]) is compat.TorchSpectralNorm


def test_base_classes():
    assert all(issubclass(c, compat.ConvNd) for c in (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d))
    assert not issubclass(nn.Linear, compat.ConvNd)
    assert all(issubclass(c, compat.BatchNormBase) for c in (nn.BatchNorm1d, nn.InstanceNorm2d))


def test_weight_norm_kernel_is_g_v_over_norm_and_torchs():
    torch.manual_seed(0)
    v, g = torch.randn(4, 3, 2, dtype=torch.float64), torch.rand(4, 1, 1, dtype=torch.float64)
    expected = g * v / v.flatten(1).norm(dim=1).reshape(4, 1, 1)
    torch.testing.assert_close(compat.weight_norm_kernel(v, g, 0), expected)
    whole = torch.tensor(2.0, dtype=torch.float64)
    torch.testing.assert_close(compat.weight_norm_kernel(v, whole, -1), 2 * v / v.norm())
    layer = parametrizations.weight_norm(nn.Linear(5, 4))
    p = layer.parametrizations.weight
    assert torch.equal(compat.weight_norm_kernel(p.original1, p.original0, 0), layer.weight)


def test_module_internals():
    legacy = torch.nn.utils.weight_norm(nn.Linear(2, 3))
    assert [type(h).__name__ for h in compat.forward_pre_hooks(legacy)] == ["WeightNorm"]
    layer = nn.BatchNorm1d(3)
    assert compat.own_tensor(layer, "weight") is layer.weight
    assert compat.own_tensor(layer, "running_mean") is layer.running_mean
    assert compat.own_tensor(parametrizations.weight_norm(nn.Linear(2, 3)), "weight") is None
    buffer = compat.pop_buffer(layer, "running_mean")
    assert buffer is not None and "running_mean" not in dict(layer.named_buffers())
    name = "weight"
    assert compat.closure_value(lambda: name, "name") == "weight"
    assert compat.closure_value(len, "name") is None


def test_drop_load_state_dict_pre_hooks_finds_torchs_leftover_compat_hook():
    layer = parametrizations.weight_norm(nn.Linear(2, 3))
    parametrize.remove_parametrizations(layer, "weight")
    names = []
    compat.drop_load_state_dict_pre_hooks(layer, lambda hook: names.append(getattr(hook, "__name__", "")) or True)
    assert "_weight_norm_compat_hook" in names
    layer.load_state_dict(nn.Linear(2, 3).state_dict())  # nothing left that asks for g, v


def test_conv_transpose_output_padding():
    conv = nn.ConvTranspose1d(2, 3, 4, stride=3)
    x = torch.randn(1, 2, 5)
    for size in (16, 17, 18):
        padding = compat.conv_transpose_output_padding(conv, x, [size], 1)
        assert conv(x, output_size=[size]).shape[-1] == size
        assert (5 - 1) * 3 + 4 + padding[0] == size


@pytest.mark.filterwarnings("ignore:`torch.jit.(trace|script)` is deprecated:DeprecationWarning")
def test_execution_state():
    assert not compat.parametrize_cache_active()
    with parametrize.cached():
        assert compat.parametrize_cache_active()
    assert not compat.tracing() and not compat.reference_graph_needed()
    seen: list[tuple[bool, bool]] = []

    def probe(x):
        seen.append((compat.tracing(), compat.reference_graph_needed()))
        return x * 2

    def states(run) -> set[tuple[bool, bool]]:
        seen.clear()
        run()
        return set(seen)

    assert states(lambda: torch.jit.trace(probe, torch.ones(2), check_trace=False)) == {(True, True)}
    assert states(lambda: torch.func.grad(lambda x: probe(x).sum())(torch.ones(2))) == {(False, True)}
    assert states(lambda: torch.func.vmap(probe)(torch.ones(3, 2))) == {(False, True)}

    def dual() -> None:
        with forward_ad.dual_level():
            probe(forward_ad.make_dual(torch.ones(2), torch.ones(2)))

    assert states(dual) == {(False, True)}
    assert states(lambda: probe(torch.ones(2))) == {(False, False)}


def test_set_parametrized_forward_lives_on_the_generated_class():
    plain = nn.Linear(2, 3)
    assert not compat.set_parametrized_forward(plain, lambda self, x: x)
    layer = parametrizations.weight_norm(nn.Linear(2, 3))
    assert compat.set_parametrized_forward(layer, lambda self, x: x * 0)
    assert not compat.set_parametrized_forward(layer, lambda self, x: x)  # already has one
    assert torch.equal(layer(torch.ones(1, 2)), torch.zeros(1, 2))
    parametrize.remove_parametrizations(layer, "weight")
    assert type(layer) is nn.Linear and layer(torch.ones(1, 2)).abs().sum() > 0


def test_key_cache_by_instance_gives_a_deep_copy_its_own_cached_weight():
    layer = parametrizations.weight_norm(nn.Linear(2, 3))
    compat.key_cache_by_instance(layer, "weight")
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.parametrizations.weight.original0.mul_(2)
    with parametrize.cached():
        assert not torch.equal(layer.weight, twin.weight)
        assert layer.weight is layer.weight  # cached


def test_give_private_class_separates_a_copy_from_its_original():
    layer = parametrizations.weight_norm(nn.Linear(2, 3))
    twin = copy.deepcopy(layer)
    assert type(twin) is type(layer)  # torch shares the generated class
    compat.give_private_class(twin)
    parametrize.remove_parametrizations(twin, "weight")
    assert isinstance(type(layer).__dict__.get("weight"), property)  # the original keeps it
    assert layer.weight.shape == (3, 2)
