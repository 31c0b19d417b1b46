"""The activation-scaled forward (paranorm._scaled) against the materialized parametrization.

With :func:`paranorm.fast_paths` on, a weight-normalized or "reshape" spectrally normalized
Linear/Conv/ConvTranspose computes op(x, V) * s + b (or op(x * s, V) + b) instead of
materializing W. The reference is the same module with fast paths off: torch's materialized
parametrization, which tests/test_weight_norm.py and test_spectral_norm.py check bit for bit
against torch. float64 must agree to ~1e-10 relative, float32 to ~1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_param
from torch.nn.utils import parametrize

import paranorm as pn
from paranorm._fast import scaled as _scaled

SCALED = "_ScaledLayerBackward"
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}
NORMS = {"weight": pn.weight_norm, "spectral": pn.spectral_norm}


@pytest.fixture(autouse=True)
def _small_layers_take_the_path(small_layers_scaled):
    """These tests use tiny layers, to be quick: let them take the scaled forward."""


def normalized(make, norm, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = make().to(dtype)
    torch.manual_seed(seed + 1)
    return NORMS[norm](layer, **kwargs)


def twins(make, norm, dtype=torch.float64, seed=0, **kwargs):
    """(module for the fast path, identical module for the reference path), built alike.

    Built from the same seeds rather than deep-copied, so the two share nothing, not even the
    class torch's parametrize generates.
    """
    return normalized(make, norm, dtype, seed, **kwargs), normalized(make, norm, dtype, seed, **kwargs)


def make_x(shape, dtype=torch.float64, requires_grad=True, seed=7):
    torch.manual_seed(seed)
    return torch.randn(shape, dtype=dtype).requires_grad_(requires_grad)


def path(y):
    return type(y.grad_fn).__name__


def run(module, x, fast, calls=1, **fwd_kwargs):
    """Outputs, grads of (x if it requires grad, then the parameters), grad_fn names."""
    with pn.fast_paths(fast):
        ys = [module(x, **fwd_kwargs) for _ in range(calls)]
        # A non-uniform dL/dy, different per call.
        loss = sum(
            (y * torch.linspace(-1.0, 2.0 + i, y.numel(), dtype=y.dtype).view_as(y)).sum()
            for i, y in enumerate(ys)
        )
        inputs = [t for t in (x, *module.parameters()) if t.requires_grad]
        grads = torch.autograd.grad(loss, inputs)
    return ys, grads, [path(y) for y in ys]


def close(a, b, dtype=torch.float64):
    torch.testing.assert_close(a, b, **TOL[dtype])


def check_against_reference(fast, ref, x, *, scaled, calls=1, **fwd_kwargs):
    """The fast module's values, grads and buffers equal the reference's; the path is as told."""
    ys, grads, names = run(fast, x, True, calls, **fwd_kwargs)
    ys_ref, grads_ref, names_ref = run(ref, x, False, calls, **fwd_kwargs)
    assert all(n != SCALED for n in names_ref)
    expected = SCALED if scaled else "not " + SCALED
    got = [n if n == SCALED else "not " + SCALED for n in names]
    assert got == [expected] * calls, f"path taken: {names}, expected {expected}"
    for y, y_ref in zip(ys, ys_ref, strict=True):
        assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
        assert torch.isfinite(y).all()
        close(y, y_ref, x.dtype)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert torch.isfinite(g).all()
        close(g, g_ref, x.dtype)
    for b, b_ref in zip(fast.buffers(), ref.buffers(), strict=True):
        close(b, b_ref, x.dtype)


# (layer factory, input shape, forward kwargs)
LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (4, 6), {}),
    "linear-3d": (lambda: nn.Linear(6, 5), (2, 2, 6), {}),
    "linear-1d": (lambda: nn.Linear(6, 5), (6,), {}),
    "linear-nobias": (lambda: nn.Linear(6, 5, bias=False), (4, 6), {}),
    "conv1d": (lambda: nn.Conv1d(8, 9, 3, padding=1), (1, 8, 4), {}),
    "conv1d-stride-dil": (lambda: nn.Conv1d(8, 9, 3, stride=2, padding=2, dilation=2), (2, 8, 6), {}),
    "conv1d-nobias": (lambda: nn.Conv1d(8, 9, 3, bias=False), (1, 8, 4), {}),
    "conv2d": (lambda: nn.Conv2d(8, 9, 3, stride=2, padding=1), (1, 8, 4, 4), {}),
    "conv2d-groups": (lambda: nn.Conv2d(8, 12, 3, groups=4), (1, 8, 3, 3), {}),
    "conv3d": (lambda: nn.Conv3d(4, 5, 2), (1, 4, 2, 2, 2), {}),
    "convtr1d": (lambda: nn.ConvTranspose1d(9, 8, 4, stride=2, padding=1), (1, 9, 3), {}),
    "convtr1d-outpad": (lambda: nn.ConvTranspose1d(9, 8, 3, stride=2, output_padding=1), (1, 9, 3), {}),
    "convtr1d-outsize": (lambda: nn.ConvTranspose1d(9, 8, 3, stride=2), (1, 9, 3), {"output_size": [8]}),
    "convtr2d-groups": (lambda: nn.ConvTranspose2d(8, 12, 3, stride=2, groups=2), (1, 8, 2, 2), {}),
}

# (layer, weight norm dim, x requires grad): every one of these takes the scaled forward.
WEIGHT_CASES = [
    ("linear", 0, False), ("linear", 0, True), ("linear", 1, True), ("linear", None, True),
    ("linear", None, False), ("linear-3d", 0, True), ("linear-3d", 1, True),
    ("linear-1d", 0, True), ("linear-1d", 1, True), ("linear-nobias", 1, True),
    ("conv1d", 0, True), ("conv1d", 1, True), ("conv1d", None, False),
    ("conv1d-stride-dil", 0, False), ("conv1d-stride-dil", 1, True),
    ("conv1d-nobias", 0, True), ("conv1d-nobias", 1, True),
    ("conv2d", 0, True), ("conv2d", 1, True), ("conv2d-groups", 0, False),
    ("conv2d-groups", None, True), ("conv3d", 0, True), ("conv3d", 1, True),
    ("convtr1d", 0, True), ("convtr1d", 1, False), ("convtr1d", None, True),
    ("convtr1d-outpad", 0, True), ("convtr1d-outpad", 1, True),
    ("convtr1d-outsize", 0, True), ("convtr1d-outsize", 1, False),
    ("convtr2d-groups", 0, True), ("convtr2d-groups", None, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("layer", "dim", "x_grad"), WEIGHT_CASES)
def test_weight_norm_matches_materialized(layer, dim, x_grad, dtype):
    make, shape, fwd = LAYERS[layer]
    fast, ref = twins(make, "weight", dtype, dim=dim)
    check_against_reference(fast, ref, make_x(shape, dtype, x_grad), scaled=True, **fwd)


@pytest.mark.parametrize("layer", ["linear", "conv1d", "convtr1d"])
@pytest.mark.parametrize("dim", [0, 1, None])
def test_weight_norm_eps_with_a_zero_slice(layer, dim):
    """eps > 0 and one all-zero slice of v: W is zero there, everything finite and as torch."""
    make, shape, fwd = LAYERS[layer]
    fast, ref = twins(make, "weight", eps=1e-3, dim=dim)
    for m in (fast, ref):
        with torch.no_grad():
            v = m.parametrizations.weight.original1
            if dim is None:  # the whole-tensor norm below eps: zero v entirely
                v.zero_()
            else:
                v.select(dim, 1).zero_()
            m.parametrizations.weight.original0.fill_(1.5)
    check_against_reference(fast, ref, make_x(shape), scaled=True, **fwd)
    with pn.fast_paths():
        weight = fast.weight
    assert not weight.isnan().any()
    assert (weight if dim is None else weight.select(dim, 1)).abs().sum() == 0


@pytest.mark.parametrize("eps", [1e-3, 10.0])
def test_weight_norm_eps_clamp_active_on_some_rows(eps):
    """eps = 10 is above every ||v|| of some rows: the clamp's zero gradient in the scaled backward."""
    fast, ref = twins(LAYERS["linear"][0], "weight", eps=eps)
    for m in (fast, ref):
        with torch.no_grad():
            m.parametrizations.weight.original1[:2] *= 100.0  # rows 0, 1 above eps = 10
    norms = ref.parametrizations.weight.original1.norm(dim=1)
    assert (norms > eps).any()
    assert eps < 1 or (norms < eps).any()
    check_against_reference(fast, ref, make_x((4, 6)), scaled=True)


