"""paranorm.checkpoint: detect and convert layouts, checked against torch's own modules."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import parametrize

from paranorm import CheckpointError, fold
from paranorm.checkpoint import CheckpointWarning, convert, detect

LAYOUTS = ("legacy", "parametrizations", "plain")

# name -> (factory, input shape)
MODULES = {
    "Linear": (lambda: nn.Linear(5, 3), (2, 5)),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), (2, 2, 7)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, (3, 2)), (2, 2, 5, 5)),
    "Conv3d": (lambda: nn.Conv3d(2, 3, (2, 3, 1)), (1, 2, 4, 4, 3)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(2, 3, 3), (2, 2, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(2, 3, (3, 2)), (2, 2, 4, 4)),
}
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def wn_cases():
    for name, (factory, _) in MODULES.items():
        ndim = factory().weight.ndim
        for dim in (0, 1, 2, None):
            if dim is None or dim < ndim:
                yield name, dim


def sn_cases():
    for name in MODULES:
        for dim in (None, 0):  # None: torch's default (1 for ConvTranspose)
            yield name, dim


def build(name: str, kind: str, layout: str, dim, dtype, seed: int = 0) -> nn.Module:
    """A torch module in ``layout`` built with torch's own API (legacy hooks or parametrizations)."""
    torch.manual_seed(seed)
    module = MODULES[name][0]().to(dtype)
    if layout == "legacy":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "weight_norm":
                nn.utils.weight_norm(module, dim=dim)
            else:
                nn.utils.spectral_norm(module, dim=dim)
    elif layout == "parametrizations":
        if kind == "weight_norm":
            P.weight_norm(module, dim=dim)
        else:
            P.spectral_norm(module, dim=dim)
    return module


def run(module: nn.Module, name: str, dtype) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(MODULES[name][1], dtype=torch.float64).to(dtype)
    with torch.no_grad():
        return module.eval()(x)


def sn_dim(name: str, dim):
    if dim is not None:
        return dim
    return 1 if name.startswith("ConvTranspose") else 0


def source(name, kind, layout, dim, dtype):
    """A trained-ish source module and its state_dict in ``layout``; plain from the legacy one."""
    module = build(name, kind, "legacy" if layout == "plain" else layout, dim, dtype)
    if kind == "spectral_norm":
        module.train()
        torch.manual_seed(2)
        for _ in range(3):  # a few training forwards: u, v advance as in real training
            module(torch.randn(MODULES[name][1], dtype=torch.float64).to(dtype))
    module.eval()
    if layout == "plain":
        run(module, name, dtype)  # the legacy hook sets module.weight in the forward
        plain = MODULES[name][0]().to(dtype)
        plain.load_state_dict({"weight": module.weight.detach().clone(), "bias": module.bias.detach()})
        return plain
    return module


def tolerance(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "dim"), list(wn_cases()))
def test_weight_norm_every_layout_pair(name, dim, dtype):
    for src in LAYOUTS:
        module = source(name, "weight_norm", src, dim, dtype)
        state = module.state_dict()
        expected = run(module, name, dtype)
        for dst in LAYOUTS:
            kwargs = {}
            if src == "plain" and dst != "plain":
                kwargs = {"normalize": {"weight": "weight_norm"}, "dims": {"weight": dim}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointWarning)
                converted = convert(state, to=dst, **kwargs)
            target = build(name, "weight_norm", dst, dim, dtype, seed=9)
            target.load_state_dict(converted, strict=True)
            got = run(target, name, dtype)
            if (src != "plain" and dst != "plain") or src == dst:
                assert torch.equal(got, expected), (src, dst)  # renames only: bit-exact
            else:
                torch.testing.assert_close(got, expected, rtol=tolerance(dtype), atol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "dim"), list(sn_cases()))
