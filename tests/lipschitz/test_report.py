"""pn.lipschitz_report / pn.state_dict_report against dense float64 operator matrices."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as torch_param

import paranorm as pn
from paranorm._lipschitz.state_dict import _effective_weights

INPUT = (2, 6, 6)


def small_cnn() -> nn.Sequential:
    """Conv/ReLU/Linear chain: plain, circular, paranorm- and torch-spectrally-normalized layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
        nn.LeakyReLU(0.1),
        pn.spectral_norm(nn.Conv2d(4, 4, 3, stride=2, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        torch_param.spectral_norm(nn.Linear(4 * 3 * 3, 5)),
    )


def operator_matrix(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The layer's linear map (no bias) at ``shape`` as a dense float64 matrix, from F.conv2d."""
    weight = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        return weight
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    padding = module.padding
    if module.padding_mode == "circular":
        p = module.padding[0]
        basis = F.pad(basis, (p, p, p, p), mode="circular")
        padding = 0
    out = F.conv2d(basis, weight, None, module.stride, padding, module.dilation, module.groups)
    return out.reshape(n, -1).T


def oracle(module: nn.Module, shape: tuple[int, ...]) -> float:
    return torch.linalg.matrix_norm(operator_matrix(module, shape), ord=2).item()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_per_layer_values_match_independent_oracles() -> None:
    model = small_cnn()
    x = torch.randn(3, *INPUT)
    report = pn.lipschitz_report(model, x)
    assert [layer.name for layer in report.layers] == ["0", "2", "4", "7"]
    shapes = [(2, 6, 6), (4, 6, 6), (4, 6, 6), (36,)]
    assert [layer.input_shape for layer in report.layers] == shapes
    assert [layer.normalization for layer in report.layers] == [
        None,
        None,
        "spectral_norm (paranorm, method=reshape)",
        "spectral_norm (torch)",
    ]
    model.eval()
    with torch.no_grad():
        for layer, shape in zip(report.layers, shapes, strict=True):
            module = model.get_submodule(layer.name)
            truth = oracle(module, shape)
            reshaped = torch.linalg.matrix_norm(module.weight.double().flatten(1), ord=2).item()
            reshape, power, bound = (layer.estimates[c] for c in ("reshape", "power", "bound"))
            assert reshape.kind == "lower" and reshape.value == pytest.approx(reshaped, rel=1e-4)
            assert power.kind == "lower" and power.value == pytest.approx(truth, rel=1e-3)
            assert power.value <= truth * (1 + 1e-5)
            assert bound.certified and bound.value >= truth * (1 - 1e-5)
            # the same numbers pn.sigma gives for that layer at that shape
            for estimate in layer.estimates.values():
                method = estimate.method
                s = shape if isinstance(module, nn.Conv2d) and method != "reshape" else None
                assert estimate.value == pytest.approx(float(pn.sigma(module, method, s)), rel=1e-6)
    # circular padding, stride 1: the bound is the exact fft value
    circular = report.layers[1].estimates["bound"]
    assert (circular.method, circular.kind) == ("fft", "exact")
    assert circular.value == pytest.approx(oracle(model[2], (4, 6, 6)), rel=1e-5)
    assert report.layers[0].estimates["bound"].method == "gram"
    # the reshaped kernel underestimates the conv's true sigma: the point of the report
    conv = report.layers[0]
    assert conv.estimates["reshape"].value < conv.estimates["power"].value


def test_chain_bound_is_the_product_and_bounds_the_network() -> None:
    model = small_cnn()
    report = pn.lipschitz_report(model, torch.randn(1, *INPUT))
    assert report.network.holds
    product = math.prod(layer.bound.value for layer in report.layers)
    assert report.network.value == pytest.approx(product, rel=1e-12)
    model.eval()
    with torch.no_grad():
        exact = math.prod(
            oracle(model.get_submodule(layer.name), layer.input_shape) for layer in report.layers
        )
        assert report.network.value >= exact * (1 - 1e-5)
        torch.manual_seed(1)
        x, y = torch.randn(256, *INPUT), torch.randn(256, *INPUT)
        y_near = x + 1e-3 * torch.randn(256, *INPUT)
        for a, b in ((x, y), (x, y_near)):
            ratio = (model(a) - model(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
            assert ratio.max().item() <= report.network.value
    assert "nn.Sequential chain" in report.network.statement


def test_model_is_left_exactly_as_it_was() -> None:
    model = small_cnn()
    model.train()
    model[2].eval()  # mixed flags must come back one by one
    before, flags = state(model), {n: m.training for n, m in model.named_modules()}
    x = torch.randn(2, *INPUT)
    rng = torch.get_rng_state()
    pn.lipschitz_report(model, x, methods=("reshape", "power", "gram", "svd"))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # u, v buffers included
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m._forward_pre_hooks for m in model.modules() if not hasattr(m, "weight_orig"))


def test_failed_forward_is_one_clear_error_and_restores_the_model() -> None:
    model = small_cnn().train()
    before = state(model)
    with pytest.raises(pn.ParanormError, match=r"failed on example_input of shape \(1, 3, 6, 6\)"):
        pn.lipschitz_report(model, torch.randn(1, 3, 6, 6))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


def test_residual_model_gets_no_chain_bound_and_says_why() -> None:
    report = pn.lipschitz_report(Residual(), torch.randn(1, 3, 8))
    assert not report.network.holds and report.network.value is None
    assert "not an nn.Sequential" in report.network.statement
    assert "residual" in report.network.statement
    assert report.layers[0].bound is not None  # the layer rows are still there
    assert "no network bound" in str(report)


@pytest.mark.parametrize(
    ("between", "reason"),
    [
        (nn.BatchNorm1d(4), "BatchNorm1d"),
        (nn.GELU(), "GELU is not a known 1-Lipschitz map"),
        (nn.LeakyReLU(2.0), "negative_slope"),
        (nn.MaxPool1d(3, stride=1), "overlapping windows"),
    ],
)
def test_chain_broken_by_a_map_that_is_not_1_lipschitz(between: nn.Module, reason: str) -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), between, nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(1, 2, 8))  # materialize the lazy layer
    report = pn.lipschitz_report(model, torch.randn(1, 2, 8))
    assert not report.network.holds
    assert reason in report.network.statement


def test_one_lipschitz_pooling_and_nested_sequential_keep_the_chain() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv1d(2, 4, 3), nn.Tanh()),
        nn.MaxPool1d(2),
        nn.AvgPool1d(3),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    report = pn.lipschitz_report(model, torch.randn(1, 2, 8))
    assert report.network.holds
    assert [layer.name for layer in report.layers] == ["0.0", "4"]
    assert report.network.value == pytest.approx(
        report.layers[0].bound.value * report.layers[1].bound.value
    )


