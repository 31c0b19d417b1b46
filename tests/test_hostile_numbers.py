"""Hostile numbers: empty, huge, tiny, non-finite and odd-typed weights, and absurd sizes.

Every result is checked against an independent float64 computation; every refusal is one
ParanormError that names the tensor, with the module left as it was.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm import CheckpointError, ParanormError
from paranorm._sigma import cost
from paranorm.checkpoint import CheckpointWarning, convert

# --- helpers ----------------------------------------------------------------------------------


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.to_dense() if v.layout != torch.strided else v).detach().clone()
        for k, v in module.state_dict().items()
    }


def refused(module: nn.Module, call, *fragments: str) -> str:
    """``call(module)`` raises a ParanormError with every fragment, leaving the module as it was."""
    before = snapshot(module)
    with pytest.raises(ParanormError) as info:
        call(module)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert not hasattr(module, "parametrizations")
    after = snapshot(module)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return message


def wn_plain_float64(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g v / ||v|| along dim 0, in float64 with each row scaled by its largest entry."""
    v = v.double()
    top = v.abs().amax(dim=1, keepdim=True)
    unit = v / top
    return g.double() * unit / unit.norm(dim=1, keepdim=True)


def linear_sigma_float64(w: torch.Tensor) -> float:
    """||W||_2 of a float tensor, in float64 after dividing by max|W| (Python float result)."""
    w = w.double()
    top = float(w.abs().max())
    return float(torch.linalg.matrix_norm(w / top, ord=2)) * top


# --- 1. empty tensors -------------------------------------------------------------------------


def test_empty_weight_norm_checkpoint_never_reaches_torchs_kernel():
    # torch._weight_norm divides by zero on these (SIGFPE kills the process): run in a child.
    script = (
        "import torch, warnings, paranorm as pn\n"
        "from paranorm.checkpoint import convert\n"
        "warnings.simplefilter('ignore')\n"
        "for g, v in ((torch.ones(0, 1), torch.ones(0, 4)), (torch.ones(1, 0), torch.ones(4, 0))):\n"
        "    sd = {'weight_g': g, 'weight_v': v}\n"
        "    out = convert(sd, to='plain')['weight']\n"
        "    assert out.shape == v.shape and out.dtype == v.dtype, out\n"
        "    report = pn.state_dict_report(sd)\n"
        "    errors = {e.error for e in report.layers[0].estimates.values()}\n"
        "    assert all(e.value is None for e in report.layers[0].estimates.values())\n"
        "    assert all(e.startswith('empty weight') for e in errors), errors\n"
        "sd = {'weight_orig': torch.ones(0, 3), 'weight_u': torch.ones(0), 'weight_v': torch.ones(3)}\n"
        "assert convert(sd, to='plain')['weight'].shape == (0, 3)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
@pytest.mark.parametrize("shape", [(4, 0), (0, 4)])
def test_registration_on_an_empty_layer_names_the_tensor(norm, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "Initializing zero-element tensors"
        layer = nn.Linear(*shape)
    refused(layer, norm, "Linear.weight is empty (shape", "nothing to normalize")


def test_empty_plain_weight_is_not_normalized_by_convert():
    with pytest.raises(CheckpointError, match=r"'weight' is empty \(shape \(0, 3\)\)"):
        convert({"weight": torch.ones(0, 3)}, to="parametrizations", normalize={"weight": "weight_norm"})


def test_empty_layer_in_a_model_report():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = nn.Sequential(nn.Linear(3, 0), nn.ReLU(), nn.Linear(0, 2))
    report = pn.lipschitz_report(net, torch.randn(1, 3))
    for layer in report.layers:
        assert all(e.value is None and e.error.startswith("empty weight") for e in layer.estimates.values())
    assert not report.network.holds


# --- 2. a certified bound must hold at any magnitude -----------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(1e30, torch.float32), (1e-30, torch.float32), (1e-40, torch.float32), (1e300, torch.float64),
     (1e-300, torch.float64), (1e30, torch.bfloat16)],
)
def test_state_dict_report_of_extreme_weight_norm(value, dtype):
    g = torch.full((3, 1), value, dtype=dtype)
    v = (torch.arange(12, dtype=torch.float64).reshape(3, 4) + 1).mul(value).to(dtype)
    truth = linear_sigma_float64(wn_plain_float64(g, v).to(dtype))  # of the stored weight
    report = pn.state_dict_report({"weight_g": g, "weight_v": v}, methods=("reshape", "power", "bound", "svd"))
    estimates = report.layers[0].estimates
    spacing = 2.0**-1074 if dtype == torch.float64 else 2.0**-149  # a subnormal sigma's rounding
    for column, e in estimates.items():
        assert e.value is not None and math.isfinite(e.value), (column, e)
        if e.kind == "upper":
            assert e.value >= truth, (column, e, truth)
        if e.kind == "exact":
            assert e.value >= truth * (1 - 1e-6) - spacing, (column, e, truth)
        if e.kind in ("lower", "exact"):
            assert e.value <= truth * (1 + 1e-5) + spacing, (column, e, truth)
            assert e.value >= truth * (1 - 1e-2) - spacing, (column, e, truth)
    assert report.layers[0].bound.value >= truth


