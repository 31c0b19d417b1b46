"""fold/remove/is_normalized/normalizations over paranorm's, torch's and torch's legacy norms."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations as tp
from torch.nn.utils import parametrize

import paranorm as pn
from paranorm import (
    NormalizationInfo,
    NotNormalizedError,
    ParanormError,
    fold,
    is_normalized,
    normalizations,
    remove,
)
from paranorm import nn as pnn


def legacy_wn(module: nn.Module, **kwargs) -> nn.Module:
    with pytest.warns(FutureWarning, match="torch.nn.utils.weight_norm` is deprecated"):
        return torch.nn.utils.weight_norm(module, **kwargs)


def legacy_sn(module: nn.Module, **kwargs) -> nn.Module:
    return torch.nn.utils.spectral_norm(module, **kwargs)


class Mixed(nn.Module):
    """Every implementation x both norms, on Linear, Conv1d and ConvTranspose1d, nested."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            pnn.NormConv1d(2, 4, 3, norm="weight_norm"),  # paranorm wn
            nn.ELU(),
            tp.weight_norm(nn.Conv1d(4, 6, 3, padding=1)),  # torch wn
            nn.ELU(),
            legacy_sn(nn.Conv1d(6, 6, 1)),  # legacy sn
            pnn.NormConv1d(6, 6, 1, norm="time_group_norm"),  # not a parametrization: stays
        )
        self.decoder = nn.Sequential(
            pnn.NormConvTranspose1d(6, 4, 4, stride=2, norm="spectral_norm"),  # paranorm sn, dim 1
            nn.Tanh(),
            legacy_wn(nn.ConvTranspose1d(4, 3, 3)),  # legacy wn
            tp.spectral_norm(nn.ConvTranspose1d(3, 3, 3)),  # torch sn, dim 1
        )
        self.head = nn.Sequential(
            pn.weight_norm(nn.Linear(3, 5), dim=None),
            tp.weight_norm(nn.Linear(5, 5), dim=None),
            legacy_wn(nn.Linear(5, 4), dim=None),
            legacy_sn(nn.Linear(4, 4)),
            pn.spectral_norm(nn.Linear(4, 3), n_power_iterations=2),
            tp.spectral_norm(nn.Linear(3, 2)),
            nn.Linear(2, 2),  # plain
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)).mean(dim=-1))


EXPECTED = [
    ("encoder.0.conv", "weight_norm", "paranorm", 0, None, None),
    ("encoder.2", "weight_norm", "torch", 0, None, None),
    ("encoder.4", "spectral_norm", "torch-legacy", 0, "reshape", 1),
    ("decoder.0.convtr", "spectral_norm", "paranorm", 1, "reshape", 1),
    ("decoder.2", "weight_norm", "torch-legacy", 0, None, None),
    ("decoder.3", "spectral_norm", "torch", 1, "reshape", 1),
    ("head.0", "weight_norm", "paranorm", None, None, None),
    ("head.1", "weight_norm", "torch", None, None, None),
    ("head.2", "weight_norm", "torch-legacy", None, None, None),
    ("head.3", "spectral_norm", "torch-legacy", 0, "reshape", 1),
    ("head.4", "spectral_norm", "paranorm", 0, "reshape", 2),
    ("head.5", "spectral_norm", "torch", 0, "reshape", 1),
]


def trained_mixed(seed: int = 0) -> tuple[Mixed, torch.Tensor]:
    """A Mixed model after a few signed-gradient steps, so g, v, W and u, v have all moved.

    (A hand-written step: torch.optim's first step costs seconds of imports.)
    """
    torch.manual_seed(seed)
    model = Mixed()
    x = torch.randn(3, 2, 12)
    for _ in range(3):
        model.zero_grad()
        model(x).square().mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 1e-2 * p.grad.sign()
    return model, x


def test_normalizations_lists_every_norm_with_its_settings():
    model, _ = trained_mixed()
    infos = normalizations(model)
    assert [
        (i.path, i.kind, i.implementation, i.dim, i.method, i.n_power_iterations) for i in infos
    ] == EXPECTED
    assert {i.name for i in infos} == {"weight"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].path = "x"  # type: ignore[misc]
    assert normalizations(nn.Linear(2, 2)) == []


