"""The fused spectral-norm path (paranorm.fast_paths) against torch's parametrizations.

Values and gradients of the fused path must equal torch's reference graph to rounding: float64
tightly, float32 to tolerance; the default path is bit-exact (tests/test_spectral_norm.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_param
from torch.nn.utils import parametrize

import paranorm as pn
from paranorm._fast import fused as _fast
from paranorm._sigma.matrix import reshape_sigma, weight_to_matrix


@pytest.fixture(autouse=True)
def _tiny_weights_fused(small_layers_fused):
    """These tests use tiny layers, to be quick: let them take the fused path."""


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (4, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), (2, 3, 9)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 6)),
    "convtr1d": (lambda: nn.ConvTranspose1d(4, 3, 4, stride=2), (2, 4, 7)),
    "convtr2d": (lambda: nn.ConvTranspose2d(4, 3, 3), (2, 4, 5, 5)),
}
TOL = {torch.float64: {"rtol": 1e-11, "atol": 1e-12}, torch.float32: {"rtol": 2e-5, "atol": 2e-6}}


def twins(kind, dtype=torch.float64, seed=0, **kwargs):
    make, shape = LAYERS[kind]
    torch.manual_seed(seed)
    layer = make().to(dtype)
    torch.manual_seed(seed + 1)
    theirs = torch_param.spectral_norm(copy.deepcopy(layer), **kwargs)
    torch.manual_seed(seed + 1)
    ours = pn.spectral_norm(copy.deepcopy(layer), **kwargs)
    torch.manual_seed(seed + 2)
    return theirs, ours, torch.randn(shape, dtype=dtype)


def uv(module):
    p = module.parametrizations.weight[0]
    return p._u, p._v


def close(a, b, dtype):
    torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("kind", "dim"),
    [("linear", None), ("linear", 1), ("conv1d", None), ("conv2d", None), ("conv2d", 2),
     ("convtr1d", None), ("convtr2d", None), ("convtr1d", 0)],
)
def test_training_steps_match_torch(kind, dim, dtype):
    theirs, ours, x = twins(kind, dtype, dim=dim)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (theirs, ours)]
    for _ in range(3):
        y_theirs = theirs(x)
        with pn.fast_paths():
            assert _fast.fused_applies(ours.parametrizations.weight.original, uv(ours)[0])
            y_ours = ours(x)
            y_ours.square().mean().backward()
        y_theirs.square().mean().backward()
        close(y_ours, y_theirs, dtype)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            close(a.grad, b.grad, dtype)
        for a, b in zip(uv(ours), uv(theirs), strict=True):
            close(a, b, dtype)
        for opt in opts:
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("kind", ["linear", "conv2d", "convtr1d"])
def test_eval_mode_with_grad_matches_torch(kind):
    theirs, ours, x = twins(kind)
    theirs.eval()
    ours.eval()
    u_before = uv(ours)[0].clone()
    with pn.fast_paths():
        y_ours = ours(x)
        (y_ours ** 3).sum().backward()
    y_theirs = theirs(x)
    (y_theirs ** 3).sum().backward()
    assert torch.equal(uv(ours)[0], u_before)  # no power step in eval
    close(y_ours, y_theirs, torch.float64)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        close(a.grad, b.grad, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_two_forwards_per_step_match_torch(dtype):
    theirs, ours, real = twins("conv2d", dtype, seed=3)
    fake = torch.randn_like(real)
    (theirs(real).mean() - theirs(fake).mean()).backward()
    with pn.fast_paths():
        (ours(real).mean() - ours(fake).mean()).backward()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        close(a.grad, b.grad, dtype)
    for a, b in zip(uv(ours), uv(theirs), strict=True):
        close(a, b, dtype)


@pytest.mark.parametrize("coeff", [0.5, 50.0])  # clamp active (sigma > c), inactive (sigma < c)
@pytest.mark.parametrize("kind", ["linear", "convtr1d"])
def test_soft_matches_reference_path(kind, coeff):
    make, shape = LAYERS[kind]
    torch.manual_seed(8)
    ours = pn.spectral_norm(make().double(), coeff=coeff)
    x = torch.randn(shape, dtype=torch.float64)
    reference = copy.deepcopy(ours)
    with pn.fast_paths():
        (ours(x) ** 2).sum().backward()
    (reference(x) ** 2).sum().backward()
    for a, b in zip(ours.parameters(), reference.parameters(), strict=True):
        close(a.grad, b.grad, torch.float64)
    close(ours.weight, reference.weight, torch.float64)


@pytest.mark.parametrize(("dim", "coeff"), [(0, None), (1, None), (0, 0.3), (2, 0.3)])
def test_gradcheck_float64(dim, coeff):
    torch.manual_seed(4)
    weight = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    rows = weight.shape[dim]
    u = torch.nn.functional.normalize(torch.randn(rows, dtype=torch.float64), dim=0)
    v = torch.nn.functional.normalize(torch.randn(weight.numel() // rows, dtype=torch.float64), dim=0)

    def fn(w):  # eval mode: sigma = u^T W v, a function of W alone
        with torch.no_grad():
            sigma = reshape_sigma(weight_to_matrix(w, dim), u, v)
        return _fast.fused_divide(w, sigma, u, v, dim=dim, coeff=coeff)

    assert torch.autograd.gradcheck(fn, (weight,))
    assert torch.autograd.gradgradcheck(fn, (weight,))  # double backward: the reference graph


def test_normalize_once_matches_torch_cached():
    theirs, ours, real = twins("conv1d", seed=5)
    fake = torch.randn_like(real)
    with parametrize.cached():
        (theirs(real).mean() - theirs(fake).mean()).backward()
    u_before = uv(ours)[0].clone()
    with pn.fast_paths(), pn.normalize_once():
        (ours(real).mean() - ours(fake).mean()).backward()
    assert not torch.equal(uv(ours)[0], u_before)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        close(a.grad, b.grad, torch.float64)
    for a, b in zip(uv(ours), uv(theirs), strict=True):  # one power step, as torch cached
        close(a, b, torch.float64)


def test_normalize_once_weight_norm_equals_two_calls():
    torch.manual_seed(6)
    plain = pn.weight_norm(nn.Linear(5, 3).double())
    once = copy.deepcopy(plain)
    a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    (plain(a).sum() + plain(b).square().sum()).backward()
    with pn.normalize_once():
        (once(a).sum() + once(b).square().sum()).backward()
    for p, q in zip(plain.parameters(), once.parameters(), strict=True):
        close(p.grad, q.grad, torch.float64)


@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_normalize_once_gives_a_deep_copy_its_own_weight(norm):
    """torch keys cached() weights by the module its class was made for; a deepcopy (an EMA
    copy) shares the class, so without paranorm's per-instance key it would read the original's."""
    torch.manual_seed(8)
    original = norm(nn.Linear(4, 3).double())
    copy_ = copy.deepcopy(original)
    with torch.no_grad():
        for p in copy_.parameters():
            p.mul_(-2.0)
    x = torch.randn(2, 4, dtype=torch.float64)
    expected = {}
    for name, m in (("original", original), ("copy", copy_)):
        twin = copy.deepcopy(m)  # outside the block: each computes its own weight
        y = twin(x)
        y.square().sum().backward()
        expected[name] = (y.detach(), [p.grad for p in twin.parameters()])
    with pn.normalize_once():
        ys = {"original": original(x), "copy": copy_(x)}
        (ys["original"].square().sum() + ys["copy"].square().sum()).backward()
    for name, m in (("original", original), ("copy", copy_)):
        close(ys[name].detach(), expected[name][0], torch.float64)
        for p, g in zip(m.parameters(), expected[name][1], strict=True):
            assert p.grad is not None, name
            close(p.grad, g, torch.float64)
    with pn.normalize_once():  # torch's own parametrization still shares (documented)
        theirs = torch_param.weight_norm(nn.Linear(4, 3).double())
        assert copy.deepcopy(theirs).weight is theirs.weight


# torch.func's first use imports a module that calls torch.jit.script (torch 2.13).
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.usefixtures("small_layers_scaled")
def test_torch_func_and_forward_ad_take_the_reference_graph(norm, batch):
    """The fast paths' Functions have no vmap/jvp: under torch.func and forward AD they step
    aside. Batch 1 would take the scaled forward (thresholds lowered), batch 64 the fused one."""
    from torch.autograd import forward_ad

    torch.manual_seed(9)
    layer = norm(nn.Linear(6, 5).double()).eval()  # eval: the same function at every call
    x = torch.randn(batch, 6, dtype=torch.float64)
    tangent = torch.randn_like(x)

    def derivatives():
        jac = torch.func.jacrev(layer)(x)
        batched = torch.func.vmap(layer)(x.unsqueeze(1))
        with forward_ad.dual_level():
            jvp = forward_ad.unpack_dual(layer(forward_ad.make_dual(x, tangent))).tangent
        return jac, batched, jvp

    expected = derivatives()
    with pn.fast_paths():
        assert (type(layer(x.requires_grad_()).grad_fn).__name__ == "_ScaledLayerBackward") == (batch == 1)
        x = x.detach()
        got = derivatives()
    for a, b in zip(got, expected, strict=True):
        close(a, b, torch.float64)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.usefixtures("small_layers_scaled")
def test_jit_trace_under_fast_paths_records_no_python_call(norm, batch, tmp_path):
    """A trace would record the fast paths' Functions as Python calls that cannot be saved."""
    torch.manual_seed(10)
    layer = norm(nn.Linear(6, 5).double()).eval()
    x = torch.randn(batch, 6, dtype=torch.float64)
    with pn.fast_paths():
        traced = torch.jit.trace(layer, x)
    assert not any(node.kind() == "prim::PythonOp" for node in traced.graph.nodes())
    torch.jit.save(traced, tmp_path / "layer.pt")
    close(torch.jit.load(tmp_path / "layer.pt")(x), layer(x), torch.float64)


