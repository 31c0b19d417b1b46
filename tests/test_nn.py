"""paranorm.nn against an EnCodec-style reference built on torch's legacy hooks, and torch itself."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as tp

import paranorm as pn
from paranorm import ParanormError
from paranorm import nn as pnn
from paranorm._apply import PARAMETRIZATION_NORMS

# --- An EnCodec-style reference (encodec/modules/conv.py), on torch's legacy hook API. --------


def _legacy_norm(module: nn.Module, norm: str) -> nn.Module:
    """EnCodec's apply_parametrization_norm: legacy hooks, no kwargs."""
    if norm == "weight_norm":
        # torch deprecates its legacy weight_norm; pyproject ignores exactly this warning.
        with pytest.warns(FutureWarning, match="torch.nn.utils.weight_norm` is deprecated"):
            return torch.nn.utils.weight_norm(module)
    if norm == "spectral_norm":
        return torch.nn.utils.spectral_norm(module)
    return module


class RefNormConv1d(nn.Module):
    def __init__(self, *args: Any, norm: str = "none", **kwargs: Any) -> None:
        super().__init__()
        self.conv = _legacy_norm(nn.Conv1d(*args, **kwargs), norm)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class RefNormConv2d(RefNormConv1d):
    def __init__(self, *args: Any, norm: str = "none", **kwargs: Any) -> None:
        nn.Module.__init__(self)
        self.conv = _legacy_norm(nn.Conv2d(*args, **kwargs), norm)
        self.norm = nn.Identity()


class RefNormConvTranspose1d(nn.Module):
    def __init__(self, *args: Any, norm: str = "none", **kwargs: Any) -> None:
        super().__init__()
        self.convtr = _legacy_norm(nn.ConvTranspose1d(*args, **kwargs), norm)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.convtr(x))


class TorchParamNormConv1d(nn.Module):
    """The same layout with torch's parametrizations (what newer audiocraft checkpoints hold)."""

    def __init__(self, *args: Any, norm: str = "none", **kwargs: Any) -> None:
        super().__init__()
        conv = nn.Conv1d(*args, **kwargs)
        if norm == "weight_norm":
            conv = tp.weight_norm(conv)
        elif norm == "spectral_norm":
            conv = tp.spectral_norm(conv)
        self.conv = conv
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


PAIRS = [
    (RefNormConv1d, pnn.NormConv1d, (3, 5, 4), {"stride": 2}, (2, 3, 17)),
    (RefNormConv2d, pnn.NormConv2d, (3, 4, (3, 2)), {"padding": 1}, (2, 3, 6, 5)),
    (RefNormConvTranspose1d, pnn.NormConvTranspose1d, (4, 3, 4), {"stride": 2}, (2, 4, 9)),
]
LEGACY_KEYS = {
    "none": {"weight", "bias"},
    "weight_norm": {"weight_g", "weight_v", "bias"},
    "spectral_norm": {"weight_orig", "weight_u", "weight_v", "bias"},
}