# (layer, spectral dim or None for the default, x requires grad)
SPECTRAL_CASES = [
    ("linear", None, False), ("linear", None, True), ("linear", 1, True), ("linear-3d", None, True),
    ("linear-1d", None, True), ("linear-nobias", 1, False), ("conv1d", None, True),
    ("conv1d", 1, False), ("conv1d-stride-dil", 2, True), ("conv1d-nobias", None, True),
    ("conv2d", None, False), ("conv2d", 1, True), ("conv2d-groups", 0, True), ("conv3d", None, True),
    ("convtr1d", None, True), ("convtr1d", 0, False), ("convtr1d-outpad", None, True),
    ("convtr1d-outsize", None, False), ("convtr2d-groups", None, True),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("layer", "dim", "x_grad"), SPECTRAL_CASES)
def test_spectral_norm_matches_materialized(layer, dim, x_grad, dtype, mode):
    make, shape, fwd = LAYERS[layer]
    fast, ref = twins(make, "spectral", dtype, dim=dim)
    fast.train(mode == "train")
    ref.train(mode == "train")
    check_against_reference(fast, ref, make_x(shape, dtype, x_grad), scaled=True, **fwd)


@pytest.mark.parametrize("active", [True, False], ids=["clamp-active", "clamp-inactive"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("layer", "x_grad"), [("linear", True), ("conv1d", False), ("convtr1d", True)])
def test_soft_spectral_norm_matches_materialized(layer, x_grad, mode, active):
    make, shape, fwd = LAYERS[layer]
    probe = normalized(make, "spectral")
    with torch.no_grad():
        sigma = torch.linalg.matrix_norm(
            probe.parametrizations.weight.original.movedim(1 if layer == "convtr1d" else 0, 0).flatten(1), 2
        ).item()
    coeff = sigma / 2 if active else sigma * 2
    fast, ref = twins(make, "spectral", coeff=coeff)
    fast.train(mode == "train")
    ref.train(mode == "train")
    check_against_reference(fast, ref, make_x(shape, requires_grad=x_grad), scaled=True, **fwd)
    with torch.no_grad():
        raw = ref.parametrizations.weight.original
        assert torch.allclose(ref.weight, raw) is not active  # the clamp did (not) bind


def test_two_forwards_per_step_take_the_path_and_backpropagate():
    for norm in NORMS:
        fast, ref = twins(LAYERS["linear"][0], norm)
        check_against_reference(fast, ref, make_x((4, 6)), scaled=True, calls=2)


@pytest.mark.parametrize(
    ("norm", "frozen"),
    [("weight", ("bias",)), ("weight", ("original0",)), ("weight", ("original1",)),
     ("weight", ("bias", "original0", "original1")), ("spectral", ("bias",)),
     ("spectral", ("original",)), ("spectral", ("bias", "original"))],
)
def test_frozen_parameters(norm, frozen):
    """Only the tensors that require grad get one, and those equal the reference's."""
    kwargs = {"dim": 1} if norm == "weight" else {}  # input side: x's grad is needed anyway
    fast, ref = twins(LAYERS["conv1d"][0], norm, **kwargs)
    for m in (fast, ref):
        for name, p in m.named_parameters():
            p.requires_grad_(name.split(".")[-1] not in frozen)
    check_against_reference(fast, ref, make_x((1, 8, 4)), scaled=True)


@pytest.mark.parametrize("norm", list(NORMS))
def test_non_contiguous_inputs(norm):
    for make, x in (
        (LAYERS["linear"][0], make_x((6, 4)).detach().t().requires_grad_()),
        (LAYERS["conv2d"][0], make_x((1, 8, 4, 4)).detach().to(memory_format=torch.channels_last)),
        (LAYERS["conv1d"][0], make_x((1, 4, 8)).detach().transpose(1, 2).requires_grad_()),
    ):
        assert not x.is_contiguous()
        check_against_reference(*twins(make, norm), x, scaled=True)


@pytest.mark.parametrize("norm", list(NORMS))
def test_inference_under_no_grad(norm):
    fast, ref = twins(LAYERS["conv1d"][0], norm)
    x = make_x((1, 8, 4), requires_grad=False)
    with torch.no_grad():
        with pn.fast_paths():
            y = fast(x)
        y_ref = ref(x)
    assert y.grad_fn is None
    close(y, y_ref)
    for a, b in zip(fast.buffers(), ref.buffers(), strict=True):
        close(a, b)


def test_dtype_mismatch_raises_like_torch():
    for norm in NORMS:
        fast, ref = twins(LAYERS["linear"][0], norm)
        x = make_x((4, 6), torch.float32)
        with pytest.raises(RuntimeError) as theirs:
            ref(x)
        with pn.fast_paths(), pytest.raises(RuntimeError) as ours:
            fast(x)
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("norm", list(NORMS))
def test_plan_follows_each_call(norm):
    """The per-layer plan cache is keyed on the call: shape and requires_grad changes re-plan."""
    kwargs = {"dim": 1} if norm == "weight" else {}
    fast, ref = twins(LAYERS["linear"][0], norm, **kwargs)
    calls = [((4, 6), True, True), ((1, 6), True, True), ((8, 6), True, False), ((4, 6), True, True)]
    if norm == "weight":  # input side: needs x to require grad
        calls += [((4, 6), False, False), ((4, 6), True, True)]
    for shape, x_grad, scaled in calls:
        check_against_reference(fast, ref, make_x(shape, requires_grad=x_grad), scaled=scaled)


def test_spectral_warm_up_pending_falls_back_once():
    """A checkpoint without u, v: the first forward warms up on the usual path, then scaled."""
    fast, ref = twins(LAYERS["linear"][0], "spectral")
    scramble_uv(fast, ref)
    for m in (fast, ref):
        m.parametrizations.weight[0]._warm_up_pending = True
    x = make_x((4, 6))
    check_against_reference(fast, ref, x, scaled=False)
    assert not fast.parametrizations.weight[0]._warm_up_pending
    check_against_reference(fast, ref, x, scaled=True)


# ---------------------------------------------------------------- fallbacks


def fallback(fast, ref, x, **fwd):
    check_against_reference(fast, ref, x, scaled=False, **fwd)


@pytest.mark.parametrize("layer", ["conv2d-groups", "convtr2d-groups"])
def test_fallback_weight_norm_within_a_group(layer):
    make, shape, fwd = LAYERS[layer]
    fallback(*twins(make, "weight", dim=1), make_x(shape), **fwd)


@pytest.mark.parametrize(("layer", "dim"), [("linear", 1), ("conv1d", 1), ("convtr1d", 0)])
def test_fallback_input_side_without_input_grad(layer, dim):
    make, shape, fwd = LAYERS[layer]
    fallback(*twins(make, "weight", dim=dim), make_x(shape, requires_grad=False), **fwd)
    # Control: the same layer with x requiring grad takes the path.
    check_against_reference(*twins(make, "weight", dim=dim), make_x(shape), scaled=True, **fwd)


@pytest.mark.parametrize("norm", list(NORMS))
def test_fallback_inside_normalize_once(norm):
    fast, ref = twins(LAYERS["linear"][0], norm)
    x = make_x((4, 6))
    with pn.normalize_once():
        fallback(fast, ref, x)


@pytest.mark.parametrize("norm", list(NORMS))
def test_fallback_under_cpu_autocast(norm):
    fast, ref = twins(LAYERS["linear"][0], norm, torch.float32)
    x = make_x((4, 6), torch.float32)
    outs = []
    for module, on in ((fast, True), (ref, False)):
        with pn.fast_paths(on), torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x)
        assert y.dtype == torch.bfloat16 and path(y) != SCALED
        outs.append((y, torch.autograd.grad(y.float().sum(), [x, *module.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(fast.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b)


class DoubledLinear(nn.Linear):
    def forward(self, input):
        return super().forward(input) * 2.0


def test_fallback_subclass_with_its_own_forward():
    for norm in NORMS:
        fast, ref = twins(lambda: DoubledLinear(6, 5), norm)
        assert "forward" not in type(fast).__dict__
        x = make_x((4, 6))
        fallback(fast, ref, x)
        with torch.no_grad():
            expected = nn.functional.linear(x, ref.weight, ref.bias) * 2.0
        ref.eval()
        with torch.no_grad():
            close(ref(x), expected)


class Scale(nn.Module):
    def forward(self, w):
        return 0.5 * w


@pytest.mark.parametrize("norm", list(NORMS))
def test_fallback_two_parametrizations_on_weight(norm):
    fast, ref = twins(LAYERS["linear"][0], norm)
    for m in (fast, ref):
        parametrize.register_parametrization(m, "weight", Scale())
    fallback(fast, ref, make_x((4, 6)))


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Conv1d(8, 9, 3, padding="same"), (1, 8, 4)),
        (lambda: nn.Conv1d(8, 9, 3, padding=1, padding_mode="reflect"), (1, 8, 4)),
        (lambda: nn.Conv1d(8, 9, 3, padding=1, padding_mode="circular"), (1, 8, 4)),
        (lambda: nn.Conv1d(8, 9, 3, padding=1), (8, 4)),  # unbatched
        (lambda: nn.Conv2d(8, 9, 3, stride=2, padding=1), (8, 4, 4)),  # unbatched
    ],
    ids=["same", "reflect", "circular", "unbatched-1d", "unbatched-2d"],
)
@pytest.mark.parametrize("norm", list(NORMS))
def test_fallback_conv_geometry(make, shape, norm):
    fallback(*twins(make, norm), make_x(shape))


def test_fallback_when_the_activation_is_not_smaller_than_the_weight():
    # Linear(6, 5) on 8 rows: output 40 >= weight 30, input 48 >= 30.
    for norm in NORMS:
        fallback(*twins(LAYERS["linear"][0], norm), make_x((8, 6)))


def test_activation_ratio_threshold(monkeypatch):
    # Linear(6, 5), weight 30: 4 rows give an output of 20 (2/3 of the weight), 1 row gives 5.
    monkeypatch.setattr(_scaled, "ACTIVATION_RATIO", 4)
    for norm in NORMS:
        fallback(*twins(LAYERS["linear"][0], norm), make_x((4, 6)))
        check_against_reference(*twins(LAYERS["linear"][0], norm), make_x((1, 6)), scaled=True)


def test_fallback_below_the_size_threshold(monkeypatch):
    for norm in NORMS:
        monkeypatch.setitem(_scaled.MIN_WEIGHT_NUMEL, (norm, "linear"), 31)
    for norm in NORMS:
        fallback(*twins(LAYERS["linear"][0], norm), make_x((4, 6)))
    for norm in NORMS:
        monkeypatch.setitem(_scaled.MIN_WEIGHT_NUMEL, (norm, "linear"), 30)
    for norm in NORMS:
        check_against_reference(*twins(LAYERS["linear"][0], norm), make_x((4, 6)), scaled=True)


# ---------------------------------------------------------------- spectral buffers, optimizers


def scramble_uv(*modules, seed=3):
    """Same far-from-converged u, v in every module, so each power step moves them visibly."""
    p = modules[0].parametrizations.weight[0]
    torch.manual_seed(seed)
    u = nn.functional.normalize(torch.randn_like(p._u), dim=0)
    v = nn.functional.normalize(torch.randn_like(p._v), dim=0)
    for m in modules:
        with torch.no_grad():
            m.parametrizations.weight[0]._u.copy_(u)
            m.parametrizations.weight[0]._v.copy_(v)


@pytest.mark.parametrize("calls", [1, 2])
@pytest.mark.parametrize("layer", ["linear", "conv2d", "convtr1d"])
def test_spectral_buffers_follow_the_reference(layer, calls):
    make, shape, fwd = LAYERS[layer]
    fast, ref = twins(make, "spectral", n_power_iterations=2)
    scramble_uv(fast, ref)
    x = make_x(shape)
    u0 = fast.parametrizations.weight[0]._u.clone()
    for step in range(3):
        # Both calls of a step backpropagate: the second call's power step must not change the
        # u, v that the first call's backward uses (else the grads below differ).
        check_against_reference(fast, ref, x, scaled=True, calls=calls, **fwd)
        pf, pr = fast.parametrizations.weight[0], ref.parametrizations.weight[0]
        assert torch.equal(pf._u, pr._u) and torch.equal(pf._v, pr._v), f"step {step}"
    assert not torch.allclose(fast.parametrizations.weight[0]._u, u0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("norm", "layer", "kwargs"),
    [("weight", "linear", {"dim": 0}), ("weight", "linear", {"dim": 1}), ("weight", "conv1d", {}),
     ("weight", "convtr1d", {"dim": None}), ("spectral", "linear", {}), ("spectral", "conv2d", {}),
     ("spectral", "convtr1d", {"coeff": 0.5})],
)
def test_sgd_steps_match(norm, layer, kwargs, dtype):
    make, shape, fwd = LAYERS[layer]
    fast, ref = twins(make, norm, dtype, **kwargs)
    if norm == "spectral":
        scramble_uv(fast, ref)
    x = make_x(shape, dtype)
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (fast, ref)}
    for _ in range(4):
        for m, on in ((fast, True), (ref, False)):
            with pn.fast_paths(on):
                y = m(x, **fwd)
                assert (path(y) == SCALED) is on
                (y.square().mean() + y.mean()).backward()
            opts[m].step()
            opts[m].zero_grad()
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters(), strict=True):
        assert not torch.equal(a, make_twin_param(make, norm, dtype, kwargs, name)), name
        close(a, b, dtype)
    for a, b in zip(fast.buffers(), ref.buffers(), strict=True):
        close(a, b, dtype)