def test_spectral_norm_every_layout_pair(name, dim, dtype):
    for src in LAYOUTS:
        module = source(name, "spectral_norm", src, dim, dtype)
        state = module.state_dict()
        expected = run(module, name, dtype)
        for dst in LAYOUTS:
            kwargs = {}
            if src == "plain" and dst != "plain":
                kwargs = {"normalize": {"weight": "spectral_norm"}, "dims": {"weight": sn_dim(name, dim)}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CheckpointWarning)
                converted = convert(state, to=dst, **kwargs)
            target = build(name, "spectral_norm", dst, dim, dtype, seed=9)
            target.load_state_dict(converted, strict=True)
            got = run(target, name, dtype)
            if src == "plain" and dst != "plain":
                # u, v are the exact singular vectors: the layer computes W / sigma_exact(W).
                weight = state["weight"].double()
                matrix = weight.movedim(sn_dim(name, dim), 0).flatten(1)
                oracle = MODULES[name][0]().double()
                oracle.load_state_dict({"weight": weight / torch.linalg.matrix_norm(matrix, ord=2), "bias": state["bias"].double()})
                expected_here = run(oracle, name, torch.float64).to(dtype)
                torch.testing.assert_close(got, expected_here, rtol=tolerance(dtype), atol=tolerance(dtype))
            elif src != "plain" and dst != "plain":
                assert torch.equal(got, expected), (src, dst)  # renames only: bit-exact
            else:
                torch.testing.assert_close(got, expected, rtol=tolerance(dtype), atol=tolerance(dtype))


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm"])
def test_round_trip_parametrizations_legacy_is_bit_exact_and_shares_tensors(kind):
    module = build("Conv2d", kind, "parametrizations", 0, torch.float32)
    state = module.state_dict()
    before = {k: (id(t), t.clone()) for k, t in state.items()}
    legacy = convert(state, to="legacy")
    back = convert(legacy, to="parametrizations")
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert back[key] is tensor  # renamed, never copied
    assert {k: id(t) for k, t in state.items()} == {k: i for k, (i, _) in before.items()}
    assert all(torch.equal(state[k], t) for k, (_, t) in before.items())  # input untouched
    assert back._metadata[""].get("spectral_norm", {}) == {}
    if kind == "spectral_norm":
        assert legacy._metadata[""]["spectral_norm"] == {"weight.version": 1}


def test_untouched_keys_pass_through_same_object_dtype_device():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2).double())
    P.weight_norm(model[0])
    state = model.state_dict()
    out = convert(state, to="legacy")
    for key in ("1.weight", "1.running_mean", "1.num_batches_tracked", "2.weight", "2.bias", "0.bias"):
        assert out[key] is state[key]
    assert list(out) == ["0.bias", "0.weight_g", "0.weight_v", "1.weight", "1.bias", "1.running_mean",
                         "1.running_var", "1.num_batches_tracked", "2.weight", "2.bias"]


def test_detect_reports_layout_kind_dim_keys_and_disambiguates_weight_v():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(
            nn.utils.weight_norm(nn.Conv1d(2, 3, 3), dim=1),
            nn.utils.spectral_norm(nn.Conv1d(3, 4, 3)),
            P.weight_norm(nn.Linear(4, 5), dim=None),
            P.spectral_norm(nn.ConvTranspose1d(5, 6, 3)),
            nn.Linear(6, 2),
        )
    entries = {e.name: e for e in detect(model.state_dict())}
    wn = entries["0.weight"]
    assert (wn.layout, wn.kind, wn.dim, wn.dim_known, wn.keys) == ("legacy", "weight_norm", 1, True, ("0.weight_g", "0.weight_v"))
    sn = entries["1.weight"]
    assert (sn.layout, sn.kind, sn.dim, sn.version) == ("legacy", "spectral_norm", 0, 1)
    assert sn.keys == ("1.weight_orig", "1.weight_u", "1.weight_v")
    whole = entries["2.weight"]
    assert (whole.layout, whole.kind, whole.dim, whole.dim_known) == ("parametrizations", "weight_norm", None, True)
    tr = entries["3.weight"]
    assert (tr.kind, tr.dim) == ("spectral_norm", 1)
    assert entries["4.weight"].layout == "plain" and entries["4.weight"].kind is None
    assert entries["0.bias"].layout == "plain"