def _trained(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few training forwards, so that spectral norm's u, v are no longer the initial ones."""
    module.train()
    for _ in range(3):
        module(x)
    return module


@pytest.mark.parametrize("norm", ["none", "weight_norm", "spectral_norm"])
@pytest.mark.parametrize(
    "ref_cls, cls, args, kwargs, shape", PAIRS, ids=lambda p: getattr(p, "__name__", "")
)
def test_loads_encodec_legacy_checkpoint_strict_and_matches(
    ref_cls, cls, args, kwargs, shape, norm
):
    torch.manual_seed(0)
    x = torch.randn(shape)
    ref = _trained(ref_cls(*args, norm=norm, **kwargs), x)
    attr = "convtr" if "Transpose" in cls.__name__ else "conv"
    state = ref.state_dict()
    assert set(state) == {f"{attr}.{k}" for k in LEGACY_KEYS[norm]}

    torch.manual_seed(1)  # different init: everything must come from the checkpoint
    ours = cls(*args, norm=norm, **kwargs)
    ours.load_state_dict(state, strict=True)
    ref.eval()
    ours.eval()
    assert torch.equal(ours(x), ref(x))
    layer = getattr(ours, attr)
    assert torch.equal(layer.weight, getattr(ref, attr).weight)
    assert ours.norm_type == norm and isinstance(ours.norm, nn.Identity)
    if norm == "weight_norm":
        assert torch.equal(layer.parametrizations.weight.original0, state[f"{attr}.weight_g"])
        assert torch.equal(layer.parametrizations.weight.original1, state[f"{attr}.weight_v"])
    if norm == "spectral_norm":
        assert torch.equal(layer.parametrizations.weight.original, state[f"{attr}.weight_orig"])
        assert torch.equal(layer.parametrizations.weight[0]._u, state[f"{attr}.weight_u"])
        assert torch.equal(layer.parametrizations.weight[0]._v, state[f"{attr}.weight_v"])


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_nested_encodec_keys_load(norm):
    """SConv1d wraps a NormConv1d as .conv: keys like ``encoder.0.conv.conv.weight_g``."""

    class Ref(nn.Module):
        def __init__(self, conv_cls: type[nn.Module]) -> None:
            super().__init__()
            wrapper = nn.Module()
            wrapper.conv = conv_cls(2, 3, 3, norm=norm)
            self.encoder = nn.Sequential(wrapper, nn.ELU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder[1](self.encoder[0].conv(x))

    torch.manual_seed(0)
    x = torch.randn(2, 2, 11)
    ref = _trained(Ref(RefNormConv1d), x).eval()
    state = ref.state_dict()
    assert ("encoder.0.conv.conv.weight_g" in state) == (norm == "weight_norm")
    assert ("encoder.0.conv.conv.weight_orig" in state) == (norm == "spectral_norm")
    ours = Ref(pnn.NormConv1d)
    ours.load_state_dict(state, strict=True)
    assert torch.equal(ours.eval()(x), ref(x))


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_torch_parametrization_checkpoints_both_ways(norm):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12)
    ref = _trained(TorchParamNormConv1d(3, 4, 3, norm=norm), x)
    ours = pnn.NormConv1d(3, 4, 3, norm=norm)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(ours.eval()(x), ref.eval()(x))

    _trained(ours, x)
    back = TorchParamNormConv1d(3, 4, 3, norm=norm)
    back.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(back.eval()(x), ours.eval()(x))


ALL_CLASSES = [
    (pnn.NormConv1d, nn.Conv1d, (3, 4, 3), (2, 3, 9)),
    (pnn.NormConv2d, nn.Conv2d, (3, 4, 3), (2, 3, 6, 5)),
    (pnn.NormConv3d, nn.Conv3d, (2, 3, 2), (1, 2, 4, 3, 3)),
    (pnn.NormConvTranspose1d, nn.ConvTranspose1d, (3, 4, 3), (2, 3, 9)),
    (pnn.NormConvTranspose2d, nn.ConvTranspose2d, (3, 4, 3), (2, 3, 5, 4)),
    (pnn.NormConvTranspose3d, nn.ConvTranspose3d, (2, 3, 2), (1, 2, 3, 3, 2)),
    (pnn.NormLinear, nn.Linear, (5, 4), (3, 5)),
]


@pytest.mark.parametrize("norm", ["none", "weight_norm", "spectral_norm"])
@pytest.mark.parametrize(
    "cls, torch_cls, args, shape", ALL_CLASSES, ids=lambda p: getattr(p, "__name__", "")
)
def test_every_layer_matches_torch_parametrizations_on_the_same_seed(
    cls, torch_cls, args, shape, norm
):
    torch.manual_seed(3)
    expected = torch_cls(*args)
    if norm == "weight_norm":
        tp.weight_norm(expected)
    elif norm == "spectral_norm":
        tp.spectral_norm(expected)
    torch.manual_seed(3)
    ours = cls(*args, norm=norm)
    attr = {nn.Linear: "linear"}.get(torch_cls, "convtr" if "Transpose" in cls.__name__ else "conv")
    layer = getattr(ours, attr)
    assert isinstance(layer, torch_cls)
    assert list(ours.state_dict()) == [f"{attr}.{k}" for k in expected.state_dict()]
    for key, value in expected.state_dict().items():
        assert torch.equal(ours.state_dict()[f"{attr}.{key}"], value), key
    x = torch.randn(shape)
    assert torch.equal(ours(x), expected(x))  # training mode: one power step each
    assert torch.equal(ours.eval()(x), expected.eval()(x))


def test_norm_kwargs_reach_the_parametrization():
    conv = pnn.NormConv1d(2, 4, 3, norm="weight_norm", norm_kwargs={"dim": None}).conv
    assert conv.parametrizations.weight.original0.shape == torch.Size([])
    torch.testing.assert_close(conv.parametrizations.weight.original0, conv.weight.detach().norm())
    sn = pnn.NormConvTranspose1d(
        2, 4, 3, norm="spectral_norm", norm_kwargs={"n_power_iterations": 3, "dim": 0}
    )
    assert sn.convtr.parametrizations.weight[0].n_power_iterations == 3
    assert sn.convtr.parametrizations.weight[0].dim == 0
    assert (
        pnn.NormConvTranspose1d(2, 4, 3, norm="spectral_norm").convtr.parametrizations.weight[0].dim
        == 1
    )


def test_registered_norm_works_in_the_layers():
    calls: list[dict[str, Any]] = []

    def soft_sn(module: nn.Module, **kwargs: Any) -> nn.Module:
        calls.append(kwargs)
        return pn.spectral_norm(module, coeff=kwargs.get("c", 1.0))

    pn.register_norm("test_soft_sn", soft_sn)
    try:
        assert "test_soft_sn" in pnn.CONV_NORMALIZATIONS
        layer = pnn.NormConv2d(2, 3, 3, norm="test_soft_sn", norm_kwargs={"c": 0.5})
        assert calls == [{"c": 0.5}]
        assert layer.conv.parametrizations.weight[0].coeff == 0.5
        assert isinstance(layer.norm, nn.Identity) and layer.norm_type == "test_soft_sn"
    finally:
        del PARAMETRIZATION_NORMS["test_soft_sn"]
    assert "test_soft_sn" not in pnn.CONV_NORMALIZATIONS


def test_conv_normalizations_is_live_and_excludes_time_layer_norm():
    names = set(pnn.CONV_NORMALIZATIONS)
    assert names == set(PARAMETRIZATION_NORMS) | {"layer_norm", "time_group_norm"}
    assert {"none", "weight_norm", "spectral_norm", "layer_norm", "time_group_norm"} <= names
    assert "time_layer_norm" not in pnn.CONV_NORMALIZATIONS
    assert len(pnn.CONV_NORMALIZATIONS) == len(names)
    assert "layer_norm" in repr(pnn.CONV_NORMALIZATIONS)


# --- layer_norm and time_group_norm against independent computations. --------------------------


def _layer_norm_over_channels_f64(y: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    y = y.double()
    mean = y.mean(dim=1, keepdim=True)
    var = y.var(dim=1, unbiased=False, keepdim=True)
    shape = (1, -1) + (1,) * (y.ndim - 2)
    out = (y - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight.double().view(shape) + bias.double().view(shape)
    return out


@pytest.mark.parametrize(
    "cls, args, shape",
    [
        (pnn.NormConv1d, (3, 5, 3), (2, 3, 10)),
        (pnn.NormConv2d, (3, 5, 3), (2, 3, 6, 7)),
        (pnn.NormConvTranspose1d, (3, 5, 3), (2, 3, 6)),
        (pnn.NormConv3d, (2, 4, 2), (1, 2, 3, 4, 3)),
    ],
)
def test_layer_norm_normalizes_channels_at_each_position(cls, args, shape):
    torch.manual_seed(0)
    layer = cls(*args, norm="layer_norm")
    assert isinstance(layer.norm, pnn.ConvLayerNorm) and isinstance(layer.norm, nn.LayerNorm)
    with torch.no_grad():
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    x = torch.randn(shape)
    inner = getattr(layer, "convtr" if "Transpose" in cls.__name__ else "conv")
    y = inner(x)
    expected = F.layer_norm(
        y.movedim(1, -1), (y.shape[1],), layer.norm.weight, layer.norm.bias, 1e-5
    ).movedim(-1, 1)
    out = layer(x)
    assert out.shape == y.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    exact = _layer_norm_over_channels_f64(y, layer.norm.weight, layer.norm.bias, 1e-5)
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
    assert {"norm.weight", "norm.bias"} <= set(layer.state_dict())


def test_layer_norm_loads_encodec_keys_and_takes_norm_kwargs():
    torch.manual_seed(0)
    state = {
        "conv.weight": torch.randn(4, 2, 3),
        "conv.bias": torch.randn(4),
        "norm.weight": torch.randn(4),
        "norm.bias": torch.randn(4),
    }
    layer = pnn.NormConv1d(2, 4, 3, norm="layer_norm")
    layer.load_state_dict(state, strict=True)
    x = torch.randn(3, 2, 8)
    y = F.conv1d(x, state["conv.weight"], state["conv.bias"])
    exact = _layer_norm_over_channels_f64(y, state["norm.weight"], state["norm.bias"], 1e-5)
    torch.testing.assert_close(layer(x).double(), exact, rtol=1e-5, atol=1e-5)

    plain = pnn.NormConv1d(
        2, 4, 3, norm="layer_norm", norm_kwargs={"eps": 1e-2, "elementwise_affine": False}
    )
    assert plain.norm.eps == 1e-2 and set(plain.state_dict()) == {"conv.weight", "conv.bias"}
    exact = _layer_norm_over_channels_f64(plain.conv(x), None, None, 1e-2)
    torch.testing.assert_close(plain(x).double(), exact, rtol=1e-5, atol=1e-5)


def test_layer_norm_carries_dtype_and_linear_uses_last_axis():
    layer = pnn.NormConv1d(2, 4, 3, norm="layer_norm", dtype=torch.float64)
    assert layer.norm.weight.dtype == torch.float64 and layer.conv.weight.dtype == torch.float64
    torch.manual_seed(0)
    lin = pnn.NormLinear(5, 6, norm="layer_norm")
    assert type(lin.norm) is nn.LayerNorm and lin.norm.normalized_shape == (6,)
    x = torch.randn(2, 7, 5)
    expected = F.layer_norm(
        F.linear(x, lin.linear.weight, lin.linear.bias), (6,), lin.norm.weight, lin.norm.bias
    )
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "cls, args, shape",
    [(pnn.NormConv1d, (3, 6, 3), (2, 3, 10)), (pnn.NormConv2d, (3, 4, 2), (2, 3, 5, 6))],
)
def test_time_group_norm_normalizes_each_sample_over_channels_and_time(cls, args, shape):
    torch.manual_seed(0)
    layer = cls(*args, norm="time_group_norm")
    assert isinstance(layer.norm, nn.GroupNorm) and layer.norm.num_groups == 1
    with torch.no_grad():
        layer.norm.weight.normal_()
        layer.norm.bias.normal_()
    x = torch.randn(shape)
    y = layer.conv(x).double()
    axes = tuple(range(1, y.ndim))
    mean = y.mean(dim=axes, keepdim=True)
    var = y.var(dim=axes, unbiased=False, keepdim=True)
    view = (1, -1) + (1,) * (y.ndim - 2)
    exact = (y - mean) / torch.sqrt(var + 1e-5) * layer.norm.weight.double().view(
        view
    ) + layer.norm.bias.double().view(view)
    torch.testing.assert_close(layer(x).double(), exact, rtol=1e-5, atol=1e-5)
    assert {"norm.weight", "norm.bias"} <= set(layer.state_dict())

    kw = cls(*args, norm="time_group_norm", norm_kwargs={"eps": 0.5, "affine": False}).norm
    assert kw.eps == 0.5 and not kw.affine


# --- errors -----------------------------------------------------------------------------------


def test_time_layer_norm_is_an_error_not_a_silent_no_op():
    with pytest.raises(
        ParanormError, match=r"'time_layer_norm' is not supported.*norm='none'.*layer_norm"
    ):
        pnn.NormConv1d(2, 3, 3, norm="time_layer_norm")
    with pytest.raises(ParanormError, match="time_layer_norm"):
        pnn.get_norm_module(nn.Conv1d(2, 3, 3), norm="time_layer_norm")


def test_unknown_norm_lists_the_valid_names():
    with pytest.raises(
        ParanormError,
        match=r"NormConv2d: unknown norm 'wieght_norm'; expected one of .*'weight_norm'.*'layer_norm'.*'time_group_norm'.*register_norm",
    ):
        pnn.NormConv2d(2, 3, 3, norm="wieght_norm")
    with pytest.raises(ParanormError, match="unknown norm None"):
        pnn.NormLinear(2, 3, norm=None)  # type: ignore[arg-type]
    with pytest.raises(ParanormError, match="get_norm_module: unknown norm 'bogus'"):
        pnn.get_norm_module(nn.Conv1d(2, 3, 3), norm="bogus")


def test_causal_time_group_norm_is_an_error():
    with pytest.raises(ParanormError, match=r"time_group_norm' cannot be causal.*causal=False"):
        pnn.NormConv1d(2, 3, 3, causal=True, norm="time_group_norm")
    with pytest.raises(ValueError):  # EnCodec raised ValueError: ParanormError still is one
        pnn.NormConvTranspose1d(2, 3, 3, causal=True, norm="time_group_norm")
    assert isinstance(
        pnn.NormConv1d(2, 3, 3, causal=True, norm="layer_norm").norm, pnn.ConvLayerNorm
    )


def test_bad_norm_kwargs_are_clear_errors():
    with pytest.raises(
        ParanormError,
        match=r"NormConv1d: bad norm_kwargs \{'dimm': 0\} for norm='weight_norm'.*dimm",
    ):
        pnn.NormConv1d(2, 3, 3, norm="weight_norm", norm_kwargs={"dimm": 0})
    with pytest.raises(ParanormError, match="norm_kwargs must be a dict or None, got list"):
        pnn.NormConv1d(2, 3, 3, norm="weight_norm", norm_kwargs=[("dim", 0)])  # type: ignore[arg-type]
    with pytest.raises(ParanormError, match=r"bad norm_kwargs .*'momentum'.*norm='layer_norm'"):
        pnn.NormConv1d(2, 3, 3, norm="layer_norm", norm_kwargs={"momentum": 0.1})
    with pytest.raises(ParanormError, match="norm='none' takes no options"):
        pnn.NormConv1d(2, 3, 3, norm_kwargs={"dim": 0})
    with pytest.raises(ParanormError, match="n_power_iterations must be >= 1"):
        pnn.NormConv1d(2, 3, 3, norm="spectral_norm", norm_kwargs={"n_power_iterations": 0})


def test_norm_modules_refuse_layers_they_do_not_fit():
    with pytest.raises(ParanormError, match=r"time_group_norm' needs a convolution.*got Linear"):
        pnn.NormLinear(3, 4, norm="time_group_norm")
    with pytest.raises(
        ParanormError, match=r"layer_norm' needs a convolution or an nn.Linear, got Identity"
    ):
        pnn.get_norm_module(nn.Identity(), norm="layer_norm")
    with pytest.raises(ParanormError, match="normalized_shape must be the number of channels"):
        pnn.ConvLayerNorm([3, 4])
    with pytest.raises(
        ParanormError, match=r"expected an input of shape \(B, C, \*spatial\), got a 1-D input"
    ):
        pnn.ConvLayerNorm(4)(torch.randn(4))
    for norm in ("none", "weight_norm", "spectral_norm"):
        assert isinstance(pnn.get_norm_module(nn.Conv1d(2, 3, 3), norm=norm), nn.Identity)


def test_no_warning_from_paranorm_layers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for norm in ("none", "weight_norm", "spectral_norm", "layer_norm", "time_group_norm"):
            pnn.NormConv1d(2, 3, 3, norm=norm)(torch.randn(1, 2, 5))


@pytest.mark.parametrize("norm", ["layer_norm", "time_group_norm", "weight_norm"])
@pytest.mark.parametrize(
    "cls, args, shape",
    [(pnn.NormConv1d, (3, 4, 3), (3, 9)), (pnn.NormConvTranspose2d, (3, 4, 2), (3, 5, 4))],
)
def test_unbatched_input_is_normalized_like_a_batch_of_one(cls, args, shape, norm):
    torch.manual_seed(0)
    layer = cls(*args, norm=norm)
    x = torch.randn(shape)
    unbatched = layer(x)
    assert unbatched.ndim == x.ndim
    torch.testing.assert_close(unbatched, layer(x.unsqueeze(0)).squeeze(0), rtol=0, atol=1e-6)


def test_encodec_names_import_from_paranorm_nn():
    """``from encodec.modules.conv import X`` becomes ``from paranorm.nn import X``."""
    names = (
        "NormConv1d",
        "NormConv2d",
        "NormConvTranspose1d",
        "ConvLayerNorm",
        "CONV_NORMALIZATIONS",
    )
    names += ("apply_parametrization_norm", "get_norm_module")
    assert set(names) <= set(pnn.__all__)
    assert pnn.apply_parametrization_norm is pn.apply_parametrization_norm
    assert pn.nn is pnn


def test_pyproject_ignores_exactly_torchs_legacy_weight_norm_warning():
    """Warnings are errors in this suite; the legacy weight_norm's FutureWarning is let through."""
    torch.nn.utils.weight_norm(nn.Linear(2, 2))  # would raise if the filter did not match
    with pytest.raises(FutureWarning):
        warnings.warn("`torch.nn.utils.spectral_norm` is deprecated (made up)", FutureWarning, stacklevel=2)


@pytest.mark.parametrize(
    "ref_cls, cls, args, kwargs, shape", PAIRS, ids=lambda p: getattr(p, "__name__", "")
)
def test_weight_norm_trains_like_the_legacy_reference(ref_cls, cls, args, kwargs, shape):
    """After loading, training continues with the same gradients on g and v."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    ref = ref_cls(*args, norm="weight_norm", **kwargs)
    ours = cls(*args, norm="weight_norm", **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref(x).square().sum().backward()
    ours(x).square().sum().backward()
    attr = "convtr" if "Transpose" in cls.__name__ else "conv"
    theirs, mine = getattr(ref, attr), getattr(ours, attr).parametrizations.weight
    torch.testing.assert_close(mine.original0.grad, theirs.weight_g.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mine.original1.grad, theirs.weight_v.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        getattr(ours, attr).bias.grad, theirs.bias.grad, rtol=1e-6, atol=1e-7
    )
