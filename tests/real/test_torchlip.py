"""paranorm on deel-torchlip's 1-Lipschitz layers: SpectralConv2d, SpectralLinear, FrobeniusLinear.

torchlip chains torch's spectral_norm parametrization with its own (Bjorck orthonormalization,
the conv's Lipschitz correction; FrobeniusLinear has only its own). paranorm lists the spectral
norms torch registered, folds the whole chain bit-exactly, and bounds each layer from above.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import paranorm as pn
from real._checks import check_report, dense_sigma, torch_norms, torch_removed

torchlip = pytest.importorskip("deel.torchlip")


def lipschitz_net() -> nn.Module:
    torch.manual_seed(0)
    return torchlip.Sequential(
        torchlip.SpectralConv2d(2, 4, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.SpectralConv2d(4, 4, 3, padding=1),
        nn.Flatten(),
        torchlip.SpectralLinear(64, 8),
        torchlip.GroupSort2(),
        torchlip.FrobeniusLinear(8, 3),
    ).eval()


X = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))


def test_the_spectral_norms_are_listed_and_the_frobenius_norm_is_not():
    model = lipschitz_net()
    registered = torch_norms(model)
    assert registered == {"0": ("spectral_norm", "SpectralConv2d", 0), "2": ("spectral_norm", "SpectralConv2d", 0),
                          "4": ("spectral_norm", "SpectralLinear", 0)}  # fmt: skip
    infos = pn.normalizations(model)
    assert [(i.path, i.kind, i.implementation, i.dim) for i in infos] == [
        (path, kind, "torch", dim) for path, (kind, _, dim) in registered.items()
    ]


def test_fold_bakes_each_chain_bit_exactly_like_torch():
    model = lipschitz_net()
    with torch.no_grad():
        before = model(X)
        folded = pn.fold(copy.deepcopy(model))
        by_torch = torch_removed(model)
        assert torch.equal(folded(X), before)
        assert torch.equal(by_torch(X), before)
    for path in ("0", "2", "4"):  # the whole chain (spectral norm, Bjorck, ...) is one tensor now
        assert torch.equal(folded.get_submodule(path).weight, by_torch.get_submodule(path).weight)
        assert isinstance(folded.get_submodule(path).weight, nn.Parameter)
    assert pn.normalizations(folded) == []
    # FrobeniusLinear has no normalization of torch's or paranorm's: its parametrization stays.
    assert [type(p).__name__ for p in folded.get_submodule("6").parametrizations.weight] == [
        "_FrobeniusNorm"
    ]


def test_the_folded_model_matches_torchlips_own_export():
    model = lipschitz_net()
    with torch.no_grad():
        before = model(X)
        exported = model.vanilla_export()
        torch.testing.assert_close(exported(X), before, rtol=0, atol=0)
        torch.testing.assert_close(pn.fold(copy.deepcopy(model))(X), exported(X), rtol=0, atol=0)


@pytest.mark.slow
def test_lipschitz_report_bounds_the_dense_operator():
    model = lipschitz_net()
    report = pn.lipschitz_report(model, X[:1])
    assert [layer.name for layer in report.layers] == ["0", "2", "4", "6"]
    check_report(report, model)
    for layer in report.layers:  # torchlip's layers are 1-Lipschitz by construction
        assert dense_sigma(model.get_submodule(layer.name), layer.input_shape) <= 1 + 1e-4, (
            layer.name
        )