def test_mixed_layouts_in_one_checkpoint_are_valid():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mixed = nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 4)), P.weight_norm(nn.Linear(4, 4)),
                              nn.utils.spectral_norm(nn.Linear(4, 5)), P.spectral_norm(nn.Linear(5, 2)))
    mixed.train()(torch.randn(3, 3))
    mixed.eval()
    x = torch.randn(6, 3)
    expected = mixed(x)
    for to in LAYOUTS:
        out = convert(mixed.state_dict(), to=to)
        assert {e.layout for e in detect(out) if e.kind} <= {to}
        plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 5), nn.Linear(5, 2))
        plain.load_state_dict(convert(out, to="plain"))
        torch.testing.assert_close(plain(x), expected, rtol=1e-6, atol=1e-7)


def test_meta_device_and_non_contiguous():
    with torch.device("meta"):
        meta = P.weight_norm(nn.Conv2d(3, 4, 3), dim=1)
        meta_sn = P.spectral_norm(nn.Conv1d(3, 4, 3))
    for module in (meta, meta_sn):
        for to in LAYOUTS:
            out = convert(module.state_dict(), to=to)
            assert all(t.device.type == "meta" for t in out.values())
        assert convert(module.state_dict(), to="plain")["weight"].shape == module.weight.shape
    # Non-contiguous tensors give the same numbers as their contiguous copies.
    torch.manual_seed(0)
    v = torch.randn(5, 4, 3).transpose(0, 2)  # (3, 4, 5), not contiguous
    state = {"weight_g": torch.norm_except_dim(v, 2, 0), "weight_v": v}
    assert not v.is_contiguous()
    got = convert(state, to="plain")["weight"]
    want = convert({k: t.contiguous() for k, t in state.items()}, to="plain")["weight"]
    assert torch.equal(got, want)
    torch.testing.assert_close(got, v)  # g = ||v|| so the weight is v itself


def version0(module: nn.Module) -> OrderedDict:
    """A version-0 legacy spectral-norm state_dict (what torch < 1.1 saved): W stored, no v."""
    state = module.state_dict()
    old = OrderedDict((k, t) for k, t in state.items() if k != "weight_v")
    old["weight"] = module.weight.detach().clone()
    old._metadata = copy.deepcopy(state._metadata)
    old._metadata[""]["spectral_norm"]["weight.version"] = 0
    return old


def test_version0_legacy_spectral_norm_matches_torchs_own_loader():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        src = nn.utils.spectral_norm(nn.Conv1d(3, 5, 3))
    for _ in range(5):
        src(torch.randn(2, 3, 8))
    old = version0(src)
    ref = nn.utils.spectral_norm(nn.Conv1d(3, 5, 3))
    ref.load_state_dict(old)  # torch's own v0 hook solves for v
    entry = {e.name: e for e in detect(old)}["weight"]
    assert (entry.layout, entry.kind, entry.version) == ("legacy", "spectral_norm", 0)
    with pytest.warns(CheckpointWarning, match="version-0"):
        legacy = convert(old, to="legacy")
    torch.testing.assert_close(legacy["weight_v"], ref.weight_v, rtol=1e-5, atol=1e-6)
    assert legacy._metadata[""]["spectral_norm"]["weight.version"] == 1
    assert torch.equal(convert(old, to="plain")["weight"], old["weight"])
    with pytest.warns(CheckpointWarning):
        param = convert(old, to="parametrizations")
    target = P.spectral_norm(nn.Conv1d(3, 5, 3)).eval()
    target.load_state_dict(param)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(target(x), ref.eval()(x), rtol=1e-5, atol=1e-6)


