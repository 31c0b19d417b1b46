"""The sampled bound: sigma on a grid of frequencies, certified between its points."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm._sigma import gram, sampled
from paranorm._sigma.cost import MAX_BYTES, MAX_WORK
from sigma._oracles import symbol_sup_oracle


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((6, 4, 3), 1), ((4, 6, 5), 1), ((8, 4, 3), 2), ((5, 5, 1), 1), ((16, 16, 11), 1), ((3, 2, 3, 5), 1), ((4, 4, 2, 2), 2)],
)
@pytest.mark.parametrize("tolerance", [0.01, 0.05, 0.3])
def test_bound_holds_and_is_within_the_tolerance(shape, groups, tolerance):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    truth = symbol_sup_oracle(w, groups, points=2048 if w.ndim == 3 else 256)
    bound, lower = (t.item() for t in sampled.sampled_bound(w, groups, tolerance))
    assert lower <= truth * (1 + 1e-12)  # sigma at one of the frequencies
    assert bound >= truth * (1 - 1e-12)
    assert bound <= lower * (1 + sampled.GRID_SHARE * tolerance) * (1 + 1e-12)


@pytest.mark.parametrize(("kernel", "tolerance"), [(4, 0.2), (12, 0.2), (25, 0.2), (5, 0.05)])
def test_a_peak_between_the_points_is_still_covered(kernel, tolerance):
    # One channel whose |K(w)| peaks half a grid step away from the points: the largest
    # sample misses the peak, and Bernstein's factor must make up for it.
    (n,) = sampled.sampling_grid([kernel], tolerance)
    w0 = 2 * math.pi * (n // 4 + 0.5) / n
    taps = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    w = torch.cos(w0 * taps).reshape(1, 1, kernel)
    truth = symbol_sup_oracle(w, points=1 << 16)
    samples = torch.fft.rfft(w.flatten(), n=n).abs().max().item()
    bound, lower = (t.item() for t in sampled.sampled_bound(w, 1, tolerance))
    assert lower == pytest.approx(samples, rel=1e-12) and samples < truth * (1 - 1e-3)
    assert truth <= bound <= lower * (1 + sampled.GRID_SHARE * tolerance) * (1 + 1e-12)


def test_points_that_the_ranking_misses_are_computed_exactly():
    # From e_1, power steps see nothing of the matrix whose sigma is largest (it is 0 on e_1's
    # row): the Cholesky test fails there, and its eigenvalues decide the bound.
    mats = torch.zeros(12, 3, 3, dtype=torch.complex128)
    mats[:, 0, 0] = 1.0
    mats[7] = torch.diag(torch.tensor([0.0, 2.0, 0.5], dtype=torch.complex128))
    bound, lower, at = sampled.largest_singular_value(mats)
    assert lower.item() == pytest.approx(4.0) and bound.item() == pytest.approx(4.0) and at == 7


def test_every_matrix_is_below_the_bound():
    torch.manual_seed(1)
    mats = torch.randn(40, 6, 9, dtype=torch.complex128)
    bound, lower, at = sampled.largest_singular_value(mats)
    sigmas = torch.linalg.matrix_norm(mats, ord=2).square()
    assert lower.item() == pytest.approx(sigmas[at].item(), rel=1e-12)
    top = sigmas.max().item()
    assert lower.item() <= top * (1 + 1e-12) <= bound.item() * (1 + 2e-12)
    assert bound.item() <= lower.item() * (1 + sampled.TEST_MARGIN) * (1 + 1e-12)


def test_the_bound_is_differentiable():
    torch.manual_seed(3)
    w = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda weight: sampled.sampled_bound(weight, 1, 0.05)[0], (w,))
    wide = nn.Conv1d(128, 128, 5)
    result = pn.sigma(wide, "gram")
    result.value.backward()
    assert result.iterations == 0 and wide.weight.grad is not None and wide.weight.grad.abs().sum() > 0


def test_a_zero_kernel_has_a_zero_bound():
    bound, lower = sampled.sampled_bound(torch.zeros(4, 4, 3, dtype=torch.float64), 1, 0.01)
    assert bound.item() == 0 and lower.item() == 0


def test_sigma_samples_where_it_costs_less():
    # A vocoder's wide one-dimensional conv: sampled (no Gram steps), within the tolerance
    # of the truth; a small two-dimensional one keeps the Gram iteration.
    torch.manual_seed(2)
    wide = nn.Conv1d(128, 128, 7, padding=9, dilation=3).double()
    truth = symbol_sup_oracle(wide.weight.detach(), points=1024)
    result = pn.sigma(wide, "gram")
    assert result.iterations == 0 and result.kind == "upper"
    assert truth <= float(result) <= truth * (1 + sampled.GRID_SHARE * gram.GRAM_TOLERANCE) * 1.001
    assert pn.sigma(nn.Conv2d(32, 32, 3, padding=1), "gram").iterations > 0
    # Asked-for steps, and the parametrizations' fixed steps, are Gram steps.
    assert pn.sigma(wide, "gram", iterations=3).iterations == 3


@pytest.mark.parametrize(
    ("shape", "tolerance", "cheaper"),
    [
        ((256, 256, 11), 0.01, True),
        ((256, 256, 3), 0.05, True),
        ((512, 256, 16), 0.05, True),
        ((32, 32, 3, 9), 0.05, False),  # many small matrices: the calls per point dominate
        ((64, 64, 3, 3), 0.01, False),
        ((4096, 4096, 3), 0.01, False),  # the points' matrices would not fit in memory
        ((256, 256, 11), 0.0, False),  # no tolerance: only the Gram steps can get there
    ],
)
def test_the_cheaper_method_is_chosen(shape, tolerance, cheaper):
    assert sampled.sampling_is_cheaper(shape, 1, tolerance, MAX_BYTES, MAX_WORK) is cheaper
    if cheaper:  # 121 points of 256 x 256 products and tests: about 4e9 multiply-adds
        assert not sampled.sampling_is_cheaper(shape, 1, tolerance, MAX_BYTES, 1e8)


def test_the_grid_meets_the_tolerance_on_every_axis():
    for kernel in ([3], [11], [16], [3, 9], [1, 5], [3, 3, 3]):
        for tolerance in (0.01, 0.05, 0.3):
            grid = sampled.sampling_grid(kernel, tolerance)
            assert all(n >= k for n, k in zip(grid, kernel, strict=True))
            factor = sampled.bernstein_factor([k - 1 for k in kernel], grid)
            assert (1 + sampled.TEST_MARGIN) * factor <= (1 + sampled.GRID_SHARE * tolerance) ** 2
