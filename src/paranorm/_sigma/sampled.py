"""A certified bound on sup_w sigma_max(K(w)) from the exact sigma at the points of a grid.

A convolution's sigma, for any input size, is at most sup_w ||K(w)||, K(w) the DFT of its
kernel at the frequency w (its symbol; Delattre, Barthelemy, Allauzen 2024, arXiv 2402.00240).
With H(w) = K(w) K(w)^H, a Hermitian trigonometric polynomial of degree D_a = k_a - 1 on each
axis: at the maximizer (w*, v*) of v^H H(w) v, f(w) = v*^H H(w) v* has its largest value and a
zero gradient, so on the line to the nearest point w_j of a grid of N_a points per axis,
Bernstein's inequality (|f''| <= s^2 sup |f| for f of exponential type s) gives

    sup_w sigma_max(K(w))^2 = f(w*) <= lambda_max(H(w_j)) / (1 - x^2 / 2),  x = pi sum_a D_a / N_a.

The grid is chosen so that this is within half the ``tolerance`` of the largest sigma at its
points (a lower estimate: it is sigma at a frequency), and max_j lambda_max(H(w_j)) is bounded
by a Cholesky test of every point against a little more than the largest of a few exact ones
(:func:`largest_singular_value`), in float64. On one-dimensional kernels this costs about a
Gram step's products and none of its DFTs; on the larger grids of two- and three-dimensional
kernels the Gram iteration wins (:func:`sampling_is_cheaper`).
"""

from __future__ import annotations

import math

import torch

from .fourier import fft_size

__all__ = [
    "GRID_SHARE",
    "POINT_OVERHEAD",
    "TEST_COST",
    "bernstein_factor",
    "sampled_bound",
    "sampling_grid",
    "sampling_is_cheaper",
]

#: The share of the tolerance that the grid may take: the bound lies about that far above
#: sigma (a Gram step's bound lands anywhere within the tolerance; half keeps the two alike).
GRID_SHARE = 0.5
#: Testing a c x c Hermitian matrix against a bound (:func:`largest_singular_value`), in c^3
#: complex products (measured: about 1), and what each point costs beside (the calls per
#: matrix), in complex multiply-adds (measured: about 150 us a point on 2 cores).
TEST_COST = 1.0
POINT_OVERHEAD = 7.5e5
#: Gram steps' work beside their products (DFTs, copies), as a multiple of the products
#: (measured: about 3), and the fewest steps a random kernel needs for a bound within 5%.
GRAM_OVERHEAD = 3.0
GRAM_FEWEST_STEPS = 4


def bernstein_factor(degrees: list[int], points: list[int]) -> float:
    """1 / (1 - x^2 / 2), x = pi sum_a D_a / N_a: how far the sup of a nonnegative
    trigonometric polynomial of ``degrees`` D_a can lie above its largest value on a grid of
    ``points`` N_a per axis (inf where x^2 >= 2)."""
    x = math.pi * sum(d / n for d, n in zip(degrees, points, strict=True))
    return 1 / (1 - x * x / 2) if x * x < 2 else math.inf


def sampling_grid(kernel_size: tuple[int, ...] | list[int], tolerance: float) -> list[int]:
    """Points per axis at which sigma is sampled so that the bound is within GRID_SHARE of
    ``tolerance`` (> 0) of the largest sample: bernstein_factor <= (1 + GRID_SHARE
    tolerance)^2 / (1 + TEST_MARGIN), split evenly between the axes; at least k_a points per
    axis, so that the DFT sees every tap, rounded up to a fast DFT length."""
    degrees = [k - 1 for k in kernel_size]
    axes = sum(1 for d in degrees if d)
    x = math.sqrt(2 * (1 - (1 + TEST_MARGIN) / (1 + GRID_SHARE * tolerance) ** 2))
    return [
        fft_size(max(k, math.ceil(axes * math.pi * d / x))) if d else 1
        for k, d in zip(kernel_size, degrees, strict=True)
    ]