def test_ambiguous_spectral_dim_read_from_u_v_or_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fresh = nn.utils.spectral_norm(nn.Conv2d(4, 4, 3))  # u, v random: no forward yet
    with pytest.raises(CheckpointError, match=r"ambiguous.*dims=\{'weight': DIM\}"):
        convert(fresh.state_dict(), to="plain")
    assert {e.name: e for e in detect(fresh.state_dict())}["weight"].dim_candidates == (0, 1)
    # Passing the dim works without a warning.
    out = convert(fresh.state_dict(), to="plain", dims={"weight": 0})
    fresh.eval()(torch.randn(1, 4, 5, 5))
    torch.testing.assert_close(out["weight"], fresh.weight)
    # After training forwards the invariant u = W v / |W v| picks dim 0, and says so.
    fresh.train()(torch.randn(1, 4, 5, 5))
    with pytest.warns(CheckpointWarning, match="dim 0 read from u and v"):
        out = convert(fresh.state_dict(), to="plain")
    fresh.eval()(torch.randn(1, 4, 5, 5))
    torch.testing.assert_close(out["weight"], fresh.weight)
    with pytest.raises(CheckpointError, match="does not fit"):
        convert(fresh.state_dict(), to="plain", dims={"weight": 2})


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"conv.weight_g": torch.ones(2, 1), "conv.bias": torch.ones(2)}, "no partner 'conv.weight_v'"),
        ({"conv.weight_v": torch.ones(2, 3)}, "half of its group"),
        ({"parametrizations.weight.original0": torch.ones(2, 1)}, "no partner 'original1'"),
        ({"weight_orig": torch.ones(2, 3), "weight_v": torch.ones(3)}, "'weight_u' is missing"),
        ({"parametrizations.weight.original": torch.ones(2, 3), "parametrizations.weight.0._u": torch.ones(2)}, "'0._v' is missing"),
        ({"weight_g": torch.ones(2, 1), "weight_v": torch.ones(2, 3), "parametrizations.weight.original0": torch.ones(2, 1),
          "parametrizations.weight.original1": torch.ones(2, 3)}, "two layouts"),
        ({"weight": torch.ones(2, 3), "weight_g": torch.ones(2, 1), "weight_v": torch.ones(2, 3)}, "two layouts"),
        ({"weight": torch.ones(2, 3), "parametrizations.weight.original0": torch.ones(2, 1),
          "parametrizations.weight.original1": torch.ones(2, 3)}, "two layouts"),
        ({"weight_g": torch.ones(2, 1), "weight_v": torch.ones(2, 3), "weight_orig": torch.ones(2, 3),
          "weight_u": torch.ones(2)}, "two layouts"),
        ({"weight_g": 3.0, "weight_v": torch.ones(2, 3)}, "holds a float, not a tensor"),
    ],
)
def test_corrupt_state_dicts_are_clear_errors(state, match):
    with pytest.raises(CheckpointError, match=match):
        detect(state)
    with pytest.raises(CheckpointError, match=match):
        convert(state, to="plain")


def test_names_that_only_look_normalized_are_plain():
    state = {"gate_g": torch.ones(3), "attn.in_proj_v": torch.ones(4), "bias_u": torch.ones(2)}
    assert [(e.layout, e.kind) for e in detect(state)] == [("plain", None)] * 3
    out = convert(state, to="parametrizations")
    assert all(out[k] is t for k, t in state.items())


def test_argument_errors():
    state = P.weight_norm(nn.Linear(3, 2)).state_dict()
    with pytest.raises(CheckpointError, match="not a layout"):
        convert(state, to="fused")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"dims names 'conv.weight'"):
        convert(state, to="plain", dims={"conv.weight": 0})
    with pytest.raises(CheckpointError, match="already weight_norm"):
        convert(state, to="legacy", normalize={"weight": "spectral_norm"})
    with pytest.raises(CheckpointError, match=r"needs the dim|dims="):
        convert(nn.Conv1d(2, 3, 3).state_dict(), to="legacy", normalize={"weight": "spectral_norm"})
    with pytest.raises(CheckpointError, match="zero norm"):
        convert({"weight": torch.zeros(2, 3)}, to="legacy", normalize={"weight": "weight_norm"})