def test_a_bound_below_a_lower_estimate_is_withdrawn(monkeypatch):
    from paranorm._sigma import methods

    real = methods.METHODS["gram"]

    def broken(layer, shape, n):
        result = real.estimate(layer, shape, n)
        return pn.SigmaResult(result.value / 2, "upper", "gram", result.iterations)

    monkeypatch.setitem(methods.METHODS, "gram", methods.Method(
        "gram", real.guarantee, real.summary, real.iterations, real.trainable, broken, real.cost,
    ))
    report = pn.state_dict_report(nn.Linear(5, 4).state_dict())
    bound = report.layers[0].estimates["bound"]
    assert bound.value is None and bound.error.startswith("not certified")
    assert report.layers[0].bound is None


# --- 3. convert --to plain: finite where the truth is finite, refused where it is not --------


@pytest.mark.parametrize(("g", "v", "want"), [(1.0, 1e-30, 6**-0.5), (1e30, 1e30, 1e30 * 6**-0.5), (1.0, 1e-40, 6**-0.5)])
def test_weight_norm_plain_weight_of_tiny_and_huge_v(g, v, want):
    sd = {"weight_g": torch.full((2, 1), g), "weight_v": torch.full((2, 6), v)}
    out = convert(sd, to="plain")["weight"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((2, 6), want), rtol=1e-6, atol=0)


def test_weight_norm_plain_weight_matches_float64_across_magnitudes():
    torch.manual_seed(0)
    base = torch.randn(4, 5, dtype=torch.float64)
    for exponent in (-44, -38, -30, -20, -10, 0, 10, 20, 30, 37):
        v = (base * 10.0**exponent).float()
        g = torch.rand(4, 1) + 0.5
        out = convert({"weight_g": g, "weight_v": v}, to="plain")["weight"]
        want = wn_plain_float64(g, v).float()
        torch.testing.assert_close(out, want, rtol=2e-6, atol=0, msg=f"1e{exponent}")


def test_weight_norm_plain_weight_is_torchs_bit_for_bit_in_range():
    torch.manual_seed(0)
    g, v = torch.rand(4, 1) + 0.5, torch.randn(4, 5)
    out = convert({"weight_g": g, "weight_v": v}, to="plain")["weight"]
    assert torch.equal(out, torch._weight_norm(v, g, 0))


def test_spectral_norm_plain_weight_of_tiny_and_huge_u_v():
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    for scale_u, scale_v in ((1.0, 1e-30), (1e-30, 1e-30), (1e20, 1e20), (1.0, 1e-44)):
        u, v = torch.full((3,), 0.5) * scale_u, torch.full((4,), 0.5) * scale_v
        sigma = float(u.double() @ w.double() @ v.double())
        sd = {"weight_orig": w, "weight_u": u, "weight_v": v}
        if abs(float(w.abs().max()) / sigma) > 3e38:
            with pytest.raises(CheckpointError, match=r"past the largest torch\.float32"):
                convert(sd, to="plain")
            continue
        out = convert(sd, to="plain")["weight"]
        torch.testing.assert_close(out, (w.double() / sigma).float(), rtol=2e-6, atol=0)