def make_twin_param(make, norm, dtype, kwargs, name):
    """The freshly normalized value of parameter ``name`` (to check the steps moved it)."""
    return dict(normalized(make, norm, dtype, **kwargs).named_parameters())[name]


# ---------------------------------------------------------------- double backward


GRADCHECK_CASES = [
    ("weight", "linear", {"dim": 0}), ("weight", "linear", {"dim": 1}),
    ("weight", "linear", {"dim": None}), ("weight", "conv1d", {"dim": 0}),
    ("weight", "conv1d", {"dim": 1}), ("weight", "convtr1d", {"dim": 0}),
    ("weight", "linear", {"dim": 0, "eps": 1e-3}), ("spectral", "linear", {}),
    ("spectral", "linear", {"dim": 1}), ("spectral", "conv1d", {}), ("spectral", "convtr1d", {}),
    ("spectral", "linear", {"coeff": 0.5}),
]


@pytest.mark.parametrize(("norm", "layer", "kwargs"), GRADCHECK_CASES)
def test_gradcheck_and_gradgradcheck(norm, layer, kwargs):
    make, shape, fwd = LAYERS[layer]
    module = normalized(make, norm, **kwargs)
    module.eval()  # spectral: no power step, so the function is the same at every call
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = make_x(shape)

    def f(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x,), fwd)

    with pn.fast_paths():
        assert path(f(x, *params)) == SCALED
        assert torch.autograd.gradcheck(f, (x, *params))
        assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("norm", list(NORMS))