def test_fold_keeps_eval_outputs_exactly_and_leaves_plain_keys():
    model, x = trained_mixed()
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert fold(model) is model
    with torch.no_grad():
        after = model(x)
    assert torch.equal(after, before)

    assert normalizations(model) == []
    for name, module in model.named_modules():
        assert not parametrize.is_parametrized(module), name
        assert not module._forward_pre_hooks, name
        assert not module._load_state_dict_pre_hooks, name  # paranorm's, torch's and legacy ones
    keys = list(model.state_dict())
    assert all(k.rsplit(".", 1)[1] in {"weight", "bias"} for k in keys), keys
    assert "encoder.5.norm.weight" in keys  # the GroupNorm of a module norm is untouched
    assert isinstance(model.encoder[5].norm, nn.GroupNorm)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())

    # Independent check: the same architecture without any normalization loads it strictly.
    plain = copy.deepcopy(model)
    torch.manual_seed(9)
    for module in plain.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    plain.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(plain(x), before)


def test_folded_model_deepcopies_and_pickles_parametrized_does_not():
    model, x = trained_mixed()
    model.eval()
    with pytest.raises(RuntimeError, match="parametriz"):
        pickle.dumps(model)
    with torch.no_grad():
        before = model(x)
    fold(model)
    with torch.no_grad():
        assert torch.equal(pickle.loads(pickle.dumps(model))(x), before)
        assert torch.equal(copy.deepcopy(model)(x), before)


def test_fold_in_training_mode_runs_no_power_step():
    torch.manual_seed(0)
    model = nn.Sequential(
        pn.spectral_norm(nn.Linear(5, 6)),
        tp.spectral_norm(nn.Conv1d(6, 4, 3)),
        legacy_sn(nn.ConvTranspose1d(4, 3, 3)),
    ).train()
    x = torch.randn(2, 5)
    model[0](x)  # a training forward: u, v move; the cached weights are now stale
    vectors = [
        model[0].parametrizations.weight[0]._u,
        model[0].parametrizations.weight[0]._v,
        model[1].parametrizations.weight[0]._u,
        model[1].parametrizations.weight[0]._v,
        model[2].weight_u,
        model[2].weight_v,
    ]
    saved = [v.clone() for v in vectors]
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = [reference[0].weight, reference[1].weight]
        reference[2](torch.randn(1, 4, 5))  # legacy: the pre-hook computes the eval weight
        expected.append(reference[2].weight)
    fold(model)
    assert model.training and all(m.training for m in model)
    for vector, old in zip(vectors, saved, strict=True):
        assert torch.equal(vector, old)
    for layer, weight in zip(model, expected, strict=True):
        assert torch.equal(layer.weight, weight)


@pytest.mark.parametrize(
    "normalize",
    [
        lambda m: pn.weight_norm(m),
        lambda m: tp.weight_norm(m),
        lambda m: legacy_wn(m),
        lambda m: pn.spectral_norm(m),
        lambda m: tp.spectral_norm(m),
        lambda m: legacy_sn(m),
    ],
    ids=["pn-wn", "torch-wn", "legacy-wn", "pn-sn", "torch-sn", "legacy-sn"],
)
@pytest.mark.parametrize("frozen", [False, True])
def test_remove_keeps_dtype_and_requires_grad(normalize, frozen):
    torch.manual_seed(0)
    layer = normalize(nn.Conv1d(3, 4, 3, dtype=torch.float64)).eval()
    for p in layer.parameters():
        p.requires_grad_(not frozen)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
    assert is_normalized(layer)
    remove(layer, "weight")
    assert not is_normalized(layer)
    assert isinstance(layer.weight, nn.Parameter) and "weight" in dict(layer.named_parameters())
    assert layer.weight.dtype == torch.float64 and layer.weight.requires_grad is not frozen
    assert type(layer) is nn.Conv1d
    assert sorted(layer.state_dict()) == ["bias", "weight"]
    with torch.no_grad():
        assert torch.equal(layer(x), before)
    assert pickle.loads(pickle.dumps(layer)).weight.dtype == torch.float64


def test_weight_norm_with_only_g_frozen_stays_trainable_and_fold_works_under_no_grad():
    layer = tp.weight_norm(nn.Linear(3, 4))
    layer.parametrizations.weight.original0.requires_grad_(False)
    with torch.no_grad():
        remove(layer)
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.requires_grad


def test_legacy_spectral_norm_removed_module_loads_a_plain_state_dict():
    """torch's own remove_spectral_norm leaves a load pre-hook that then demands weight_orig."""
    torch.manual_seed(0)
    layer = remove(legacy_sn(nn.Linear(3, 4)))
    fresh = nn.Linear(3, 4)
    layer.load_state_dict(fresh.state_dict(), strict=True)
    assert torch.equal(layer.weight, fresh.weight)