@pytest.mark.parametrize(
    ("state", "fragments"),
    [
        ({"weight_g": torch.ones(2, 1), "weight_v": torch.tensor([[1.0, 2.0], [0.0, 0.0]])},
         ["'weight_v' is all zeros over 1 slice(s) along dim=0", "0/0"]),
        ({"weight_orig": torch.zeros(3, 2), "weight_u": torch.ones(3), "weight_v": torch.ones(2)},
         ["sigma = u^T W v is 0", "'weight_u'"]),
        ({"weight_orig": torch.ones(3, 2), "weight_u": torch.zeros(3), "weight_v": torch.ones(2)},
         ["sigma = u^T W v is 0"]),
        ({"weight_g": torch.ones(2, 1), "weight_v": torch.tensor([[1.0, math.inf], [1.0, 1.0]])},
         ["'weight_v' holds 1 NaN or infinite entries"]),
        ({"weight_g": torch.tensor([[math.nan], [1.0]]), "weight_v": torch.ones(2, 2)},
         ["'weight_g' holds 1 NaN or infinite entries"]),
    ],
)
def test_plain_weights_that_are_not_numbers_are_refused(state, fragments):
    with pytest.raises(CheckpointError) as info:
        convert(state, to="plain")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_non_finite_tensors_pass_a_change_of_layout_with_a_warning():
    v = torch.tensor([[1.0, math.nan], [1.0, 1.0]])
    with pytest.warns(CheckpointWarning, match="'weight_v' holds 1 NaN or infinite entries, passed through"):
        out = convert({"weight_g": torch.ones(2, 1), "weight_v": v}, to="parametrizations")
    assert out["parametrizations.weight.original1"] is v


def test_normalizing_a_huge_plain_weight_gives_a_finite_g():
    w = torch.full((2, 3), 1e30)
    with pytest.warns(CheckpointWarning, match="outside the range in which torch's weight_norm"):
        out = convert({"weight": w}, to="parametrizations", normalize={"weight": "weight_norm"})
    torch.testing.assert_close(out["parametrizations.weight.original0"], torch.full((2, 1), 3**0.5 * 1e30))


# --- 4. a NaN cosine is no evidence for a spectral dim -----------------------------------------


def test_square_spectral_norm_with_an_inf_is_not_read_from_u_v():
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    w[1, 1] = math.inf
    sd = {"weight_orig": w, "weight_u": torch.ones(3) / 3**0.5, "weight_v": torch.ones(3) / 3**0.5}
    with pytest.raises(CheckpointError, match=r"ambiguous.*NaN or inf.*dims=\{'weight': DIM\}"):
        convert(sd, to="plain")
    layer = pn.state_dict_report(sd).layers[0]
    assert all(e.value is None and "ambiguous" in e.error for e in layer.estimates.values())


# --- 5. eps, coeff, n_power_iterations --------------------------------------------------------


@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_infinite_eps_is_refused(norm):
    refused(nn.Linear(3, 3), lambda m: norm(m, eps=math.inf), "eps=inf", "finite", "Linear.weight")


def test_infinite_coeff_is_refused():
    refused(nn.Linear(3, 3), lambda m: pn.spectral_norm(m, coeff=math.inf), "got coeff=inf", "finite")


def test_absurd_n_power_iterations_is_refused():
    refused(
        nn.Linear(3, 3), lambda m: pn.spectral_norm(m, n_power_iterations=10**9),
        "n_power_iterations must be at most 10000", "Linear.weight",
    )


# --- 6. the default paths' range; the operator methods at any magnitude -----------------------


@pytest.mark.parametrize("scale", [1e30, 1e20, 1e-20, 1e-30])
@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_default_paths_refuse_weights_outside_their_range(norm, scale):
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.mul_(scale)
    refused(layer, norm, "Linear.weight has", "outside [", "module.double()")


@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_default_paths_take_float64_weights_of_1e30(norm):
    torch.manual_seed(0)
    layer = nn.Linear(8, 4).double()
    with torch.no_grad():
        layer.weight.mul_(1e30)
    norm(layer, **({"n_power_iterations": 50} if norm is pn.spectral_norm else {}))
    w = layer.weight.detach()
    assert torch.isfinite(w).all()
    if norm is pn.spectral_norm:
        assert linear_sigma_float64(w) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