def test_several_inputs_and_custom_sequential_forward_get_no_chain_bound() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    report = pn.lipschitz_report(TwoInputs(), (torch.randn(1, 3), torch.randn(1, 4)))
    assert [layer.input_shape for layer in report.layers] == [(3,), (4,)]
    assert not report.network.holds and "several inputs" in report.network.statement

    class Doubling(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    report = pn.lipschitz_report(Doubling(nn.Linear(3, 3)), torch.randn(1, 3))
    assert not report.network.holds and "overrides Sequential.forward" in report.network.statement


def test_no_certified_column_means_no_chain_bound_and_weightless_norms_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    report = pn.lipschitz_report(model, torch.randn(1, 3), methods=("reshape", "power"))
    assert not report.network.holds
    assert "methods has none of bound, gram, fft, svd" in report.network.statement
    plain_norm = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4, elementwise_affine=False))
    assert [layer.name for layer in pn.lipschitz_report(plain_norm, torch.randn(1, 3)).layers] == [
        "0"
    ]


def test_layer_called_twice_breaks_the_chain() -> None:
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    report = pn.lipschitz_report(model, torch.randn(1, 4))
    assert not report.network.holds
    assert "once each" in report.network.statement


def test_unreached_layer_is_reported_without_an_operator_sigma() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Conv1d(3, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    report = pn.lipschitz_report(Skips(), torch.randn(1, 3))
    unused = report.layers[1]
    assert unused.calls == 0 and unused.input_shape is None
    assert unused.estimates["power"].value is None
    assert "never reached" in unused.estimates["power"].error
    assert unused.estimates["bound"].certified  # the zero-padding bound needs no input size
    assert any("never reached unused" in note for note in report.notes)


def test_weighted_module_that_is_not_an_operator_is_listed_with_a_reason() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    report = pn.lipschitz_report(model, torch.randn(2, 3))
    norm = report.layers[1]
    assert norm.type == "LayerNorm" and norm.bound is None
    assert "not a Linear, Conv or ConvTranspose" in norm.estimates["reshape"].error
    assert not report.network.holds


def test_to_dict_is_strict_json() -> None:
    report = pn.lipschitz_report(small_cnn(), torch.randn(1, *INPUT))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["network_bound"]["holds"] is True
    assert data["layers"][1]["estimates"]["bound"] == {
        "method": "fft",
        "value": pytest.approx(report.layers[1].bound.value),
        "kind": "exact",
        "iterations": None,
        "error": None,
    }
    assert data["layers"][0]["input_shape"] == [2, 6, 6]


def test_save_plot_writes_a_png_atomically(tmp_path) -> None:
    report = pn.lipschitz_report(small_cnn(), torch.randn(1, *INPUT))
    path = tmp_path / "sigmas.png"
    report.save_plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sigmas.png"]  # no temp file left
    with pytest.raises(pn.ParanormError, match="does not exist"):
        report.save_plot(tmp_path / "missing" / "x.png")
    with pytest.raises(pn.ParanormError, match=r"suffix '.xyz' is not an image format"):
        report.save_plot(tmp_path / "x.xyz")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: pn.lipschitz_report("model", torch.randn(1)), "expected an nn.Module"),
        (
            lambda: pn.lipschitz_report(nn.Linear(2, 2), torch.randn(1, 2), methods=["exact"]),
            "methods",
        ),
        (lambda: pn.lipschitz_report(nn.LazyLinear(2), torch.randn(1, 2)), "uninitialized"),
    ],
)
def test_bad_input_is_a_clear_error(call, match: str) -> None:
    with pytest.raises(pn.ParanormError, match=match):
        call()