def test_switch_is_off_by_default_and_scoped():
    assert not pn.fast_paths_enabled()
    with pn.fast_paths():
        assert pn.fast_paths_enabled()
        with pn.fast_paths(False):
            assert not pn.fast_paths_enabled()
        assert pn.fast_paths_enabled()
    assert not pn.fast_paths_enabled()
    assert pn.set_fast_paths(True) is False
    assert pn.set_fast_paths(False) is True


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_take_the_reference_path(dtype):
    torch.manual_seed(7)
    layer = pn.spectral_norm(nn.Linear(6, 5).to(dtype))
    weight = layer.parametrizations.weight.original
    with pn.fast_paths():
        assert not _fast.fused_applies(weight, uv(layer)[0])
        with_fast = layer.eval().weight
    assert torch.equal(with_fast, layer.weight)


def test_fast_path_off_under_autocast_and_for_1d():
    layer = pn.spectral_norm(nn.Linear(6, 5))
    weight = layer.parametrizations.weight.original
    with pn.fast_paths():
        assert _fast.fused_applies(weight, uv(layer)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _fast.fused_applies(weight, uv(layer)[0])
        assert not _fast.fused_applies(torch.randn(5), torch.randn(5))


@pytest.mark.slow
# dynamo itself instantiates autograd.Function subclasses while tracing them (torch 2.13).
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_compiles_fullgraph_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(9)
    model = nn.Sequential(pn.spectral_norm(nn.Linear(8, 16)), nn.ReLU(), pn.weight_norm(nn.Linear(16, 4)))
    reference = copy.deepcopy(model)
    x = torch.randn(3, 8)
    y_ref = reference(x)  # eager, default path
    y_ref.square().sum().backward()
    try:
        with pn.fast_paths():
            # fullgraph=True raises on any graph break; aot_eager traces forward and backward.
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
            y = compiled(x)
            y.square().sum().backward()
    finally:
        torch._dynamo.reset()  # leave no compiled code behind for other tests
    close(y, y_ref, torch.float32)
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        close(a.grad, b.grad, torch.float32)
    close(uv(model[0])[0], uv(reference[0])[0], torch.float32)  # the power step ran, in place


def test_channels_last_weight_matches_torch():
    theirs, ours, x = twins("conv2d", seed=10)
    for module in (theirs, ours):
        module.to(memory_format=torch.channels_last)
    assert not ours.parametrizations.weight.original.is_contiguous()
    (theirs(x) ** 2).sum().backward()
    with pn.fast_paths():
        (ours(x) ** 2).sum().backward()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        close(a.grad, b.grad, torch.float64)


def test_fused_soft_spectral_gradient_at_the_float32_clamp_boundary():
    """At sigma == float32(coeff) < coeff the clamp is active in float32 (torch passes the
    gradient at equality); the fused backward must test it in the weight's dtype too."""
    def layer():
        m = pn.spectral_norm(nn.Linear(2, 2, bias=False), coeff=0.7)
        p = m.parametrizations.weight
        with torch.no_grad():
            p.original.copy_(torch.tensor([[0.7, 0.0], [0.0, 0.1]]))  # sigma = float32(0.7)
            p[0]._u.copy_(torch.tensor([1.0, 0.0]))
            p[0]._v.copy_(torch.tensor([1.0, 0.0]))
        return m.eval()

    x = torch.tensor([[1.0, 2.0]] * 3)  # output larger than the weight: not the scaled forward
    grads = []
    for fast in (False, True):
        m = layer()
        with pn.fast_paths(fast):
            y = m(x)
            y.sum().backward()
        assert type(y.grad_fn).__name__ != "_ScaledLayerBackward"
        grads.append(m.parametrizations.weight.original.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_small_weights_keep_torchs_graph_bit_for_bit(monkeypatch):
    """Under FUSED_MIN_NUMEL the fused path costs more than it saves: torch's exact graph runs."""
    monkeypatch.setattr(_fast, "FUSED_MIN_NUMEL", 31)  # between the two layers below
    calls = []
    monkeypatch.setattr(_fast._SpectralDivide, "apply", lambda *a: calls.append(a) or a[0] / a[1])
    theirs, ours, x = twins("linear", torch.float32)  # 30-element weight: under the threshold
    with pn.fast_paths():
        ours(x).sum().backward()
    theirs(x).sum().backward()
    assert calls == []
    assert torch.equal(ours.weight, theirs.weight)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    big = pn.spectral_norm(nn.Linear(8, 4))  # 32 elements: fused
    with pn.fast_paths():
        big(torch.randn(2, 8))
    assert len(calls) == 1


def test_normalize_once_with_two_backwards_says_what_to_do():
    """DCGAN's errD_real.backward(); errD_fake.backward() inside one block."""
    d = pn.spectral_norm(nn.Linear(4, 1))
    with pytest.raises(pn.ParanormError, match=r"Sum the losses and call backward once") as info:
        with pn.normalize_once():
            d(torch.randn(3, 4)).mean().backward()
            d(torch.randn(3, 4)).mean().backward()
    assert isinstance(info.value, RuntimeError)  # code that caught torch's error still does
    with pn.normalize_once():  # the fix the message gives works
        (d(torch.randn(3, 4)).mean() + d(torch.randn(3, 4)).mean()).backward()