def test_loading_out_of_range_values_is_refused_and_changes_nothing(norm):
    torch.manual_seed(0)
    layer = getattr(pn, norm)(nn.Linear(4, 3))
    state = snapshot(layer)
    key = "parametrizations.weight.original1" if norm == "weight_norm" else "parametrizations.weight.original"
    bad = dict(state)
    bad[key] = state[key] * 1e30
    with pytest.raises(ParanormError, match=rf"load_state_dict: Linear.weight \(state_dict key '{key}'\) has"):
        layer.load_state_dict(bad)
    after = snapshot(layer)
    assert all(torch.equal(state[k], after[k]) for k in state)
    layer.load_state_dict(state)  # in range: loads
    with pytest.raises(ParanormError, match="load_state_dict: "):
        copy.deepcopy(layer).load_state_dict(bad)  # an EMA copy keeps the check


@pytest.mark.parametrize("method", ["power", "fft", "gram"])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-42])
def test_operator_methods_normalize_any_finite_magnitude(method, scale):
    torch.manual_seed(0)
    conv = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method=method, input_shape=(2, 8))
    reference = snapshot(conv)["parametrizations.weight.original"]
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(scale)
    conv.train()
    for _ in range(3):
        conv(torch.randn(1, 2, 8))
    scaled = conv.weight.detach()
    assert torch.isfinite(scaled).all()
    # W / sigma(W) does not depend on the scale: the same layer at scale 1, same steps.
    torch.manual_seed(0)
    unit = pn.spectral_norm(nn.Conv1d(2, 3, 3, padding=1), method=method, input_shape=(2, 8))
    with torch.no_grad():
        unit.parametrizations.weight.original.copy_(reference)
    unit.train()
    for _ in range(3):
        unit(torch.randn(1, 2, 8))
    tol = 1e-2 if scale < 1e-38 else 1e-5  # subnormal entries keep few digits
    torch.testing.assert_close(scaled, unit.weight.detach(), rtol=tol, atol=tol)


# --- 7. sigma of non-finite and huge weights ---------------------------------------------------


@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram", "svd"])
def test_sigma_of_a_non_finite_weight_is_a_clear_error(method):
    w = torch.ones(3, 3)
    w[0, 1] = math.nan
    w[2, 2] = math.inf
    with pytest.raises(ParanormError, match=r"weight of shape \(3, 3\) has 1 NaN and 1 infinite entries"):
        pn.sigma(w, method)


@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram", "svd"])
@pytest.mark.parametrize("scale", [1e19, 1e30, 3e37, 1e-30, 1e-44])
def test_sigma_of_huge_and_tiny_float32_weights(method, scale):
    torch.manual_seed(0)
    w = (torch.randn(5, 4, dtype=torch.float64) * scale).float()
    truth = linear_sigma_float64(w)
    result = pn.sigma(w, method)
    value = float(result)
    assert math.isfinite(value)
    spacing = 2.0**-149
    if result.kind in ("upper", "exact"):
        assert value >= truth * (1 - 1e-7) - spacing
    assert value == pytest.approx(truth, rel=1e-3, abs=spacing)


def test_sigma_past_float32_asks_for_float64():
    w = torch.full((4, 4), 3e38)
    with pytest.raises(ParanormError, match=r"above the largest torch.float32.*weight.double\(\)"):
        pn.sigma(w, "svd")
    assert float(pn.sigma(w.double(), "svd")) == pytest.approx(1.2e39, rel=1e-6)


# --- 8. dtypes, layouts, devices that are not a weight's ---------------------------------------

ODD = {
    "int8": (lambda: torch.ones(3, 3, dtype=torch.int8), "dtype torch.int8", "weight.float()"),
    "complex": (lambda: torch.ones(3, 3, dtype=torch.complex64), "complex dtype", "real"),
    "float8": (lambda: torch.ones(3, 3).to(torch.float8_e4m3fn), "torch.float8_e4m3fn", "weight.float()"),
    "sparse": (lambda: torch.eye(3).to_sparse(), "sparse_coo", "to_dense()"),
    "meta": (lambda: torch.ones(3, 3, device="meta"), "meta device", "to_empty"),
}