def test_gradient_penalty_matches_materialized(norm):
    """create_graph=True through the scaled path: second derivatives as the reference's."""
    fast, ref = twins(LAYERS["conv1d"][0], norm)
    x = make_x((1, 8, 4))
    results = []
    for m, on in ((fast, True), (ref, False)):
        with pn.fast_paths(on):
            y = m(x)
            assert (path(y) == SCALED) is on
            (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            grads = torch.autograd.grad(gx.square().sum(), list(m.parameters()))
        results.append((gx, grads))
    close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        close(a, b)


# ---------------------------------------------------------------- module semantics


TORCH_NORMS = {"weight": torch_param.weight_norm, "spectral": torch_param.spectral_norm}


@pytest.mark.parametrize("layer", ["linear", "conv2d", "convtr1d"])
@pytest.mark.parametrize("norm", list(NORMS))
def test_state_dict_and_weight_unchanged(norm, layer):
    make, shape, fwd = LAYERS[layer]
    torch.manual_seed(0)
    base = make().double()
    torch.manual_seed(1)
    theirs = TORCH_NORMS[norm](copy.deepcopy(base))
    torch.manual_seed(1)
    ours = NORMS[norm](copy.deepcopy(base))
    assert "forward" in type(ours).__dict__  # the scaled forward is installed
    sd, sd_theirs = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(sd_theirs)
    for key in sd:
        assert torch.equal(sd[key], sd_theirs[key]), key
    x = make_x(shape)
    theirs.eval()
    ours.eval()
    with pn.fast_paths():
        y = ours(x, **fwd)
        assert path(y) == SCALED
        weight = ours.weight
    close(weight, theirs.weight)
    close(y, theirs(x, **fwd))
    # The normalized weight by hand, float64.
    if norm == "weight":
        g, v = ours.parametrizations.weight.original0, ours.parametrizations.weight.original1
        expected = g * v / v.flatten(1).norm(dim=1).view_as(g)
    else:
        raw = ours.parametrizations.weight.original
        dim = 1 if layer == "convtr1d" else 0
        p = ours.parametrizations.weight[0]
        expected = raw / torch.dot(p._u, raw.movedim(dim, 0).flatten(1) @ p._v)
    close(weight, expected)
    # A checkpoint trained on the scaled path loads into torch's module.
    ours.train()
    with pn.fast_paths():
        ours(x, **fwd).sum().backward()
    theirs.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("norm", list(NORMS))
def test_hooks_run_and_modify(norm):
    fast, ref = twins(LAYERS["linear"][0], norm)
    seen = []
    for m in (fast, ref):
        m.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
        m.register_forward_hook(lambda mod, args, out: seen.append(path(out)) or out + 1.0)
    x = make_x((4, 6))
    ys, grads, _ = run(fast, x, True)
    ys_ref, grads_ref, _ = run(ref, x, False)
    assert seen == [SCALED, "AddmmBackward0"]
    close(ys[0], ys_ref[0])
    for a, b in zip(grads, grads_ref, strict=True):
        close(a, b)
    ref.eval()  # the weight the training forward used (same u, v, no further power step)
    with torch.no_grad():
        close(ys_ref[0], nn.functional.linear(2.0 * x, ref.weight, ref.bias) + 1.0)


@pytest.mark.parametrize(
    ("norm", "undo"),
    [("weight", "remove"), ("spectral", "remove"), ("weight", "fold"), ("spectral", "fold"),
     ("weight", "torch"), ("spectral", "torch")],
)
@pytest.mark.parametrize(("layer", "cls"), [("linear", nn.Linear), ("convtr1d", nn.ConvTranspose1d)])
def test_removal_restores_the_plain_class(norm, undo, layer, cls):
    make, shape, fwd = LAYERS[layer]
    module = normalized(make, norm)
    module.eval()
    x = make_x(shape, requires_grad=True)
    with pn.fast_paths():
        before = module(x, **fwd)
        assert path(before) == SCALED
    if undo == "remove":
        module = pn.remove(module)
    elif undo == "fold":
        module = pn.fold(nn.Sequential(module))[0]
    else:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    assert type(module) is cls
    assert type(module).forward is cls.forward
    with pn.fast_paths():
        after = module(x, **fwd)
    assert path(after) != SCALED
    close(after, before)


@pytest.mark.parametrize("norm", list(NORMS))
def test_deepcopy_computes_the_same(norm):
    module = normalized(LAYERS["conv1d"][0], norm)
    clone = copy.deepcopy(module)
    x = make_x((1, 8, 4))
    (y,), grads, names = run(module, x, True)
    (y_clone,), grads_clone, names_clone = run(clone, x, True)
    assert names == names_clone == [SCALED]
    close(y, y_clone)
    for a, b in zip(grads, grads_clone, strict=True):
        close(a, b)
    for a, b in zip(module.buffers(), clone.buffers(), strict=True):
        assert a is not b
        close(a, b)


def test_fast_paths_off_is_the_materialized_forward():
    for norm in NORMS:
        module = normalized(LAYERS["linear"][0], norm)
        y = module(make_x((4, 6)))
        assert path(y) != SCALED


# ---------------------------------------------------------------- torch.compile


@pytest.mark.slow
# dynamo instantiates every autograd.Function while tracing (torch's own warning, not ours).
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_trains_like_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)

    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            pn.spectral_norm(nn.Conv1d(4, 8, 3)), nn.Tanh(), nn.Flatten(),
            pn.weight_norm(nn.Linear(32, 6)),
        )

    x = make_x((2, 4, 6), torch.float32, requires_grad=False)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    with pn.fast_paths():
        probe = build()
        assert path(probe[0](x)) == SCALED and path(probe[3](torch.randn(2, 32))) == SCALED
        # Both layers are traced into the graph as the scaled Function on the raw weight.
        torch.compile(build(), fullgraph=True, backend=record)(x)
        assert len(graphs) == 1 and graphs[0].count("autograd_function_apply(") == 2, graphs
        assert "_weight_norm" not in graphs[0]
        torch._dynamo.reset()
        eager, compiled_model = build(), build()
        compiled = torch.compile(compiled_model, fullgraph=True)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled_model)]
        for _ in range(3):
            for m, opt in zip((eager, compiled), opts, strict=True):
                loss = m(x).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
    for a, b in zip(eager.state_dict().values(), compiled_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("norm", "kwargs", "attr", "new"),
    [("spectral", {"coeff": 0.1}, "coeff", 100.0), ("weight", {"eps": 1e-3}, "eps", 10.0)],
    ids=["spectral-coeff", "weight-eps"],
)
def test_scaled_forward_follows_a_changed_parametrization_attribute(norm, kwargs, attr, new):
    """The per-layer plan is keyed on the parametrization's dim, eps and coeff too (a coeff
    schedule must reach the scaled forward)."""

    def linear():
        torch.manual_seed(0)
        return NORMS[norm](nn.Linear(6, 5).double(), **kwargs)

    fast, ref = linear(), linear()
    x = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    with pn.fast_paths():
        fast(x)  # caches the plan
    ref(x)  # the same power step
    for m in (fast, ref):
        m.parametrizations.weight[0].eval()
        setattr(m.parametrizations.weight[0], attr, new)
    with pn.fast_paths():
        y = fast(x)
    y_ref = ref(x)
    assert type(y.grad_fn).__name__ == "_ScaledLayerBackward"
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