def test_remove_one_tensor_leaves_the_others():
    torch.manual_seed(0)
    layer = pn.spectral_norm(pn.weight_norm(nn.Linear(3, 4)), "bias")
    assert [(i.name, i.kind) for i in normalizations(layer)] == [
        ("weight", "weight_norm"),
        ("bias", "spectral_norm"),
    ]
    with torch.no_grad():
        bias = layer.bias.clone()
    remove(layer, "weight")
    assert not is_normalized(layer, "weight") and is_normalized(layer, "bias")
    assert [i.name for i in normalizations(layer)] == ["bias"]
    assert torch.equal(layer.bias, bias)
    # The bias's legacy-key hook and its range check are still there; the weight's are gone.
    assert len(layer._load_state_dict_pre_hooks) == 2
    assert [name for name, _ in layer.__dict__["_paranorm_load_checks"]] == ["bias"]


class Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def test_chain_with_another_parametrization_is_baked_whole():
    torch.manual_seed(0)
    chained = pn.spectral_norm(nn.Linear(4, 4))
    parametrize.register_parametrization(chained, "weight", Double())
    torch_chained = tp.weight_norm(nn.Linear(4, 4))
    parametrize.register_parametrization(torch_chained, "weight", Double())
    only_other = parametrize.register_parametrization(nn.Linear(4, 3), "weight", Double())
    model = nn.Sequential(chained, torch_chained, only_other).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        weights = [m.weight.clone() for m in model]
        before = model(x)
    fold(model)
    assert not parametrize.is_parametrized(chained) and not parametrize.is_parametrized(
        torch_chained
    )
    assert torch.equal(chained.weight, weights[0]) and torch.equal(torch_chained.weight, weights[1])
    assert parametrize.is_parametrized(only_other, "weight")  # not a normalization: left alone
    with torch.no_grad():
        assert torch.equal(model(x), before)
    with pytest.raises(
        NotNormalizedError, match=r"Its parametrizations are none of those.*remove_parametrizations"
    ):
        remove(only_other)


