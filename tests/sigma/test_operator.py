"""paranorm.operators: the layer's linear map and its adjoint, checked against torch itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import paranorm as pn
from _layers import layers
from paranorm import ParanormError
from paranorm._sigma import geometry as ops
from paranorm._sigma import operator as op_map
from paranorm._sigma.layer import layer_of


def geometry_of(m: torch.nn.Module) -> ops.Geometry:
    """The layer's geometry as pn.sigma reads it (the operators are checked against torch)."""
    return layer_of(m).geo


@settings(max_examples=60, deadline=None)
@given(layers())
def test_apply_is_the_layer_without_bias(case):
    m, shape = case
    geo = geometry_of(m)
    x = torch.randn(2, *shape, dtype=torch.float64)
    expected = m(x) if m.bias is None else m(x) - m(torch.zeros_like(x))
    got = op_map.apply(m.weight, geo, x)
    assert got.shape == expected.shape
    assert tuple(got.shape[1:]) == ops.output_shape(m.weight, geo, shape)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(layers())
def test_adjoint_is_the_vjp_of_the_layer(case):
    # The adjoint of a linear map is its vector-Jacobian product: torch's autograd is the
    # independent reference for the transposed convolution and the padding's scatter-add.
    m, shape = case
    geo = geometry_of(m)
    x = torch.randn(1, *shape, dtype=torch.float64)
    y = torch.randn(1, *ops.output_shape(m.weight, geo, shape), dtype=torch.float64)
    _, vjp = torch.func.vjp(lambda t: op_map.apply(m.weight.detach(), geo, t), x)
    torch.testing.assert_close(op_map.apply_adjoint(m.weight.detach(), geo, y, shape), vjp(y)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
@pytest.mark.parametrize(("n", "before", "after"), [(5, 2, 1), (4, 0, 3), (3, 2, 2), (6, 1, 0)])
def test_pad_indices_match_torch_pad(mode, n, before, after):
    if mode == "reflect" and max(before, after) >= n:
        pytest.skip("torch's reflect needs pad < n")
    x = torch.arange(float(n)).reshape(1, 1, n)
    idx = ops.pad_indices(n, before, after, mode)
    torch.testing.assert_close(x[..., idx], F.pad(x, (before, after), mode=mode))


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_pad_copies_is_the_squared_norm_of_the_padding(mode):
    # ||P||^2 from the dense matrix of torch's own F.pad, against the copy count.
    torch.manual_seed(0)
    w = torch.randn(2, 2, 3, 3)
    geo = ops.geometry(w, padding=(2, 1), padding_mode=mode)
    shape = (1, 4, 5)
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    dense = F.pad(basis, (1, 1, 2, 2), mode=mode).reshape(n, -1)
    norm_sq = torch.linalg.matrix_norm(dense, ord=2) ** 2
    assert ops.pad_copies(geo, shape) == pytest.approx(norm_sq.item())
    # Without a shape: the worst case, never below the count at a size torch allows.
    assert ops.pad_copies(geo, None) >= ops.pad_copies(geo, shape)


def test_zeros_padding_copies_nothing():
    geo = ops.geometry(torch.zeros(2, 2, 3), padding=5)
    assert ops.pad_copies(geo, (2, 4)) == 1


def test_same_padding_matches_torch():
    torch.manual_seed(0)
    m = torch.nn.Conv2d(2, 3, (4, 3), padding="same", dilation=(1, 2), bias=False, padding_mode="circular")
    x = torch.randn(1, 2, 7, 8)
    geo = geometry_of(m)
    assert geo.padding == ((1, 2), (2, 2))
    torch.testing.assert_close(op_map.apply(m.weight, geo, x), m(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": 0}, "stride must be an int >= 1"),
        ({"dilation": (1, 2)}, "tuple of 1 such ints"),
        ({"groups": 3}, "divisible by groups=3"),
        ({"padding_mode": "mirror"}, "unknown padding_mode='mirror'"),
        ({"padding": "full"}, "padding='full' is not understood"),
        ({"padding": "same", "stride": 2}, "padding='same' needs stride 1"),
        ({"transposed": True, "padding_mode": "circular"}, "only padding_mode='zeros'"),
        ({"transposed": True, "stride": 2, "output_padding": 2}, "must be smaller than stride or dilation"),
        ({"output_padding": 1}, "only to transposed"),
    ],
)
def test_bad_layer_arguments(kwargs, match):
    with pytest.raises(ParanormError, match=match):
        ops.geometry(torch.zeros(4, 2, 3), **kwargs)


def test_bad_weight_rank():
    with pytest.raises(ParanormError, match="expected a 2-D"):
        ops.geometry(torch.zeros(3))


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((3, 8), {}, r"one sample's shape \(2, 'L'\)"),
        ((2, 8, 8), {}, "one sample's shape"),
        ((2, 2), {}, "too small"),
        ((2, 0), {}, "tuple of positive ints"),
        ((2, 2), {"padding": 3, "padding_mode": "circular"}, "circular padding 3 exceeds"),
        ((2, 3), {"padding": 3, "padding_mode": "reflect"}, "must be smaller than the input size"),
    ],
)
def test_bad_input_shape(shape, kwargs, match):
    w = torch.zeros(4, 2, 3)
    geo = ops.geometry(w, **kwargs)
    with pytest.raises(ParanormError, match=match):
        ops.check_input_shape(w, geo, shape, "Conv1d.weight")


def test_input_shape_with_batch_of_one():
    w = torch.zeros(4, 2, 3)
    geo = ops.geometry(w)
    assert ops.check_input_shape(w, geo, (1, 2, 9), "w") == (2, 9)
    assert ops.check_input_shape(w, geo, torch.Size([2, 9]), "w") == (2, 9)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6))
def test_linear_input_shape_needs_in_features(n_in, n_out):
    w = torch.zeros(n_out, n_in)
    geo = ops.geometry(w)
    assert ops.check_input_shape(w, geo, (5, n_in), "Linear.weight") == (n_in,)
    with pytest.raises(ParanormError, match=f"in_features={n_in}"):
        ops.check_input_shape(w, geo, (n_in + 1,), "Linear.weight")


@pytest.mark.parametrize("mode", ["circular", "replicate", "reflect"])
def test_most_copies_counts_the_padding_without_building_it(mode):
    from paranorm._sigma.geometry import most_copies, pad_indices

    for n in range(1, 8):
        for lo in range(8):
            for hi in range(8):
                if (mode == "circular" and max(lo, hi) > n) or (mode == "reflect" and max(lo, hi) >= n):
                    continue
                want = int(torch.bincount(pad_indices(n, lo, hi, mode)).max())
                assert most_copies(n, lo, hi, mode) == want, (n, lo, hi)


def test_a_huge_input_size_is_priced_not_built():
    # The padding's copy count at a billion-sample input used to build a billion-entry index.
    conv = nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ParanormError, match="above its limit"):
        pn.sigma(conv, "fft", input_shape=(2, 10**12))