# --- from a state_dict alone ---------------------------------------------------------------


def _legacy_and_parametrized() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        torch.nn.utils.weight_norm(nn.Conv1d(2, 3, 3)),
        torch.nn.utils.spectral_norm(nn.Linear(4, 6)),
        torch_param.weight_norm(nn.Linear(6, 5), dim=None),
        torch_param.spectral_norm(nn.ConvTranspose1d(3, 3, 2)),  # square: dim from u, v
        nn.Linear(5, 2),
    )
    model.eval()
    for module in model:
        if isinstance(module, nn.Linear) and hasattr(module, "weight_orig"):
            module(torch.randn(1, 4))  # the legacy hook sets .weight on a forward
    return model


def test_effective_weights_of_every_layout_match_torch_in_eval_mode() -> None:
    model = _legacy_and_parametrized()
    weights = {t.name: t for t in _effective_weights(model.state_dict())[0]}
    expected = {f"{i}.weight": model[i].weight.detach() for i in range(5)}
    assert weights.keys() >= expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(weights[name].value, weight, rtol=1e-5, atol=1e-6)
    assert weights["0.weight"].layout == "weight_norm (legacy, dim=0)"
    assert weights["1.weight"].layout == "spectral_norm (legacy, dim=0)"
    assert weights["2.weight"].layout == "weight_norm (parametrizations)"
    assert weights["3.weight"].layout == "spectral_norm (parametrizations, dim=1 from u, v)"
    assert weights["3.weight"].dim == 1  # square ConvTranspose weight: dim read from u, v


def test_state_dict_reshape_sigma_uses_the_spectral_norm_dim() -> None:
    model = _legacy_and_parametrized()
    report = pn.state_dict_report(model.state_dict())
    row = next(layer for layer in report.layers if layer.name == "3.weight")
    weight = model[3].weight.detach().double()
    by_dim1 = torch.linalg.matrix_norm(weight.transpose(0, 1).flatten(1), ord=2).item()
    assert row.estimates["reshape"].value == pytest.approx(by_dim1, rel=1e-4)
    # One note for every dim read from u, v; the table marks which ("from u, v").
    (note,) = [n for n in report.notes if "u = W v/|W v|" in n]
    assert note.startswith("the spectral norm dim of 3.weight (marked")
    assert "--dim KEY=DIM" in note


