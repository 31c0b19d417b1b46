"""Loading: a paranorm-normalized module accepts every layout of its normalization by itself."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P

import paranorm as pn
from models import MODELS, build, example
from paranorm.checkpoint import CheckpointWarning, convert


def legacy(fn, module, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(module, **kwargs)


def trained(module: nn.Module, x: torch.Tensor) -> nn.Module:
    module.train()
    for _ in range(3):
        module(x)
    return module.eval()


X = torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(0))


def sources(kind: str):
    """The same layer saved by torch's legacy hooks and by torch's parametrizations."""
    torch.manual_seed(0)
    if kind == "weight_norm":
        yield "legacy", legacy(nn.utils.weight_norm, nn.Conv1d(3, 4, 3), dim=1).eval()
        yield "parametrizations", P.weight_norm(nn.Conv1d(3, 4, 3), dim=1).eval()
    else:
        yield "legacy", trained(legacy(nn.utils.spectral_norm, nn.Conv1d(3, 4, 3)), X)
        yield "parametrizations", trained(P.spectral_norm(nn.Conv1d(3, 4, 3)), X)


def target(kind: str) -> nn.Module:
    torch.manual_seed(7)
    layer = nn.Conv1d(3, 4, 3)
    return (pn.weight_norm(layer, dim=1) if kind == "weight_norm" else pn.spectral_norm(layer)).eval()


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_loads_every_layout_of_its_normalization(kind, strict):
    for layout, src in sources(kind):
        model = target(kind)
        result = model.load_state_dict(src.state_dict(), strict=strict)
        assert result.missing_keys == [] and result.unexpected_keys == [], layout
        with torch.no_grad():
            torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)


def test_nested_prefixes_and_input_not_modified():
    src = nn.Sequential(nn.Sequential(legacy(nn.utils.weight_norm, nn.Conv1d(3, 4, 3))), nn.ReLU())
    model = nn.Sequential(nn.Sequential(pn.weight_norm(nn.Conv1d(3, 4, 3))), nn.ReLU())
    state = src.state_dict()
    keys = list(state)
    model.load_state_dict(state)
    assert list(state) == keys  # torch hands hooks a copy; the caller's dict is untouched
    torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: t.clone() for k, t in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor], tensor_keys) -> None:
    after = module.state_dict()
    for key in tensor_keys:
        assert torch.equal(after[key], before[key]), key


WN_KEYS = ("parametrizations.weight.original0", "parametrizations.weight.original1")
SN_KEYS = ("parametrizations.weight.original", "parametrizations.weight.0._u", "parametrizations.weight.0._v")


@pytest.mark.parametrize("strict", [True, False])
def test_plain_weight_into_normalized_layer_names_key_and_command(strict):
    for kind, keys in (("weight_norm", WN_KEYS), ("spectral_norm", SN_KEYS)):
        model = target(kind)
        before = snapshot(model)
        with pytest.raises(RuntimeError) as error:
            model.load_state_dict(nn.Conv1d(3, 4, 3).state_dict(), strict=strict)
        message = str(error.value)
        assert "state_dict key 'weight' is a plain weight" in message
        assert f"paranorm convert CHECKPOINT OUT --to parametrizations --{kind.replace('_', '-')} weight" in message
        assert_unchanged(model, before, keys)


@pytest.mark.parametrize("strict", [True, False])
def test_other_normalizations_keys_are_refused(strict):
    for kind, other, keys in (("weight_norm", "spectral_norm", WN_KEYS), ("spectral_norm", "weight_norm", SN_KEYS)):
        for _layout, src in sources(other):
            model = target(kind)
            before = snapshot(model)
            with pytest.raises(RuntimeError, match=rf"belongs to a {other}.*--to plain"):
                model.load_state_dict(src.state_dict(), strict=strict)
            assert_unchanged(model, before, keys)


def test_two_layouts_at_once_is_refused_and_leaves_the_tensor():
    src = legacy(nn.utils.weight_norm, nn.Conv1d(3, 4, 3))
    both = dict(src.state_dict())
    both.update({k: t for k, t in P.weight_norm(nn.Conv1d(3, 4, 3)).state_dict().items() if "parametrizations" in k})
    model = target("weight_norm")
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="two layouts at once"):
        model.load_state_dict(both, strict=False)
    assert_unchanged(model, before, WN_KEYS)


def test_partial_legacy_keys_honour_strict():
    src = trained(legacy(nn.utils.spectral_norm, nn.Conv1d(3, 4, 3)), X)
    partial = {k: t for k, t in src.state_dict().items() if k != "weight_u"}
    model = target("spectral_norm")
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "parametrizations.weight.0._u"'):
        model.load_state_dict(partial, strict=True)
    model = target("spectral_norm")
    # strict=False loads the keys that are there (torch's legacy hook raised KeyError: #21251).
    result = model.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["parametrizations.weight.0._u"]
    state = model.state_dict()
    assert torch.equal(state["parametrizations.weight.original"], src.weight_orig)
    assert torch.equal(state["parametrizations.weight.0._v"], src.weight_v)
    assert torch.equal(state["parametrizations.weight.0._u"], before["parametrizations.weight.0._u"])
    # Half a weight-norm pair: strict says so by name.
    wn = legacy(nn.utils.weight_norm, nn.Conv1d(3, 4, 3), dim=1).state_dict()
    del wn["weight_v"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "parametrizations.weight.original1"'):
        target("weight_norm").load_state_dict(wn)


def test_version0_legacy_spectral_norm_loads_like_torch():
    src = trained(legacy(nn.utils.spectral_norm, nn.Conv1d(3, 5, 3)), torch.randn(2, 3, 9))
    old = copy.copy(src.state_dict())
    del old["weight_v"]
    old["weight"] = src.weight.detach().clone()
    old._metadata = copy.deepcopy(src.state_dict()._metadata)
    old._metadata[""]["spectral_norm"]["weight.version"] = 0
    ref = legacy(nn.utils.spectral_norm, nn.Conv1d(3, 5, 3))
    ref.load_state_dict(old)
    model = pn.spectral_norm(nn.Conv1d(3, 5, 3)).eval()
    model.load_state_dict(old)
    torch.testing.assert_close(model.parametrizations.weight[0]._v, ref.weight_v)
    x = torch.randn(2, 3, 9)
    torch.testing.assert_close(model(x), ref.eval()(x))


def test_one_dimensional_spectral_norm_drops_legacy_u_v():
    src = trained(legacy(nn.utils.spectral_norm, nn.LayerNorm(4)), torch.randn(3, 4) + 1)
    model = pn.spectral_norm(nn.LayerNorm(4))
    result = model.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(model.parametrizations.weight.original, src.weight_orig)


def test_removed_normalization_hook_is_inert():
    model = target("weight_norm")
    torch.nn.utils.parametrize.remove_parametrizations(model, "weight")
    plain = nn.Conv1d(3, 4, 3).state_dict()
    model.load_state_dict(plain)  # the stale hook must not claim the plain weight
    assert torch.equal(model.weight, plain["weight"])


# ----------------------------------------------------------------------------- real models


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("source", ["legacy", "parametrizations"])
def test_real_models_convert_and_load_into_paranorm_and_back(name, source):
    src = build(name, source)
    x = example(name)
    with torch.no_grad():
        expected = src(x)
    state = src.state_dict()
    for layout in ("legacy", "parametrizations", "plain"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)  # square SN convs: dim read from u, v
            converted = convert(state, to=layout)
        impls = ("plain",) if layout == "plain" else ("paranorm", layout)
        for impl in impls:
            model = build(name, impl, seed=99)
            model.load_state_dict(converted, strict=True)
            with torch.no_grad():
                got = model(x)
            if layout == "plain":
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            else:
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # ... and back: paranorm's own state_dict, converted to each torch layout, loads into torch.
    model = build(name, "paranorm", seed=99)
    model.load_state_dict(state)  # the hooks take torch's layout directly
    for layout in ("legacy", "parametrizations"):
        back = build(name, layout, seed=5)
        back.load_state_dict(convert(model.state_dict(), to=layout), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(back(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["legacy", "parametrizations"])
def test_a_different_dim_is_named(layout):
    torch.manual_seed(0)
    layer = nn.ConvTranspose1d(3, 4, 3)
    if layout == "legacy":
        src = legacy(nn.utils.weight_norm, layer, dim=1)
    else:
        src = P.weight_norm(layer, dim=1)
    model = pn.weight_norm(nn.ConvTranspose1d(3, 4, 3))  # dim=0
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"has shape \(1, 4, 1\), the layer expects \(3, 1, 1\): the layer normalizes with dim=0"):
        model.load_state_dict(src.state_dict())
    assert_unchanged(model, before, WN_KEYS)
    sn_src = trained(P.spectral_norm(nn.ConvTranspose1d(3, 4, 3), dim=0), torch.randn(1, 3, 5))
    sn = pn.spectral_norm(nn.ConvTranspose1d(3, 4, 3))  # default dim=1 for ConvTranspose
    with pytest.raises(RuntimeError, match=r"0\._u' has shape \(3,\), the layer expects \(4,\): the layer normalizes with dim=1"):
        sn.load_state_dict(sn_src.state_dict())


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_meta_model_loads_legacy_keys_with_assign(kind):
    # The Hugging Face pattern: build on the meta device, then load real tensors with assign=True.
    _, src = next(sources(kind))  # the legacy one
    with torch.device("meta"):
        model = target(kind)
    result = model.load_state_dict(src.state_dict(), assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(X), src(X), rtol=0, atol=0)