def _points(grid: list[int]) -> int:
    """The grid's points on the half that a real kernel's DFT needs (the last axis halved)."""
    return math.prod(grid[:-1]) * (grid[-1] // 2 + 1)


def sampling_is_cheaper(
    weight_shape: tuple[int, ...], groups: int, tolerance: float, max_bytes: float, max_work: float
) -> bool:
    """Whether :func:`sampled_bound` costs less than the kernel-domain Gram iteration would for
    a kernel of ``weight_shape``, and fits in ``max_bytes`` and ``max_work`` multiply-adds: in
    c^3 products, a product, a test and their calls per point against the products of the
    fewest Gram steps (grids of 2^(s+1) (k - 1) + 1 points) and their overhead."""
    if tolerance * GRID_SHARE <= TEST_MARGIN:
        return False
    o, i, *kernel = weight_shape
    c, c_wide = sorted((o // groups, i))
    points = _points(sampling_grid(kernel, tolerance))
    # The DFT and its copy laid out per point, then the symbol and a test and its factor.
    if 16.0 * groups * points * max(2 * c * c_wide, c * c_wide + 2 * c * c) > max_bytes:
        return False
    if groups * points * float(c) ** 2 * (c_wide + c) > max_work:
        return False
    sampled = points * (c_wide / c + TEST_COST + POINT_OVERHEAD / c**3)
    gram = sum(_points([2 ** (s + 1) * (k - 1) + 1 for k in kernel]) for s in range(GRAM_FEWEST_STEPS))
    return sampled <= GRAM_OVERHEAD * gram


def sampled_bound(weight: torch.Tensor, groups: int, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A bound on sup_w sigma_max(K(w)) for the kernel ``weight`` (o, i, *k) in ``groups``
    (the max over the groups), and the largest sigma at the grid's points, a lower estimate:
    bound <= (1 + tolerance) lower. See the module docstring."""
    o, i, *kernel_size = weight.shape
    dims = tuple(range(3, weight.ndim + 1))
    kernel = weight.reshape(groups, o // groups, i, *kernel_size)
    if kernel.shape[1] > kernel.shape[2]:
        kernel = kernel.transpose(1, 2)  # K K^H on the smaller channel side
    grid = sampling_grid(kernel_size, tolerance)
    symbol = torch.fft.rfftn(kernel, s=grid, dim=dims).movedim((1, 2), (-2, -1)).contiguous()  # (g, *freq, c, c')
    mats = symbol.flatten(0, -3)
    bound, lower, at = largest_singular_value(mats)
    factor = bernstein_factor([k - 1 for k in kernel_size], grid)
    if not mats.requires_grad:
        return torch.sqrt(bound * factor), torch.sqrt(lower)
    # The bound is a fixed multiple of sigma^2 at the point that attains ``lower``: taken
    # there again with the weight's graph, it is differentiable like every other method.
    top = _exact_top(mats, torch.tensor([at], device=mats.device))[0]
    ratio = bound / lower if bool(lower > 0) else torch.ones_like(bound)
    return torch.sqrt(top * (ratio * factor)), torch.sqrt(lower)


#: :func:`largest_singular_value` computes the singular values of EXACT_MATRICES matrices,
#: those ranked first after POWER_STEPS power steps, and tests every matrix against TEST_MARGIN
#: (relative, on sigma^2) above the largest of them.
EXACT_MATRICES = 8
POWER_STEPS = 3
TEST_MARGIN = 1e-3


@torch.no_grad()
def largest_singular_value(mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """An upper bound on the largest sigma^2 among the complex matrices ``mats`` (B, c, c'),
    c <= c', float64, a lower estimate (sigma^2 of one of them), at most TEST_MARGIN apart
    unless the bound is exact, and the index of that matrix.

    lower: the largest eigenvalue of M M^H for the EXACT_MATRICES matrices M that a few power
    steps rank first. Every matrix is then tested with mu = lower (1 + TEST_MARGIN): a Cholesky
    factorization of mu' I - M M^H that runs to completion in floating point proves
    sigma^2 < mu (for mu' = mu (1 - 4 (c + 1)^2 eps), below mu by more than the backward error
    of the factorization, (c + 1) eps tr(mu' I - M M^H): Higham, "Accuracy and Stability of
    Numerical Algorithms", Thm 10.5, with room for complex arithmetic); where it does not, the
    eigenvalues are computed. A test costs about a quarter of an eigendecomposition.
    """
    c = mats.shape[-2]
    eps = torch.finfo(mats.real.dtype).eps
    v = mats @ mats[:, :1].mH  # M M^H e_1, then v <- M M^H v
    for _ in range(POWER_STEPS):
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(torch.finfo(v.real.dtype).tiny)
        v = mats @ (v.mH @ mats).mH  # M (M^H v), with M read as stored (no conjugate copy)
    rayleigh = torch.linalg.vector_norm(v, dim=(-2, -1))  # ||M M^H v|| for a unit v: a ranking
    exact = rayleigh.topk(min(EXACT_MATRICES, len(rayleigh))).indices
    lower, at = _exact_top(mats, exact)
    mu = lower * (1 + TEST_MARGIN)
    eye = torch.eye(c, dtype=mats.dtype, device=mats.device)
    tested = torch.baddbmm(eye * (mu * (1 - 4 * (c + 1) ** 2 * eps)), mats, mats.mH, alpha=-1)
    failed = torch.linalg.cholesky_ex(tested, upper=True).info != 0
    if not bool(failed.any()):
        return mu, lower, at
    other, other_at = _exact_top(mats, failed.nonzero().flatten())
    if bool(other > lower):
        return torch.maximum(mu, other), other, other_at
    return mu, lower, at


def _exact_top(mats: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The largest eigenvalue of M M^H over the matrices ``mats[which]`` (B, c, c'), and the
    index in ``mats`` of the matrix that has it."""
    chosen = mats[which]
    top = torch.linalg.eigvalsh(chosen @ chosen.mH).amax(dim=-1)
    best = int(top.argmax())
    return top[best].clamp_min(0), int(which[best])