def test_notes_name_a_few_layers_and_count_the_rest() -> None:
    state = {f"block{i}.weight": torch.randn(4, 4, 3) for i in range(9)}
    report = pn.state_dict_report(state)
    text = " ".join(str(report).split())  # the notes, unwrapped
    assert "power n/a for block0.weight, block1.weight, block2.weight, block3.weight and 5 more:" in text


def test_unknown_parametrization_is_a_row_with_a_reason_not_a_failure() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(torch_param.orthogonal(nn.Linear(4, 4)), nn.Linear(4, 2))
    report = pn.state_dict_report(model.state_dict())
    rows = {layer.name: layer for layer in report.layers}
    assert rows["0.weight"].bound is None
    assert "effective weight unknown" in rows["0.weight"].estimates["power"].error
    assert rows["1.weight"].bound is not None


def test_state_dict_report_computes_what_the_tensors_allow() -> None:
    model = _legacy_and_parametrized()
    report = pn.state_dict_report(model.state_dict(), source="ckpt.pt")
    rows = {layer.name: layer for layer in report.layers}
    assert list(rows) == ["0.weight", "1.weight", "2.weight", "3.weight", "4.weight"]
    for i in (1, 2, 4):  # Linear weights: every column, against the exact matrix norm
        truth = torch.linalg.matrix_norm(model[i].weight.detach().double(), ord=2).item()
        row = rows[f"{i}.weight"]
        assert row.estimates["power"].value == pytest.approx(truth, rel=1e-4)
        assert row.estimates["bound"].value >= truth * (1 - 1e-6)
    conv = rows["0.weight"]
    assert conv.estimates["power"].value is None
    assert "not in a state_dict" in conv.estimates["power"].error
    # the weight-only bound holds for this conv at any stride, padding amount and input size
    with torch.no_grad():
        for stride, padding, n in ((1, 0, 5), (1, 2, 9), (2, 1, 12)):
            other = nn.Conv1d(2, 3, 3, stride=stride, padding=padding)
            other.weight.copy_(model[0].weight)
            assert conv.estimates["bound"].value >= oracle_1d(other, (2, n)) * (1 - 1e-6)
    assert not report.network.holds and "how its layers connect" in report.network.statement
    assert any("does not store" in note for note in report.notes)
    assert "n/a" in str(report)


def oracle_1d(module: nn.Conv1d, shape: tuple[int, int]) -> float:
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv1d(basis, module.weight.double(), None, module.stride, module.padding)
    return torch.linalg.matrix_norm(out.reshape(n, -1), ord=2).item()


@pytest.mark.parametrize(
    "layer",
    [
        {"groups": 2},
        {"dilation": 2, "padding": 2},
        {"padding": 1, "padding_mode": "circular"},
        {"transposed": True, "stride": 2, "padding": 1},
        {"transposed": True, "groups": 2, "output_padding": 1, "stride": 2},
    ],
)
def test_weight_only_conv_bound_covers_stride_dilation_groups_circular_transposed(layer) -> None:
    """The state_dict bound (gram of the weight as a dense stride-1 conv) holds for each reading."""
    torch.manual_seed(0)
    weight = torch.randn(4, 2, 3)
    (row,) = pn.state_dict_report({"c.weight": weight}, methods=("bound",)).layers
    layer = dict(layer)
    transposed = layer.pop("transposed", False)
    groups, padding_mode = layer.get("groups", 1), layer.pop("padding_mode", "zeros")
    n = 10
    channels = weight.shape[0] if transposed else weight.shape[1] * groups
    basis = torch.eye(channels * n, dtype=torch.float64).reshape(-1, channels, n)
    w = weight.double()
    if transposed:
        out = F.conv_transpose1d(basis, w, None, **layer)
    elif padding_mode == "circular":
        pad = layer.pop("padding")
        out = F.conv1d(F.pad(basis, (pad, pad), mode="circular"), w, None, **layer)
    else:
        out = F.conv1d(basis, w, None, **layer)
    truth = torch.linalg.matrix_norm(out.reshape(channels * n, -1), ord=2).item()
    assert row.bound.value >= truth * (1 - 1e-6)


def test_state_dict_report_rejects_a_non_mapping() -> None:
    with pytest.raises(pn.ParanormError, match="mapping of names to tensors"):
        pn.state_dict_report([torch.ones(2, 2)])  # type: ignore[arg-type]
