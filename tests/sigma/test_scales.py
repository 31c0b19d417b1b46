"""Certified means certified at every scale: pn.sigma against a float64 oracle from 1e-30 to 1e30.

sigma is homogeneous, sigma(c W) = c sigma(W), and the estimators rescale the weight by a power
of two; the oracle here is independent of them: the layer's Jacobian (torch.func, float64) at
the weight divided by a power of two, its exact largest singular value, compared in that
scaled unit so that no number leaves float64's range.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import paranorm as pn
from _layers import layers
from paranorm import ParanormError
from paranorm._sigma.matrix import weight_to_matrix

#: Relative slack for the rounding of a result in its dtype (an upper bound is rounded up, so
#: it needs none; an exact or lower value is nearest-rounded or iterated in that dtype).
SLACK = {torch.float32: 2e-5, torch.float64: 1e-9}


def _pow2(x: float) -> float:
    """2^(e - 1) for x in [2^(e - 1), 2^e)."""
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


def _operator_sigma(m: nn.Module, weight: torch.Tensor, shape: tuple[int, ...]) -> float:
    """Exact sigma of the layer with ``weight`` (float64), from its Jacobian."""
    params = {"weight": weight}
    x0 = torch.zeros(shape, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        y = torch.func.functional_call(m, params, (x.unsqueeze(0),))
        return y.squeeze(0) - torch.func.functional_call(m, params, (x0.unsqueeze(0),)).squeeze(0)

    jac = torch.func.jacrev(f)(x0)
    return torch.linalg.matrix_norm(jac.reshape(-1, x0.numel()), ord=2).item()


@settings(max_examples=60, deadline=None)
@given(
    case=layers(max_entries=400),
    log_scale=st.one_of(st.sampled_from([-30.0, -22.0, -20.0, 19.0, 20.0, 30.0]), st.floats(-30, 30)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    method=st.sampled_from(["reshape", "power", "fft", "gram", "svd"]),
)
def test_every_estimate_keeps_its_promise_at_every_scale(case, log_scale, dtype, method):
    m, shape = case
    weight = (m.weight.detach() * 10.0**log_scale).to(dtype)
    m = m.to(dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
    c = _pow2(float(weight.abs().max()))
    unit = weight.double() / c  # exact: c is a power of two
    if method == "reshape":
        truth = torch.linalg.matrix_norm(weight_to_matrix(unit, 1 if "Transpose" in type(m).__name__ else 0), ord=2).item()
    else:
        truth = _operator_sigma(m.double(), unit, shape)
    result = pn.sigma(m, method, input_shape=shape)
    value = float(result)
    assert math.isfinite(value)
    got = value / c
    slack = SLACK[dtype]
    if result.kind in ("upper", "exact"):
        assert got >= truth * (1 - (slack if result.kind == "exact" else 0)), (result, truth * c)
    if result.kind in ("lower", "exact"):
        assert got <= truth * (1 + slack), (result, truth * c)
    if result.kind == "lower":
        # and useful: on these tiny layers the power steps converge (0 would be a "lower
        # estimate" too, and silently wrong).
        assert got >= truth * (1 - 1e-2), (result, truth * c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram", "svd"])
def test_extreme_magnitudes_of_each_dtype(dtype, method):
    # The largest finite entries, the smallest normal ones and subnormal ones: every method
    # returns the oracle's value (float64, of the same weight) or, where sigma itself is past
    # the dtype's largest number, refuses.
    torch.manual_seed(0)
    base = torch.randn(3, 4, 3, dtype=torch.float64)
    base = base / base.abs().max()
    info = torch.finfo(dtype)
    for top in (info.max, info.max / 64, info.tiny, info.tiny * info.eps * 4):
        weight = (base * top).to(dtype)
        if not bool(weight.abs().max() > 0):
            continue
        c = _pow2(float(weight.abs().max()))
        conv = nn.Conv1d(4, 3, 3, padding=1).to(dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
        unit = weight.double() / c
        if method == "reshape":
            truth = torch.linalg.matrix_norm(weight_to_matrix(unit, 0), ord=2).item()
        else:
            truth = _operator_sigma(nn.Conv1d(4, 3, 3, padding=1).double(), unit, (4, 7))
        try:
            result = pn.sigma(conv, method, input_shape=(4, 7))
        except ParanormError as error:
            assert truth * c > torch.finfo(torch.float32 if dtype != torch.float64 else dtype).max / 2
            assert "above the largest" in str(error)
            continue
        got = float(result) / c
        assert math.isfinite(got)
        # A sigma this small is itself subnormal in the result's dtype: it is off by up to
        # half its spacing there, 2^-149 (float32) or 2^-1074 (float64), in this unit / c.
        spacing = math.ldexp(1.0, -149 if result.value.dtype == torch.float32 else -1074) / c
        tol = 1e-3 if method in ("power", "reshape") else 1e-6
        if result.kind == "upper":
            assert truth * (1 - 1e-7) <= got <= truth * 1.2 + spacing
        else:
            assert got == pytest.approx(truth, rel=tol, abs=spacing)