@pytest.mark.parametrize("kind", sorted(ODD))
@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram", "svd"])
def test_sigma_of_odd_tensors(kind, method):
    make, what, fix = ODD[kind]
    with pytest.raises(ParanormError) as info:
        pn.sigma(make(), method)
    assert what in str(info.value) and fix in str(info.value) and "weight of shape (3, 3)" in str(info.value)


@pytest.mark.parametrize("kind", sorted(ODD))
def test_state_dict_report_marks_odd_tensors_na(kind):
    make, what, fix = ODD[kind]
    report = pn.state_dict_report({"odd.weight": make(), "fine.weight": torch.eye(3)})
    layers = {layer.name: layer for layer in report.layers}
    assert layers["fine.weight"].bound is not None
    for e in layers["odd.weight"].estimates.values():
        assert e.value is None and "'odd.weight'" in e.error and what in e.error and fix in e.error


@pytest.mark.parametrize("kind", ["int8", "complex", "float8", "sparse"])
def test_convert_to_plain_refuses_odd_tensors(kind):
    make, what, fix = ODD[kind]
    state = {"weight_g": torch.ones(3, 1), "weight_v": make()}
    with pytest.raises(CheckpointError) as info:
        convert(state, to="plain")
    assert "'weight_v'" in str(info.value) and what in str(info.value) and fix in str(info.value)


@pytest.mark.parametrize("kind", ["complex", "float8", "sparse"])
@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_registration_refuses_odd_tensors(norm, kind):
    make, what, fix = ODD[kind]
    layer = nn.Linear(3, 3)
    layer.weight = nn.Parameter(make(), requires_grad=False)
    refused(layer, norm, "Linear.weight", what, fix)


# --- 9. cost limits ---------------------------------------------------------------------------


def test_sigma_refuses_a_huge_input_shape_before_starting():
    with pytest.raises(ParanormError) as info:
        pn.sigma(nn.Conv2d(3, 8, 3), "power", input_shape=(3, 3000, 3000))
    message = str(info.value)
    for fragment in ("above its limit", "GiB of memory", "multiply-adds", "1 GiB", "allow_large=True"):
        assert fragment in message, message


def test_spectral_norm_refuses_a_huge_input_shape_before_its_warm_up():
    conv = nn.Conv2d(3, 8, 3)
    refused(
        conv, lambda m: pn.spectral_norm(m, method="power", input_shape=(3, 4000, 4000)),
        "method='power' for Conv2d.weight at input_shape (3, 4000, 4000) is above its limit",
        "allow_large=True",
    )


def test_allow_large_lifts_the_limits(monkeypatch):
    monkeypatch.setattr(cost, "MAX_BYTES", 1)
    conv = nn.Conv1d(2, 2, 3, padding=1)
    with pytest.raises(ParanormError, match="above its limit"):
        pn.sigma(conv, "power", input_shape=(2, 8))
    assert float(pn.sigma(conv, "power", input_shape=(2, 8), allow_large=True)) > 0
    with pytest.raises(ParanormError, match="above its limit"):
        pn.spectral_norm(nn.Conv1d(2, 2, 3), method="fft", input_shape=(2, 8))
    pn.spectral_norm(nn.Conv1d(2, 2, 3), method="fft", input_shape=(2, 8), allow_large=True)
    with pytest.raises(ParanormError, match="got unexpected option"):
        pn.spectral_norm(nn.Conv1d(2, 2, 3), allow_large=True)  # reshape has no size to bound


def test_a_huge_input_first_seen_by_the_forward_is_refused(monkeypatch):
    conv = pn.spectral_norm(nn.Conv1d(2, 2, 3, padding=1), method="fft")
    conv(torch.randn(1, 2, 8))
    monkeypatch.setattr(cost, "MAX_BYTES", 2**12)
    with pytest.raises(ParanormError, match=r"input_shape \(2, 4096\) is above its limit"):
        conv(torch.randn(1, 2, 4096))


def test_gram_steps_are_capped():
    with pytest.raises(ParanormError, match="more than the 40"):
        pn.sigma(nn.Linear(3, 3), "gram", iterations=2000)


def test_model_report_names_a_non_finite_layer_and_keeps_the_rest():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[2].weight[0, 0] = math.inf
    report = pn.lipschitz_report(net, torch.randn(1, 3))
    first, last = report.layers
    assert first.bound is not None and first.bound.value >= linear_sigma_float64(net[0].weight.detach())
    assert all(e.value is None and e.error.startswith("'2' has 0 NaN and 1 infinite") for e in last.estimates.values())
    assert not report.network.holds


