"""spectral_norm(method="power" | "fft" | "gram"): the true operator norm, checked by the oracle."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from torch import nn
from torch.nn.utils import parametrizations as torch_param

import paranorm as pn
from _layers import layers
from paranorm import ParanormError


def oracle(m: nn.Module, shape: tuple[int, ...]) -> float:
    return float(pn.sigma(m, "svd", input_shape=shape))


@settings(max_examples=25, deadline=None)
@given(layers())
def test_gram_and_fft_make_the_layer_1_lipschitz(case):
    m, shape = case
    for method in ("gram", "fft"):
        layer = pn.spectral_norm(copy.deepcopy(m), method=method, input_shape=shape)
        assert oracle(layer, shape) <= 1 + 1e-9, method


def test_gram_holds_at_every_input_size():
    torch.manual_seed(0)
    conv = pn.spectral_norm(nn.Conv2d(3, 4, 3, padding=1).double(), method="gram")
    for size in (3, 5, 9):
        assert oracle(conv, (3, size, size)) <= 1 + 1e-9


def test_fft_is_exact_for_circular_padding():
    torch.manual_seed(0)
    conv = pn.spectral_norm(
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular").double(), method="fft", input_shape=(3, 6, 6)
    )
    assert oracle(conv, (3, 6, 6)) == pytest.approx(1.0, abs=1e-10)


def test_reshape_is_not_1_lipschitz_but_power_is():
    # The point of the issue: torch's reshaped-kernel normalization leaves sigma well above 1.
    torch.manual_seed(0)
    shape = (4, 8, 8)
    ref = nn.Conv2d(4, 4, 3, padding=1).double()
    reshape = pn.spectral_norm(copy.deepcopy(ref), n_power_iterations=50)
    assert oracle(reshape, shape) > 1.2
    power = pn.spectral_norm(copy.deepcopy(ref), method="power", input_shape=shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    for _ in range(30):
        power(x)
    assert oracle(power, shape) == pytest.approx(1.0, abs=1e-4)
    assert oracle(power, shape) >= 1 - 1e-12  # sigma is a lower estimate: W / sigma_low >= 1


def test_power_learns_the_input_shape_from_the_forward():
    torch.manual_seed(0)
    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1).double(), method="power")
    param = conv.parametrizations.weight[0]
    assert param.input_shape is None
    # Before any input: the size-independent bound keeps the layer 1-Lipschitz.
    assert oracle(conv, (2, 7)) <= 1 + 1e-9
    conv(torch.randn(5, 2, 7, dtype=torch.float64))
    conv(torch.randn(2, 11, dtype=torch.float64))  # unbatched input
    keys = set(conv.state_dict())
    assert {"parametrizations.weight.0._x_2x7", "parametrizations.weight.0._x_2x11"} <= keys
    assert param.input_shape == (2, 11)
    assert param._x_2x11.shape == (1, 2, 11)


def test_power_iterates_only_in_training():
    torch.manual_seed(0)
    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3), method="power", input_shape=(2, 9))
    x = conv.parametrizations.weight[0]._x_2x9
    before = x.clone()
    conv.eval()
    conv(torch.randn(1, 2, 9))
    assert torch.equal(x, before)
    conv.train()
    conv(torch.randn(1, 2, 9))
    assert not torch.equal(x, before)
    assert x.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_power_two_forwards_in_one_step_both_backpropagate():
    torch.manual_seed(0)
    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3), method="power", input_shape=(2, 9))
    x = torch.randn(4, 2, 9)
    loss = conv(x).sum() + conv(x).square().sum()
    loss.backward()
    assert conv.parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram"])
def test_soft_normalization_leaves_a_small_layer_unchanged(method):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(0.5 / oracle(conv, (2, 6, 6)) * 0.5)  # sigma well below c = 0.9
    original = conv.weight.detach().clone()
    shape = None if method == "reshape" else (2, 6, 6)
    pn.spectral_norm(conv, method=method, coeff=0.9, input_shape=shape)
    conv(torch.randn(1, 2, 6, 6, dtype=torch.float64))
    assert torch.equal(conv.weight, original)


def test_soft_normalization_shrinks_a_large_layer_to_c():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
    with torch.no_grad():
        conv.weight.mul_(3.0)
    pn.spectral_norm(conv, method="fft", coeff=0.9, input_shape=(2, 6, 6))
    assert oracle(conv, (2, 6, 6)) == pytest.approx(0.9, abs=1e-10)


@pytest.mark.parametrize("method", ["power", "fft", "gram"])
def test_gradcheck_through_the_parametrization(method):
    torch.manual_seed(0)
    conv = pn.spectral_norm(
        nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular").double(), method=method, input_shape=(2, 5)
    ).eval()  # eval: "power" keeps its vector, so the map is a function of the weight

    w0 = conv.parametrizations.weight.original.detach().clone().requires_grad_(True)
    parametrization = conv.parametrizations.weight[0]
    assert torch.autograd.gradcheck(parametrization, (w0,), eps=1e-6, atol=1e-5)


def test_reshape_default_is_torch():
    torch.manual_seed(0)
    ours = pn.spectral_norm(nn.Conv1d(3, 4, 3))
    torch.manual_seed(0)
    theirs = torch_param.spectral_norm(nn.Conv1d(3, 4, 3))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    torch.testing.assert_close(ours.weight, theirs.weight)


def test_state_dict_across_methods():
    torch.manual_seed(0)
    shape = (2, 6)
    power = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method="power", input_shape=shape)
    gram = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method="gram")
    fft = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method="fft", input_shape=shape)
    reshape = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1))
    # The weight means the same thing everywhere: gram <-> fft, and into power (keeps its x).
    fft.load_state_dict(gram.state_dict())
    power.load_state_dict(gram.state_dict())
    torch.testing.assert_close(power.parametrizations.weight.original, gram.parametrizations.weight.original)
    # power's vector into a fresh power layer that has not seen this shape yet: created.
    fresh = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method="power")
    fresh.load_state_dict(power.state_dict())
    torch.testing.assert_close(fresh.parametrizations.weight[0]._x_2x6, power.parametrizations.weight[0]._x_2x6)
    assert fresh.parametrizations.weight[0].input_shape == shape
    # Vectors that mean something else are refused by name.
    with pytest.raises(RuntimeError, match=r"parametrizations\.weight\.0\._x_2x6.*method='gram'"):
        gram.load_state_dict(power.state_dict())
    with pytest.raises(RuntimeError, match=r"parametrizations\.weight\.0\._u.*reshape method"):
        power.load_state_dict(reshape.state_dict())
    with pytest.raises(RuntimeError, match=r"\._u.*Drop those keys"):
        gram.load_state_dict(reshape.state_dict(), strict=False)
    # Dropping them, as the message says, loads the weight.
    state = {k: v for k, v in reshape.state_dict().items() if not k.endswith(("._u", "._v"))}
    gram.load_state_dict(state)
    torch.testing.assert_close(gram.parametrizations.weight.original, reshape.parametrizations.weight.original)


def test_linear_needs_no_input_shape():
    torch.manual_seed(0)
    lin = pn.spectral_norm(nn.Linear(6, 4).double(), method="power")
    assert "parametrizations.weight.0._x_6" in lin.state_dict()
    for _ in range(20):
        lin(torch.randn(3, 6, dtype=torch.float64))
    assert torch.linalg.matrix_norm(lin.weight, ord=2).item() == pytest.approx(1.0, abs=1e-6)
    gram = pn.spectral_norm(nn.Linear(6, 4).double(), method="gram")
    assert torch.linalg.matrix_norm(gram.weight, ord=2).item() <= 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), input_shape=(2, 8)), "input_shape is used by"),
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), method="power", input_shape=(3, 8)), r"^spectral_norm: input_shape must be one sample's shape"),
        (lambda: pn.spectral_norm(nn.Embedding(4, 3), method="gram"), "Embedding is not supported"),
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), "bias", method="fft"), "defined by its 'weight'"),
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), method="gram", iterations=0), "iterations must be a positive int"),
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), method="power", foo=1), "method='power' got unexpected option\\(s\\) foo"),
        (lambda: pn.spectral_norm(nn.Conv1d(2, 2, 3), method="lanczos"), "unknown method 'lanczos'"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ParanormError, match=match):
        call()


def test_failed_call_leaves_the_module_unchanged():
    conv = nn.Conv1d(2, 2, 3)
    with pytest.raises(ParanormError):
        pn.spectral_norm(conv, method="power", input_shape=(5, 8))
    assert not hasattr(conv, "parametrizations")
    assert not conv._forward_pre_hooks


def test_a_given_input_shape_is_fixed():
    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method="power", input_shape=(2, 16))
    conv(torch.randn(1, 2, 9))
    assert conv.parametrizations.weight[0].input_shape == (2, 16)
    assert [k for k in conv.state_dict() if "_x_" in k] == ["parametrizations.weight.0._x_2x16"]


def test_removed_parametrization_stops_watching():
    from torch.nn.utils import parametrize

    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3), method="power")
    parametrize.remove_parametrizations(conv, "weight")
    out = conv(torch.randn(1, 2, 9))  # the stale pre-hook does nothing
    assert out.shape == (1, 3, 7)


@pytest.mark.parametrize("saved_with", ["gram", "fft"])
def test_reshape_loads_a_stateless_methods_checkpoint_and_warms_up(saved_with):
    # "gram"/"fft" store only the weight; reshape keeps its u, v as the iteration's start and
    # warms up on the loaded weight, so its first eval forward is already normalized.
    torch.manual_seed(0)
    src = pn.spectral_norm(nn.Conv2d(3, 4, 3, padding=1), method=saved_with, input_shape=(3, 8, 8))
    with torch.no_grad():
        src.parametrizations.weight.original.mul_(7.0)
    dst = pn.spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    dst.load_state_dict(src.state_dict(), strict=True)
    assert torch.equal(dst.parametrizations.weight.original, src.parametrizations.weight.original)
    reshaped = dst.eval().weight.detach().flatten(1).double()
    assert torch.linalg.matrix_norm(reshaped, ord=2).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("strict", [True, False])
def test_reshape_refuses_the_power_methods_vectors_by_name(strict):
    src = pn.spectral_norm(nn.Conv2d(3, 4, 3, padding=1), method="power", input_shape=(3, 8, 8))
    dst = pn.spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"'parametrizations\.weight\.0\._x_3x8x8': the power method"):
        dst.load_state_dict(src.state_dict(), strict=strict)
    assert sorted(dst.state_dict()) == sorted(before)
