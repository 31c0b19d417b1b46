"""The kernel-domain Gram bound: certified against dense frequency sampling, tight, adaptive."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm._sigma import fourier, gram
from sigma._oracles import symbol_sup_oracle


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((6, 4, 3), 1), ((4, 6, 5), 1), ((8, 4, 3), 2), ((5, 5, 1), 1), ((3, 2, 3, 5), 1), ((4, 4, 2, 2), 2)],
)
def test_bound_holds_and_tightens(shape, groups):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    truth = symbol_sup_oracle(w, groups)
    bounds = [gram.kernel_gram_bound(w, groups, n).item() for n in range(1, 7)]
    assert all(b >= truth * (1 - 1e-12) for b in bounds), (truth, bounds)
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(bounds))  # tighter with more steps
    assert bounds[-1] <= truth * 1.01


def test_symbol_sup_bounds_a_polynomial_between_its_samples():
    # q = |p|^2 for a random p of degree 6: its 13 samples fix it, and the bound clears its
    # max on a 100x finer grid by little.
    torch.manual_seed(1)
    p = torch.randn(7, dtype=torch.float64)
    fine = torch.fft.rfft(p, n=13 * 100).abs().square().max()
    samples = torch.fft.rfft(p, n=13).abs().square()[None]
    for step in range(4):
        bound = gram.symbol_sup(samples, [13], [6], step)
        assert fine <= bound.item() <= fine * (1 + 4e-4 * 2 ** (step + 1))


def test_symbol_sup_in_two_dimensions():
    torch.manual_seed(2)
    p = torch.randn(3, 4, dtype=torch.float64)
    fine = torch.fft.rfft2(p, s=(200, 200)).abs().square().max()
    samples = torch.fft.rfft2(p, s=(5, 7)).abs().square()[None]
    bound = gram.symbol_sup(samples, [5, 7], [2, 3], 2).item()
    assert fine <= bound <= fine * 1.01


def test_default_steps_stop_within_the_tolerance():
    torch.manual_seed(3)
    conv = nn.Conv1d(24, 24, 5, padding=2).double()
    truth = symbol_sup_oracle(conv.weight.detach())
    result = pn.sigma(conv, "gram")
    assert truth <= float(result) <= truth * (1 + gram.GRAM_TOLERANCE) * 1.001
    assert 1 <= result.iterations <= gram.kernel_gram_iterations(conv.weight, 1, gram.GRAM_KERNEL_BUDGET)
    # Steps asked for are taken, all of them.
    assert pn.sigma(conv, "gram", iterations=3).iterations == 3


def test_kernel_bound_is_differentiable():
    torch.manual_seed(4)
    w = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(weight):
        return gram.kernel_gram_bound(weight, 1, 3)

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-5)


def test_default_steps_fit_in_memory():
    # A 64-channel 3x3 conv used to be refused: its default steps needed more than 1 GiB.
    conv = nn.Conv2d(64, 64, 3, padding=1)
    n = gram.kernel_gram_iterations(conv.weight, 1, gram.GRAM_KERNEL_BUDGET)
    from paranorm._sigma.cost import MAX_BYTES, gram_cost
    from paranorm._sigma.layer import layer_of

    assert gram_cost(layer_of(conv), None, n).bytes <= MAX_BYTES
    assert math.isfinite(float(pn.sigma(conv, "gram")))


def test_fft_sizes_are_fast_and_large_enough():
    for n in range(1, 2000):
        m = fourier.fft_size(n)
        assert m >= n
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1


def test_a_looser_tolerance_takes_fewer_steps_and_stays_certified():
    torch.manual_seed(5)
    conv = nn.Conv1d(24, 24, 7, padding=3)
    truth = symbol_sup_oracle(conv.weight.detach().double())
    results = {tol: pn.sigma(conv, "gram", tolerance=tol) for tol in (0.0, 0.01, 0.05, 0.3)}
    steps = [r.iterations for r in results.values()]
    values = [float(r) for r in results.values()]
    assert steps == sorted(steps, reverse=True) and steps[0] > steps[-1]
    assert values == sorted(values)  # fewer steps: a bound at least as large
    assert all(v >= truth for v in values)
    assert values[2] <= truth * 1.05 and values[1] <= truth * 1.01


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("gram", {"tolerance": -0.1}, "finite number >= 0"),
        ("gram", {"tolerance": float("nan")}, "finite number >= 0"),
        ("gram", {"tolerance": True}, "finite number >= 0"),
        ("gram", {"tolerance": 0.1, "iterations": 3}, "pass one of them"),
        ("power", {"tolerance": 0.1, "input_shape": (4, 8)}, "method='gram' only"),
    ],
)
def test_bad_tolerance_is_refused(method, kwargs, match):
    with pytest.raises(pn.ParanormError, match=match):
        pn.sigma(nn.Conv1d(4, 4, 3), method, **kwargs)
    with pytest.raises(pn.ParanormError, match="finite number >= 0"):
        pn.state_dict_report({"w": torch.randn(4, 4, 3)}, tolerance=-1)
