"""data_dependent_init: per-unit (0, 1) pre-activations, a float64 oracle, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations

import paranorm as pn
from paranorm import ParanormError

TOL = 1e-4


def _measure(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each layer's output, captured by hooks of the test's own on a plain forward."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o, key=key: seen.__setitem__(key, o.detach().double()))
        for key, m in layers.items()
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def _per_unit(out: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = out.movedim(axis, 0).flatten(1)
    return flat.mean(1), flat.std(1, correction=0)


def _deep_chain() -> tuple[nn.Module, dict[str, tuple[nn.Module, int]]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        pn.weight_norm(nn.Conv1d(3, 8, 5, padding=2)),
        nn.ReLU(),
        pn.weight_norm(nn.Conv1d(8, 8, 3, stride=2)),
        nn.Tanh(),
        pn.weight_norm(nn.ConvTranspose1d(8, 6, 4, stride=2), dim=1),
        nn.ReLU(),
        nn.Flatten(),
        pn.weight_norm(nn.Linear(6 * 32, 16)),
        nn.ReLU(),
        pn.weight_norm(nn.Linear(16, 16)),
        nn.ELU(),
        pn.weight_norm(nn.Linear(16, 4)),
    )
    layers = {"0": (model[0], 1), "2": (model[2], 1), "4": (model[4], 1),
              "7": (model[7], 1), "9": (model[9], 1), "11": (model[11], 1)}
    return model, layers


def test_deep_chain_is_standardized_per_unit():
    model, layers = _deep_chain()
    x = torch.randn(64, 3, 32) * 3.0 + 1.5
    before = _measure(model, x, {k: m for k, (m, _) in layers.items()})
    summaries = pn.data_dependent_init(model, x)
    assert [s.path for s in summaries] == list(layers)
    assert [s.layer for s in summaries] == ["Conv1d", "Conv1d", "ConvTranspose1d", "Linear", "Linear", "Linear"]
    after = _measure(model, x, {k: m for k, (m, _) in layers.items()})
    for s in summaries:
        mean, std = _per_unit(after[s.path], layers[s.path][1])
        assert mean.abs().max() < TOL, s.path
        assert (std - 1).abs().max() < TOL, s.path
        assert s.units == mean.numel()
        assert abs(s.mean_after - float(mean.mean())) < TOL
        assert abs(s.std_after - float(std.mean())) < TOL
    # It changed something: before the init the first conv's outputs were not standardized.
    _, std0 = _per_unit(before["0"], 1)
    assert (std0 - 1).abs().max() > 0.1


def test_float64_oracle_for_one_layer_uses_v_over_norm_v():
    torch.manual_seed(1)
    layer = pn.weight_norm(nn.Linear(5, 3).double())
    v = layer.parametrizations.weight.original1
    with torch.no_grad():
        v.mul_(7.0)  # ||v|| far from 1: TF-Addons' raw-v statistics would be 7x off
        layer.parametrizations.weight.original0.fill_(0.3)
    x = torch.randn(100, 5, dtype=torch.float64) * 2 + 0.5
    vd = v.detach().clone()
    t = x @ (vd / vd.norm(dim=1, keepdim=True)).T  # hand computation, float64
    g_expected = 1 / t.std(0, correction=0)
    b_expected = -t.mean(0) / t.std(0, correction=0)
    pn.data_dependent_init(layer, x)
    g = layer.parametrizations.weight.original0.detach().squeeze(1)
    torch.testing.assert_close(g, g_expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.detach(), b_expected, rtol=1e-12, atol=1e-12)
    raw = 1 / (x @ vd.T).std(0, correction=0)
    assert not torch.allclose(g, raw, rtol=0.5)
    # v is untouched: only g and b are set.
    torch.testing.assert_close(layer.parametrizations.weight.original1.detach(), vd, rtol=0, atol=0)


@pytest.mark.parametrize("flavour", ["torch", "torch-legacy"])
def test_torchs_weight_norms_are_initialized_too(flavour, recwarn):
    torch.manual_seed(2)
    if flavour == "torch":
        layers = [torch_parametrizations.weight_norm(nn.Conv2d(2, 4, 3)), torch_parametrizations.weight_norm(nn.Conv2d(4, 3, 3))]
    else:
        layers = [nn.utils.weight_norm(nn.Conv2d(2, 4, 3)), nn.utils.weight_norm(nn.Conv2d(4, 3, 3))]
    model = nn.Sequential(layers[0], nn.ReLU(), layers[1])
    x = torch.randn(16, 2, 10, 10) * 4
    pn.data_dependent_init(model, x)
    out = _measure(model, x, {"0": layers[0], "2": layers[1]})
    for key in out:
        mean, std = _per_unit(out[key], 1)
        assert mean.abs().max() < TOL and (std - 1).abs().max() < TOL


def test_mode_restored_no_grad_and_no_side_effects():
    torch.manual_seed(3)
    model = nn.Sequential(pn.weight_norm(nn.Linear(4, 8)), nn.Dropout(0.5), nn.BatchNorm1d(8),
                          pn.spectral_norm(nn.Linear(8, 8)), pn.weight_norm(nn.Linear(8, 2)))
    model.train()
    model[2].eval()  # a mixed-mode model keeps each module's own mode
    bn_mean = model[2].running_mean.clone()
    u = model[3].parametrizations.weight[0]._u.clone()
    x = torch.randn(32, 4)
    pn.data_dependent_init(model, x)
    assert model.training and model[0].training and not model[2].training
    assert torch.equal(model[2].running_mean, bn_mean)
    assert torch.equal(model[3].parametrizations.weight[0]._u, u)
    assert all(p.grad is None for p in model.parameters())


def test_layer_called_twice_is_initialized_on_first_call():
    torch.manual_seed(4)
    shared = pn.weight_norm(nn.Linear(6, 6))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = shared

        def forward(self, x):
            return self.shared(torch.relu(self.shared(x)))

    x = torch.randn(50, 6) * 3
    (summary,) = pn.data_dependent_init(Twice(), x)
    with torch.no_grad():
        first = shared(x)
    assert first.mean(0).abs().max() < TOL and (first.std(0, correction=0) - 1).abs().max() < TOL
    assert summary.path == "shared"


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_layer_without_bias_gets_its_scale_and_says_the_mean_is_left():
    torch.manual_seed(6)
    model = nn.Sequential(pn.weight_norm(nn.Linear(3, 4)), pn.weight_norm(nn.Linear(4, 2, bias=False)))
    x = torch.randn(64, 3) * 2 + 1
    first, second = pn.data_dependent_init(model, x)
    assert (first.status, second.status) == ("initialized", "partial")
    assert "no bias" in second.detail and "1 (Linear, 2 units): partial (no bias" in str(second)
    with torch.no_grad():
        y = model(x)
    assert (y.std(0, correction=0) - 1).abs().max() < TOL  # the scale is set per unit


def test_strict_refuses_a_partial_layer_and_leaves_the_model_untouched():
    model = nn.Sequential(pn.weight_norm(nn.Linear(3, 4)), pn.weight_norm(nn.Linear(4, 2, bias=False)))
    before = _params(model)
    with pytest.raises(ParanormError, match=r"strict=True.*1 \(Linear\): partial, no bias"):
        pn.data_dependent_init(model, torch.randn(8, 3), strict=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batch_of_one_is_refused():
    model = pn.weight_norm(nn.Linear(3, 4))
    with pytest.raises(ParanormError, match=r"1 example.*batch of many"):
        pn.data_dependent_init(model, torch.randn(1, 3))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = pn.weight_norm(nn.Linear(3, 4))
        self.unused = pn.weight_norm(nn.Linear(4, 4))

    def forward(self, x):
        return self.used(x)


def test_layer_never_reached_is_skipped_or_with_strict_refused():
    torch.manual_seed(5)
    model = _Branchy()
    before = _params(model)
    with pytest.raises(ParanormError, match=r"unused.*never reached"):
        pn.data_dependent_init(model, torch.randn(8, 3), strict=True)
    # The reached layer was initialized during the pass, then restored.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    used, unused = pn.data_dependent_init(model, torch.randn(8, 3))
    assert (used.path, used.status, unused.path, unused.status) == ("used", "initialized", "unused", "skipped")
    assert "never reached" in unused.detail
    assert torch.equal(model.unused.parametrizations.weight.original0, before["unused.parametrizations.weight.original0"])


@pytest.mark.parametrize(
    ("make", "x"),
    [
        (lambda: pn.weight_norm(nn.Linear(3, 4), dim=1), torch.randn(64, 3) * 3 + 1),
        (lambda: pn.weight_norm(nn.Linear(3, 4), dim=None), torch.randn(64, 3) * 3 + 1),
        # torch's default dim=0 on a ConvTranspose scales its input channels (HiFi-GAN's upsamplers)
        (lambda: pn.weight_norm(nn.ConvTranspose1d(3, 4, 4, stride=2)), torch.randn(16, 3, 9) * 3 + 1),
        (lambda: torch.nn.utils.weight_norm(nn.ConvTranspose1d(3, 4, 4, stride=2)), torch.randn(16, 3, 9) - 2),
    ],
)
def test_g_that_does_not_index_output_units_sets_a_common_scale(make, x):
    torch.manual_seed(7)
    layer = make()
    (summary,) = pn.data_dependent_init(layer, x)
    assert summary.status == "partial" and "common scale" in summary.detail
    with torch.no_grad():
        y = layer(x)
    unit_axis = 1 if y.ndim == 3 else 1 if isinstance(layer, nn.ConvTranspose1d) else y.ndim - 1
    flat = y.movedim(unit_axis, 0).flatten(1).double()
    assert flat.mean(1).abs().max() < TOL  # centred per unit
    assert abs(flat.var(1, correction=0).mean().item() - 1) < TOL  # average variance 1


def test_constant_units_keep_their_g_and_b():
    torch.manual_seed(8)
    layer = pn.weight_norm(nn.Linear(3, 4))
    x = torch.randn(32, 3)
    x[:, 2] = 0  # makes unit 0, whose v reads only input 2, constant
    with torch.no_grad():
        layer.parametrizations.weight.original1[0] = torch.tensor([0.0, 0.0, 1.0])
    g0, b0 = layer.parametrizations.weight.original0[0].clone(), layer.bias[0].clone()
    (summary,) = pn.data_dependent_init(layer, x)
    assert summary.status == "partial" and "1 of 4 units are constant" in summary.detail
    assert torch.equal(layer.parametrizations.weight.original0[0], g0) and torch.equal(layer.bias[0], b0)
    with torch.no_grad():
        y = layer(x)[:, 1:]
    assert y.mean(0).abs().max() < TOL and (y.std(0, correction=0) - 1).abs().max() < TOL


def test_no_weight_norm_and_a_dead_layer():
    with pytest.raises(ParanormError, match="no weight-normed layer"):
        pn.data_dependent_init(nn.Linear(3, 4), torch.randn(8, 3))
    dead = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), pn.weight_norm(nn.Linear(4, 2)))
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)
    (summary,) = pn.data_dependent_init(dead, torch.randn(8, 3))
    assert summary.status == "skipped" and "constant" in summary.detail
    with pytest.raises(ParanormError, match="constant"):
        pn.data_dependent_init(dead, torch.randn(8, 3), strict=True)