class Scale(nn.Module):
    """A parametrization with a buffer, chained after a normalization (as deel-torchlip's
    Bjorck step is after its spectral norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(3.0))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.factor


def chained_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(P.spectral_norm(nn.Linear(3, 4)), P.weight_norm(nn.Linear(4, 2)), P.weight_norm(nn.Linear(2, 2)))
    parametrize.register_parametrization(model[0], "weight", Scale())
    parametrize.register_parametrization(model[1], "weight", Scale())
    return model


def test_other_parametrizations_are_kept_only_when_asked():
    module = P.orthogonal(nn.Linear(3, 3))
    state = module.state_dict()
    entry = {e.name: e for e in detect(state)}["weight"]
    assert (entry.layout, entry.kind) == ("parametrizations", None)
    # Already in their layout: nothing to convert.
    assert convert(state, to="parametrizations")["parametrizations.weight.original"] is state["parametrizations.weight.original"]
    for to in ("plain", "legacy"):
        with pytest.raises(CheckpointError, match=r"neither weight nor spectral norm.*keep_unconverted"):
            convert(state, to=to)
    with pytest.warns(CheckpointWarning, match="'weight' kept as it was"):
        kept = convert(state, to="plain", keep_unconverted=True)
    assert kept["parametrizations.weight.original"] is state["parametrizations.weight.original"]


def test_a_normalization_chained_with_another_parametrization_is_not_read_as_the_normalization():
    model = chained_model()
    state = model.state_dict()
    assert "0.parametrizations.weight.1.factor" in state
    entries = {e.name: e for e in detect(state)}
    # Read as weight or spectral norm alone, the plain weight would miss the factor 3.
    assert entries["0.weight"].kind is None and entries["1.weight"].kind is None
    assert entries["2.weight"].kind == "weight_norm"
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) cannot be converted to 'plain': '0.weight' \(a chain of parametrizations \(spectral_norm \+ 1.factor\)\); '1.weight'.*paranorm.fold"):
        convert(state, to="plain")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = convert(state, to="plain", keep_unconverted=True)
    assert [str(w.message)[:28] for w in caught] == ["'0.weight' kept as it was, n", "'1.weight' kept as it was, n"]
    chained_keys = [k for k in state if k.startswith(("0.", "1."))]
    assert all(plain[k] is state[k] for k in chained_keys)
    model.eval()
    assert torch.equal(plain["2.weight"], model[2].weight.detach())
    # What fold gives is what the message offers: every parametrization evaluated.
    folded = fold(chained_model().eval()).state_dict()
    assert torch.equal(folded["0.weight"], model[0].weight.detach())


def test_one_dimensional_spectral_norm_legacy_to_parametrizations():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = nn.utils.spectral_norm(nn.BatchNorm1d(4), name="weight")
    legacy.weight_orig.data = torch.tensor([1.0, 2.0, 2.0, 4.0])
    legacy.train()(torch.randn(3, 4))
    with pytest.warns(CheckpointWarning, match="1-D"):
        out = convert(legacy.state_dict(), to="parametrizations")
    assert "parametrizations.weight.0._u" not in out
    # Legacy's 1-D sigma is u . (w v); after a forward it equals |w| exactly up to rounding.
    plain = convert(legacy.state_dict(), to="plain")["weight"]
    torch.testing.assert_close(plain, torch.tensor([1.0, 2.0, 2.0, 4.0]) / 5.0)


def norm_except(v: torch.Tensor, dim) -> torch.Tensor:
    """Independent float64 ||v|| over every axis but dim, kept-dim."""
    v = v.double()
    if dim is None:
        return (v * v).sum().sqrt()
    axes = [a for a in range(v.ndim) if a != dim]
    return (v * v).sum(dim=axes, keepdim=True).sqrt() if axes else v.abs()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dim_index=st.integers(0, 4),
    whole=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_weight_norm_any_shape_matches_float64_formula(shape, dim_index, whole, seed):
    torch.manual_seed(seed)
    v = torch.randn(shape, dtype=torch.float64) + 0.1
    dim = None if whole else dim_index % len(shape)
    g = torch.rand(norm_except(v, dim).shape, dtype=torch.float64) + 0.5
    legacy = {"weight_g": g, "weight_v": v}
    param = convert(legacy, to="parametrizations")
    assert param["parametrizations.weight.original0"] is g
    back = convert(param, to="legacy")
    assert back["weight_g"] is g and back["weight_v"] is v
    plain = convert(param, to="plain")["weight"]
    torch.testing.assert_close(plain, g * v / norm_except(v, dim), rtol=1e-12, atol=1e-12)
    entry = detect(legacy)[0]
    assert dim in entry.dim_candidates


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 6), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_spectral_norm_any_shape_matches_torch(rows, cols, k, seed):
    torch.manual_seed(seed)
    module = P.spectral_norm(nn.Conv1d(cols, rows, k).double())
    state = module.state_dict()
    legacy = convert(state, to="legacy")
    assert legacy["weight_u"] is state["parametrizations.weight.0._u"]
    plain = convert(legacy, to="plain", dims={"weight": 0})["weight"]
    module.eval()
    torch.testing.assert_close(plain, module.weight, rtol=1e-12, atol=1e-12)


def test_plain_one_dimensional_weight_to_spectral_norm_loads_into_torch():
    state = nn.LayerNorm(4).state_dict()
    state["weight"] = torch.tensor([1.0, 2.0, 2.0, 4.0])
    for layout, make in (("parametrizations", P.spectral_norm), ("legacy", nn.utils.spectral_norm)):
        with pytest.warns(CheckpointWarning, match="sigma=5"):
            out = convert(state, to=layout, normalize={"weight": "spectral_norm"})
        module = make(nn.LayerNorm(4)).eval()
        module.load_state_dict(out, strict=True)
        x = torch.randn(3, 4)
        reference = nn.functional.layer_norm(x, (4,), state["weight"] / 5.0, state["bias"])
        torch.testing.assert_close(module(x), reference)
    with pytest.raises(CheckpointError, match="out of range"):
        convert(nn.Linear(3, 2).state_dict(), to="legacy", normalize={"weight": "spectral_norm"}, dims={"weight": 5})


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    exponent=st.integers(-44, 37),
    g_exponent=st.integers(-20, 20),
    seed=st.integers(0, 2**16),
)
def test_weight_norm_plain_weight_at_any_magnitude(shape, exponent, g_exponent, seed):
    # Never NaN or inf from finite inputs: torch's kernel where its squares are in range,
    # float64 on scaled slices elsewhere, or a refusal for a zero slice (0/0).
    torch.manual_seed(seed)
    v = (torch.randn(shape, dtype=torch.float64) * 10.0**exponent).float()
    g = (torch.rand(shape[0], *([1] * (len(shape) - 1)), dtype=torch.float64) * 10.0**g_exponent).float()
    state = {"weight_g": g, "weight_v": v}
    if bool((v.flatten(1).abs().amax(dim=1) == 0).any()):
        with pytest.raises(CheckpointError, match="0/0"):
            convert(state, to="plain")
        return
    out = convert(state, to="plain")["weight"]
    assert torch.isfinite(out).all()
    unit = v.double() / v.double().flatten(1).abs().amax(dim=1).reshape(-1, *([1] * (len(shape) - 1)))
    want = g.double() * unit / unit.flatten(1).norm(dim=1).reshape(g.shape)
    torch.testing.assert_close(out.double(), want.float().double(), rtol=3e-6, atol=2.0**-149)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_version0_legacy_spectral_norm_of_extreme_weights(scale):
    # torch's own loader's pinverse overflows (or underflows) at these magnitudes; v is solved
    # on W / 2^k in float64 and keeps u^T W_orig v = sigma.
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64) * scale
    u = torch.randn(3, dtype=torch.float64)
    u = (u / u.norm()).float()
    sigma = torch.linalg.matrix_norm(w, ord=2)
    state = OrderedDict(weight_orig=w.float(), weight_u=u, weight=(w / sigma).float())
    state._metadata = {"": {"spectral_norm": {"weight.version": 0}}}
    with pytest.warns(CheckpointWarning, match="version-0"):
        v = convert(state, to="parametrizations")["parametrizations.weight.0._v"]
    assert torch.isfinite(v).all()
    implied = float(u.double() @ state["weight_orig"].double() @ v.double())
    assert implied == pytest.approx(float(sigma), rel=1e-5)