@pytest.mark.parametrize("method", ["power", "fft", "gram"])
@pytest.mark.parametrize("coeff", [None, 0.5, 50.0])
def test_operator_methods_divide_in_the_weights_unit(method, coeff):
    # W / soft_scale(sigma) taken as (W / 2^k) / soft_scale(sigma / 2^k): bit for bit the
    # plain division in range, and finite where sigma itself overflows float32 (entries ~3e38).
    from paranorm._sigma.matrix import soft_scale

    torch.manual_seed(0)
    linear = pn.spectral_norm(nn.Linear(6, 4), method=method, coeff=coeff).eval()
    p = linear.parametrizations.weight
    plain = p.original / soft_scale(p[0].sigma(p.original), coeff)
    assert torch.equal(linear.weight, plain)
    with torch.no_grad():
        p.original.copy_(p.original.double() / p.original.abs().max() * 3e38)
    assert not math.isfinite(float(p[0].sigma(p.original).detach()))  # sigma past float32 ...
    w = linear.weight.detach()
    assert torch.isfinite(w).all()  # ... and W / sigma still right: sigma(W / sigma) = 1,
    assert linear_sigma_float64(w) == pytest.approx(1.0 if coeff is None else coeff, rel=1e-2)


def test_spectral_plain_weight_when_w_v_underflows_but_sigma_does_not():
    # u ~ 1e30 makes sigma = u^T (W v) normal while W v (~1e-40) is subnormal in bfloat16 and
    # has lost its digits (torch: 5 ulps where the product is 5.25), float64 has not.
    w = torch.tensor([[1.25, 1.5], [0.75, 0.5], [1.0, 0.25]], dtype=torch.bfloat16)
    u = torch.full((3,), 1e30, dtype=torch.bfloat16)
    v = torch.full((2,), 1e-40, dtype=torch.bfloat16)
    out = convert({"weight_orig": w, "weight_u": u, "weight_v": v}, to="plain")["weight"]
    sigma = float(u.double() @ w.double() @ v.double())
    torch.testing.assert_close(out, (w.double() / sigma).to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize(("g", "v", "dtype"), [(1e-30, 1e15, torch.float32), (1e-30, 1e15, torch.bfloat16), (1e-306, 1e15, torch.float64)])
def test_weight_norm_plain_weight_when_g_over_norm_underflows(g, v, dtype):
    # torch's kernel forms g / ||v|| first: 1e-30 / 1e15 underflows to 0 in float32 and the
    # weight came out 0, though g v / ||v|| is about g, a normal number.
    torch.manual_seed(0)
    vs = (torch.rand(3, 5, dtype=torch.float64) + 0.5) * v
    state = {"weight_g": torch.full((3, 1), g, dtype=dtype), "weight_v": vs.to(dtype)}
    out = convert(state, to="plain")["weight"]
    want = wn_plain_float64(state["weight_g"], state["weight_v"]).to(dtype)
    torch.testing.assert_close(out, want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


def test_loading_a_g_that_torchs_kernel_would_underflow_is_refused():
    layer = pn.weight_norm(nn.Linear(5, 3))
    state = snapshot(layer)
    bad = dict(state)
    bad["parametrizations.weight.original0"] = torch.full((3, 1), 1e-30)
    bad["parametrizations.weight.original1"] = state["parametrizations.weight.original1"] * 1e15
    with pytest.raises(ParanormError, match=r"original0'\) has g / \|\|v\|\| reaching"):
        layer.load_state_dict(bad)
    assert all(torch.equal(state[k], v) for k, v in snapshot(layer).items())


def test_network_bound_past_the_float_range_is_not_given():
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(4, 4, dtype=torch.float64) for _ in range(4)])
    with torch.no_grad():
        for layer in net:
            layer.weight.mul_(1e100)
    report = pn.lipschitz_report(net, torch.randn(1, 4, dtype=torch.float64))
    assert all(layer.bound is not None and math.isfinite(layer.bound.value) for layer in report.layers)
    assert not report.network.holds and report.network.value is None
    assert "past the largest float" in report.network.statement
