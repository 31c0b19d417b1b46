"""pn.sigma against the dense oracle: lower estimates below it, bounds above it, exact equal."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from torch import nn

import paranorm as pn
from _layers import layers
from paranorm import ParanormError
from paranorm._sigma import fourier, gram, power
from paranorm._sigma.layer import layer_of

TOL = 1e-9  # relative, float64


def jacobian_sigma(m: nn.Module, shape: tuple[int, ...]) -> float:
    """sigma from torch.func.jacrev of the module itself: independent of paranorm.operators."""
    x0 = torch.zeros(shape, dtype=torch.float64)
    jac = torch.func.jacrev(lambda x: m(x.unsqueeze(0)).squeeze(0))(x0)
    n_in = x0.numel()
    return torch.linalg.matrix_norm(jac.reshape(-1, n_in), ord=2).item()


@settings(max_examples=40, deadline=None)
@given(layers())
def test_every_method_keeps_its_promise(case):
    m, shape = case
    truth = jacobian_sigma(m, shape)
    oracle = pn.sigma(m, "svd", input_shape=shape)
    assert oracle.kind == "exact"
    assert float(oracle) == pytest.approx(truth, rel=1e-10, abs=1e-12)
    power = pn.sigma(m, "power", input_shape=shape)
    assert power.kind == "lower"
    assert float(power) <= truth * (1 + TOL) + 1e-12
    # The target; a near-tie sigma_1 ~ sigma_next converges slowly but then costs
    # little: the error is at most the gap.
    assert float(power) == pytest.approx(truth, rel=1e-3, abs=1e-9)
    for method in ("fft", "gram"):
        bound = pn.sigma(m, method, input_shape=shape)
        assert bound.kind in ("exact", "upper")
        assert float(bound) >= truth * (1 - TOL) - 1e-12, method
        if bound.kind == "exact":
            assert float(bound) == pytest.approx(truth, rel=1e-9, abs=1e-12)
    # The size-independent bound holds without input_shape too (worst case of the padding).
    assert float(pn.sigma(m, "gram")) >= truth * (1 - TOL) - 1e-12


@settings(max_examples=25, deadline=None)
@given(layers(modes=("circular",)))
def test_fft_is_exact_for_circular_padding(case):
    m, shape = case
    result = pn.sigma(m, "fft", input_shape=shape)
    geo = layer_of(m).geo
    divides = all(n % s == 0 for n, s in zip(shape[1:], geo.stride, strict=True))
    plain = not geo.is_matrix and not geo.transposed and geo.pads_wrap_exactly and divides
    if plain or geo.is_matrix:
        assert result.kind == "exact"
        assert float(result) == pytest.approx(jacobian_sigma(m, shape), rel=1e-9, abs=1e-12)
    else:
        assert result.kind == "upper"


def test_reshape_underestimates_a_3x3_conv():
    # ANCHORS section 5: the reshaped kernel's sigma is about 1.5x below the operator's.
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False).double()
    truth = pn.sigma(conv, "svd", input_shape=(16, 8, 8)).value.item()
    reshape = pn.sigma(conv, "reshape")
    assert reshape.kind == "lower" and reshape.method == "reshape"
    assert 1.3 < truth / reshape.value.item() < 1.8
    matrix = conv.weight.flatten(1)
    exact = torch.linalg.matrix_norm(matrix, ord=2).item()
    assert 0.99 * exact <= reshape.value.item() <= exact * (1 + 1e-12)  # a lower estimate of it


def test_gram_is_tight_for_matrices_and_circular():
    torch.manual_seed(0)
    lin = nn.Linear(60, 40).double()
    exact = torch.linalg.matrix_norm(lin.weight, ord=2).item()
    assert exact <= float(pn.sigma(lin, "gram")) <= exact * 1.01
    conv = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular").double()
    exact = float(pn.sigma(conv, "fft", input_shape=(8, 8, 8)))
    # Both are rounded up by certify.ROUNDING_MARGIN (an exact value is a certified bound too),
    # so a converged Gram bound may sit that far below the exact value's rounding.
    assert exact * (1 - 2e-12) <= float(pn.sigma(conv, "gram", input_shape=(8, 8, 8))) <= exact * 1.01


def test_zero_padding_bound_holds_at_every_size():
    torch.manual_seed(1)
    conv = nn.Conv1d(3, 4, 3, padding=1).double()
    bound = float(pn.sigma(conv, "gram"))
    for n in (3, 8, 30, 90):
        assert float(pn.sigma(conv, "svd", input_shape=(3, n))) <= bound


def test_kernel_gram_bound_above_the_symbol_sup():
    # The continuous-frequency sup is approached by the circular sigma on a fine grid.
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    fine = torch.linalg.matrix_norm(fourier.frequency_matrices(w, [96, 96], [1, 1], 1), ord=2).max().item()
    bounds = [gram.kernel_gram_bound(w, 1, n).item() for n in (2, 3, 4, 5)]
    assert all(b >= fine for b in bounds)
    assert bounds == sorted(bounds, reverse=True)  # tighter with more steps
    assert bounds[-1] <= fine * 1.05


@pytest.mark.parametrize("method", ["reshape", "power", "fft", "gram", "svd"])
def test_gradcheck(method):
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    kwargs = {"padding": 1, "padding_mode": "circular"}

    def f(weight):
        return pn.sigma(weight, method, input_shape=(2, 5), iterations=None, **kwargs).value

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("method", ["power", "svd", "gram", "fft"])
def test_gradient_of_the_true_sigma(method):
    # d sigma / dW = the rank-one term of the top singular pair: checked by finite differences
    # of the oracle itself, in the direction of a random perturbation.
    torch.manual_seed(3)
    conv = nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular").double()
    w = conv.weight.detach().clone().requires_grad_(True)
    value = pn.sigma(w, method, input_shape=(2, 6), padding=1, padding_mode="circular").value
    (grad,) = torch.autograd.grad(value, w)
    d = torch.randn_like(w)
    h = 1e-6
    plus = float(pn.sigma(w.detach() + h * d, "svd", input_shape=(2, 6), padding=1, padding_mode="circular"))
    minus = float(pn.sigma(w.detach() - h * d, "svd", input_shape=(2, 6), padding=1, padding_mode="circular"))
    assert (grad * d).sum().item() == pytest.approx((plus - minus) / (2 * h), rel=1e-3)


def test_parametrized_module_uses_its_effective_weight():
    torch.manual_seed(0)
    lin = pn.spectral_norm(nn.Linear(6, 5), n_power_iterations=50)
    assert float(pn.sigma(lin, "svd")) == pytest.approx(1.0, abs=1e-4)
    assert float(pn.sigma(lin, "reshape")) == pytest.approx(1.0, abs=1e-4)


def test_bias_does_not_enter():
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 2, 3, padding=1)
    before = float(pn.sigma(conv, "svd", input_shape=(2, 6)))
    with torch.no_grad():
        conv.bias.fill_(100.0)
    assert float(pn.sigma(conv, "svd", input_shape=(2, 6))) == before


def test_result_object():
    torch.manual_seed(0)
    r = pn.sigma(nn.Linear(3, 3), "gram", iterations=7)
    assert isinstance(r, pn.SigmaResult)
    assert r.value.ndim == 0 and r.value.dtype == torch.float32
    assert (r.kind, r.method, r.iterations) == ("upper", "gram", 7)
    assert float(r) == r.value.item()
    assert "kind='upper'" in repr(r)
    with pytest.raises(AttributeError):
        r.kind = "exact"  # type: ignore[misc]


def test_float32_bounds_stay_bounds():
    torch.manual_seed(0)
    lin = nn.Linear(30, 20)
    exact = torch.linalg.matrix_norm(lin.weight.double(), ord=2).item()
    assert float(pn.sigma(lin, "gram")) >= exact


def test_raw_weight_with_layer_arguments_matches_the_module():
    torch.manual_seed(0)
    m = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    from_module = float(pn.sigma(m, "svd", input_shape=(1, 4, 3, 3)))
    from_weight = float(
        pn.sigma(m.weight, "svd", input_shape=(4, 3, 3), transposed=True, stride=2, padding=1, output_padding=1, groups=2)
    )
    assert from_module == from_weight


def test_submodules_do_not_shadow_the_functions():
    # Each public function lives in a module of another name, so importing the module by path
    # (as pytest's importlib mode and `import paranorm.x as y` do) never rebinds pn.<function>.
    for module in ("_sigma", "_fold", "_weight_norm", "_spectral_norm", "_init", "_lipschitz", "_fast"):
        importlib.import_module(f"paranorm.{module}")
    assert callable(pn.sigma) and callable(pn.fold)
    assert callable(pn.weight_norm) and callable(pn.spectral_norm)
    assert float(pn.sigma(torch.eye(3), "svd")) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pn.sigma(nn.Linear(2, 2), "magic"), "unknown method 'magic'"),
        (lambda: pn.sigma(nn.Conv1d(2, 2, 3), "power"), "needs input_shape"),
        (lambda: pn.sigma(nn.Conv1d(2, 2, 3), "fft"), "needs input_shape"),
        (lambda: pn.sigma(nn.Conv1d(2, 2, 3), "svd"), "needs input_shape"),
        (lambda: pn.sigma(nn.Conv2d(64, 64, 3), "svd", input_shape=(64, 32, 32)), "above its limit"),
        (lambda: pn.sigma(nn.LSTM(2, 2), "svd"), "LSTM is not supported"),
        (lambda: pn.sigma("weight", "svd"), "expected an nn.Module or a weight tensor"),
        (lambda: pn.sigma(torch.zeros(3), "svd"), "expected a 2-D"),
        (lambda: pn.sigma(torch.zeros(2, 2, dtype=torch.int64), "svd"), "expected floating point"),
        (lambda: pn.sigma(nn.Conv1d(2, 2, 3), "reshape", stride=2), "read from the module Conv1d"),
        (lambda: pn.sigma(torch.zeros(2, 2), "svd", stride=2), "a 2-D weight is a Linear layer"),
        (lambda: pn.sigma(torch.zeros(2, 2), "svd", strides=2), "unknown argument"),
        (lambda: pn.sigma(nn.Linear(2, 2), "power", iterations=0), "iterations must be a positive int"),
        (lambda: pn.sigma(nn.Linear(2, 2), "reshape", dim=2), "dim=2 is not an axis"),
        (lambda: pn.sigma(nn.LazyConv1d(2, 3), "gram"), "lazy, uninitialized"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ParanormError, match=match):
        call()


def test_kernel_gram_bound_stays_tight_with_many_channels():
    # The triangle inequality over the taps keeps the bound from growing with the channels.
    torch.manual_seed(0)
    w = torch.randn(48, 48, 3, dtype=torch.float64) / 12
    fine = torch.linalg.matrix_norm(fourier.frequency_matrices(w, [512], [1], 1), ord=2).max().item()
    bound = gram.kernel_gram_bound(w, 1, 4).item()
    assert fine <= bound <= 1.05 * fine


def test_half_precision_weight():
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 4, 3, padding=1)
    truth = float(pn.sigma(conv.double(), "svd", input_shape=(4, 16)))
    half = conv.half()
    for method in ("power", "fft", "gram", "svd"):
        r = pn.sigma(half, method, input_shape=(4, 16))
        assert r.value.dtype == torch.float32
        assert float(r) == pytest.approx(truth, rel=2e-3 if r.kind != "upper" else 0.2)


def test_power_without_the_fourier_warm_start(monkeypatch):
    # Large layers skip the warm start (its SVDs would cost more than they save).
    monkeypatch.setattr(power, "WARM_START_MAX_ENTRIES", 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    truth = float(pn.sigma(conv, "svd", input_shape=(3, 6, 6)))
    lower = float(pn.sigma(conv, "power", input_shape=(3, 6, 6)))
    assert truth * (1 - 1e-3) <= lower <= truth * (1 + 1e-12)


@pytest.mark.parametrize(("stride", "size"), [(2, 8), (3, 9), ((2, 1), (6, 5))])
def test_fft_folds_the_stride(stride, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, padding_mode="circular", groups=2).double()
    size = size if isinstance(size, tuple) else (size, size)
    shape = (4, *size)
    fft = pn.sigma(conv, "fft", input_shape=shape)
    assert fft.kind == "exact"
    assert float(fft) == pytest.approx(jacobian_sigma(conv, shape), rel=1e-10)
    gram = float(pn.sigma(conv, "gram", input_shape=shape))
    assert float(fft) * (1 - 1e-12) <= gram <= float(fft) * 1.01