def test_shared_module_is_folded_once():
    torch.manual_seed(0)
    shared = pn.weight_norm(nn.Linear(3, 3))
    model = nn.Sequential(shared, nn.Tanh(), shared).eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        before = model(x)
    fold(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert model[0] is model[2] and not is_normalized(model[0])


def test_public_exports():
    for name in ("fold", "remove", "is_normalized", "normalizations", "NormalizationInfo"):
        assert name in pn.__all__
    assert callable(pn.fold) and callable(pn.remove)
    assert pn.normalizations(pn.weight_norm(nn.Linear(2, 2)))[0].kind == "weight_norm"
    assert NormalizationInfo.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_errors_name_the_module_and_say_the_fix():
    layer = nn.Linear(3, 4)
    with pytest.raises(
        NotNormalizedError,
        match=r"remove: Linear.weight carries no weight or spectral normalization.*paranorm.normalizations\(model\)",
    ):
        remove(layer)
    assert issubclass(NotNormalizedError, ParanormError)
    with pytest.raises(
        ParanormError,
        match=r"remove: Linear has no parameter or buffer named 'wieght' \(found: bias, weight\)",
    ):
        remove(layer, "wieght")
    with pytest.raises(
        ParanormError, match=r"is_normalized: Linear has no parameter or buffer named 'gamma'"
    ):
        is_normalized(pn.weight_norm(nn.Linear(3, 4)), "gamma")
    for fn in (fold, remove, is_normalized, normalizations):
        with pytest.raises(ParanormError, match=r"expected an nn.Module, got dict"):
            fn({})  # type: ignore[arg-type]
    assert is_normalized(legacy_wn(nn.Linear(3, 4))) and not is_normalized(layer)
    # Nothing was changed by the failed calls.
    assert sorted(layer.state_dict()) == ["bias", "weight"]


NORMALIZERS = {
    "pn-wn": lambda m, dim: pn.weight_norm(m, dim=dim),
    "torch-wn": lambda m, dim: tp.weight_norm(m, dim=dim),
    "legacy-wn": lambda m, dim: legacy_wn(m, dim=dim),
    "pn-sn": lambda m, dim: pn.spectral_norm(m, dim=dim),
    "torch-sn": lambda m, dim: tp.spectral_norm(m, dim=dim),
    "legacy-sn": lambda m, dim: legacy_sn(m, dim=dim),
}
LAYERS = {
    "Linear": (lambda c_in, c_out, k: nn.Linear(c_in, c_out), lambda c: (2, c)),
    "Conv1d": (lambda c_in, c_out, k: nn.Conv1d(c_in, c_out, k), lambda c: (2, c, 6)),
    "Conv2d": (lambda c_in, c_out, k: nn.Conv2d(c_in, c_out, k), lambda c: (2, c, 5, 4)),
    "ConvTranspose1d": (
        lambda c_in, c_out, k: nn.ConvTranspose1d(c_in, c_out, k, stride=2),
        lambda c: (2, c, 4),
    ),
    "ConvTranspose2d": (
        lambda c_in, c_out, k: nn.ConvTranspose2d(c_in, c_out, k),
        lambda c: (2, c, 3, 3),
    ),
}


@settings(max_examples=30, deadline=None, database=None)
@given(
    layer=st.sampled_from(sorted(LAYERS)),
    norm=st.sampled_from(sorted(NORMALIZERS)),
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    k=st.integers(1, 3),
    dim_choice=st.sampled_from(["default", "first", "last", "none"]),
    train_steps=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_fold_keeps_the_function_for_any_layer_norm_and_dim(
    layer, norm, c_in, c_out, k, dim_choice, train_steps, seed
):
    torch.manual_seed(seed)
    build, shape = LAYERS[layer]
    module = build(c_in, c_out, k)
    ndim = module.weight.ndim
    wn = norm.endswith("wn")
    if dim_choice == "default":
        dim = 0 if wn else None
    elif dim_choice == "first":
        dim = 0
    elif dim_choice == "last":
        dim = ndim - 1
    else:
        dim = None if wn else 0
    module = NORMALIZERS[norm](module, dim)
    x = torch.randn(shape(c_in))
    for _ in range(train_steps):  # move u, v in training mode
        module.train()(x)
    module.eval()
    with torch.no_grad():
        before = module(x)
    fold(module)
    assert sorted(module.state_dict()) == ["bias", "weight"]
    assert isinstance(module.weight, nn.Parameter) and module.weight.requires_grad
    with torch.no_grad():
        assert torch.equal(module(x), before)


def test_folded_norm_layer_has_the_keys_of_an_unnormalized_one():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10)
    for norm in ("weight_norm", "spectral_norm"):
        layer = pnn.NormConvTranspose1d(3, 4, 3, stride=2, norm=norm).eval()
        with torch.no_grad():
            before = layer(x)
        plain = pnn.NormConvTranspose1d(3, 4, 3, stride=2)
        plain.load_state_dict(fold(layer).state_dict(), strict=True)
        with torch.no_grad():
            assert torch.equal(plain(x), before)


IMPLEMENTATIONS = [
    pn.weight_norm,
    pn.spectral_norm,
    tp.weight_norm,
    tp.spectral_norm,
    legacy_wn,
    legacy_sn,
]
IMPLEMENTATION_IDS = ["pn-wn", "pn-sn", "torch-wn", "torch-sn", "legacy-wn", "legacy-sn"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
def test_fold_keeps_half_precision(normalize, dtype):
    torch.manual_seed(0)
    layer = normalize(nn.Linear(4, 3).to(dtype)).eval()
    x = torch.randn(2, 4, dtype=dtype)
    with torch.no_grad():
        before = layer(x)
    fold(layer)
    assert layer.weight.dtype == dtype
    with torch.no_grad():
        assert torch.equal(layer(x), before)


DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("normalize", IMPLEMENTATIONS, ids=IMPLEMENTATION_IDS)
def test_fold_keeps_the_device(normalize, device):
    layer = normalize(nn.Conv1d(3, 4, 3, device=device))
    fold(layer)
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.device.type == device
    assert layer.weight.shape == (4, 3, 3)


class Failing(nn.Module):
    """A parametrization whose forward fails: removing its chain must leave the module as it was."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise RuntimeError("eval forward refused")
        return w


def test_a_failed_remove_leaves_the_chain_in_its_mode():
    layer = pn.spectral_norm(nn.Linear(3, 3))
    parametrize.register_parametrization(layer, "weight", Failing())
    with pytest.raises(RuntimeError, match="eval forward refused"):
        remove(layer)
    assert all(m.training for m in layer.parametrizations.weight.modules())
    # Its hooks too: the legacy-key renamer and the range check on load.
    assert is_normalized(layer) and len(layer._load_state_dict_pre_hooks) == 2


def test_folding_a_deepcopy_leaves_the_original_normalized() -> None:
    # torch's deepcopy shares the generated Parametrized<Layer> class between the copies;
    # removing a parametrization from one must not strip `weight` from the other.
    original = torch.nn.Sequential(
        pn.weight_norm(torch.nn.Linear(3, 4)), pn.spectral_norm(torch.nn.Linear(4, 2))
    ).eval()
    x = torch.randn(5, 3)
    expected = original(x)
    folded = pn.fold(copy.deepcopy(original))
    assert torch.equal(folded(x), expected)
    assert torch.equal(original(x), expected)
    assert [info.kind for info in pn.normalizations(original)] == ["weight_norm", "spectral_norm"]
    assert pn.normalizations(folded) == []
