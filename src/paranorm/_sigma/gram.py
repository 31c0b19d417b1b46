"""Gram iteration: certified upper bounds on sigma that converge superlinearly.

Delattre, Barthelemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for
Convolutional Layers by Gram Iteration", ICML 2023 (matrices, and circular convolutions through
their DFT matrices), and Delattre, Barthelemy, Allauzen 2024, arXiv 2402.00240 (zero padding,
any input size, in the kernel domain).
"""

from __future__ import annotations

import math

import torch

from .._errors import ParanormError
from .certify import certified
from .cost import MAX_BYTES, MAX_WORK
from .fourier import circular_matrices, fft_size, is_circular
from .geometry import pad_copies
from .layer import Layer
from .precision import float32_or_wider
from .result import SigmaResult
from .sampled import bernstein_factor, sampled_bound, sampling_is_cheaper
from .scale import scaled

__all__ = [
    "GRAM_CIRCULAR_ITERATIONS",
    "GRAM_FAST_TOLERANCE",
    "GRAM_KERNEL_BUDGET",
    "GRAM_MATRIX_ITERATIONS",
    "GRAM_MAX_ITERATIONS",
    "GRAM_TOLERANCE",
    "check_iterations",
    "check_tolerance",
    "gram_estimate",
    "gram_iteration",
    "gram_iterations",
    "kernel_gram_bound",
    "kernel_gram_iterations",
    "symbol_sup",
]

GRAM_MATRIX_ITERATIONS = 10
GRAM_CIRCULAR_ITERATIONS = 8
#: The kernel-domain bound's kernel grows to 2^N (k - 1) + 1 per axis; by default N is the
#: most steps (2..6) whose last product stays under this many multiply-adds
#: (:func:`kernel_gram_iterations`).
GRAM_KERNEL_BUDGET = 4e9
#: The most Gram steps: after N steps the bound is within rank^(2^-(N+1)) of sigma (1 + 1e-11
#: for a rank of a million at N = 40), and its exponents 2^-N and log scales 2^N log r leave
#: the range of floating point well before N = 1000 (2^-1075 is 0 in float64: the bound
#: would read 1 for any weight).
GRAM_MAX_ITERATIONS = 40
#: pn.sigma's kernel-domain bound stops adding steps once it is within this (relative) of a
#: lower estimate, sigma at the frequencies it sampled (its ``tolerance`` argument).
GRAM_TOLERANCE = 1e-2
#: The tolerance of ``paranorm inspect --fast``.
GRAM_FAST_TOLERANCE = 5e-2


#: Relative widening, in ulps of the working dtype, of a bound computed without ``precise``.
FAST_MARGIN = 16


def check_iterations(iterations: int | None, default: int, most: int | None = None) -> int:
    """``iterations`` (a positive int, at most ``most``), or ``default`` for None."""
    if iterations is None:
        return default
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ParanormError(f"iterations must be a positive int or None, got {iterations!r}.")
    if most is not None and iterations > most:
        raise ParanormError(
            f"iterations={iterations} Gram steps is more than the {most} that can change the "
            f"bound (after N steps it is within rank^(2^-(N+1)) of sigma, and past ~1000 the "
            f"exponents underflow). Pass iterations <= {most}, or None for the default."
        )
    return iterations


def check_tolerance(tolerance: float | None) -> float | None:
    """``tolerance`` as a float (a finite number >= 0), or None."""
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ParanormError(
            f"tolerance must be a finite number >= 0 (relative: 0.01 is 1%), got {tolerance!r}."
        )
    return float(tolerance)


def gram_iterations(
    layer: Layer, shape: tuple[int, ...] | None, iterations: int | None, budget: float | None = None
) -> int:
    """The Gram steps :func:`gram_estimate` takes: ``iterations`` checked, or its default for
    the layer (matrix, circular conv at ``shape``, or the kernel-domain bound within
    ``budget``)."""
    geo = layer.geo
    if geo.is_matrix:
        return check_iterations(iterations, GRAM_MATRIX_ITERATIONS, GRAM_MAX_ITERATIONS)
    if shape is not None and is_circular(geo):
        return check_iterations(iterations, GRAM_CIRCULAR_ITERATIONS, GRAM_MAX_ITERATIONS)
    if iterations is not None:
        return check_iterations(iterations, 1, GRAM_MAX_ITERATIONS)
    return kernel_gram_iterations(layer.weight, geo.groups, budget or GRAM_KERNEL_BUDGET)


def gram_iteration(matrices: torch.Tensor, n_iterations: int) -> torch.Tensor:
    """Upper bound on the largest singular value of each matrix of a batch, by Gram iteration.

    Delattre, Barthelemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for
    Convolutional Layers by Gram Iteration", ICML 2023: with G the matrix (its smaller side
    kept), repeat N times {r = ||G||_F; G = G / r; L = 2 (L + log r); G = G^H G}; then
    sigma_hat = ||G||_F^(2^-N) exp(2^-N L), the Schatten-2^(N+1) norm: sigma_1 <= sigma_hat <=
    rank^(2^-(N+1)) sigma_1. Differentiable. Returns one bound per matrix of the batch.
    """
    g = matrices
    if g.shape[-2] < g.shape[-1]:
        g = g.mH
    log_scale = torch.zeros(g.shape[:-2], dtype=g.real.dtype, device=g.device)
    for _ in range(n_iterations):
        r = torch.linalg.matrix_norm(g).clamp_min(torch.finfo(log_scale.dtype).tiny)
        g = g / r[..., None, None]
        log_scale = 2 * (log_scale + torch.log(r))
        g = g.mH @ g
    scale = 2.0**-n_iterations
    return torch.linalg.matrix_norm(g) ** scale * torch.exp(scale * log_scale)


#: The kernel-domain bound takes the exact spectral norm of its last kernel's largest taps
#: (at most EXACT_TAPS, and while that costs at most EXACT_TAPS_WORK multiply-adds, taps x c^3),
#: the Frobenius norm of the others.
EXACT_TAPS = 16
EXACT_TAPS_WORK = 5e7
#: The most points of the fine frequency grid on which a Schatten bound samples its
#: polynomial (:func:`symbol_sup`); past it, that step's Schatten bound is skipped.
MAX_SYMBOL_POINTS = 2**19
#: Relative slack, per Gram step, that the sampling of the symbol may add to the bound.
SAMPLING_SLACK = 1e-4


def kernel_gram_bound(
    weight: torch.Tensor, groups: int, n_iterations: int, tolerance: float | None = None
) -> torch.Tensor:
    """A bound on sigma of the convolution by ``weight`` that holds for every input size.

    Delattre, Barthelemy, Allauzen 2024 (arXiv 2402.00240): the kernel of A A^H (A^H A on the
    smaller channel side) is squared N - 1 times, rescaled as in Gram iteration, so that the
    symbol of step s is G_s(w) = (K(w) K(w)^H)^(2^(s-1)) e^(-L_s), and sigma^(2^s) =
    sup_w ||G_s(w)|| e^(L_s). Three bounds on sup_w ||G_s(w)|| are taken, the smallest kept:

    - Schatten, at every step: ||G_s(w)|| <= ||G_s(w)||_F, whose square q_s(w) is a
      trigonometric polynomial; its sup comes from samples (:func:`symbol_sup`). This is the
      Gram iteration of the 2023 paper at every frequency at once, and it needs no product.
    - Gershgorin on the last kernel's taps (the 2024 paper's): max_i sum_{j,x} |K_N[i, j, x]|.
    - The triangle inequality over the taps, sum_x ||K_N[x]||_2 (exact for the largest taps,
      Frobenius for the rest), which does not grow with the channel count.

    Each product is taken on the DFT of the current kernel on a grid as large as the product's
    support (2 S - 1 for a kernel of support S), so no tap wraps; the grid doubles per step,
    so the last step costs most. With ``tolerance``, the steps stop once the bound is within
    that (relative) of a lower estimate: the top eigenvalue of G_s at the sampled frequencies,
    by power steps, is sigma at one of them. Dilation spreads the same taps and changes nothing
    in the bound; groups are bounded each and the max taken.
    """
    return _kernel_gram(weight, groups, n_iterations, tolerance)[0]


def _kernel_gram(
    weight: torch.Tensor, groups: int, n_iterations: int, tolerance: float | None
) -> tuple[torch.Tensor, int]:
    """:func:`kernel_gram_bound` and the products it took."""
    spatial = weight.ndim - 2
    dims = tuple(range(3, 3 + spatial))
    o, i = weight.shape[:2]
    # (g, c, c', *taps): the DFTs run over the last axes, where torch's are fastest; only the
    # per-frequency matrices of the product are laid out (g, *freq, c, c').
    kernel = weight.reshape(groups, o // groups, i, *weight.shape[2:])
    if kernel.shape[1] > kernel.shape[2]:
        # A^H A: the adjoint's kernel is the channel transpose (its spatial flip is a phase).
        kernel = kernel.transpose(1, 2)
    kernel = kernel.contiguous()
    real = weight.dtype
    tiny = torch.finfo(real).tiny
    log_scale = torch.zeros(groups, dtype=real, device=weight.device)
    best: torch.Tensor | None = None  # (g,) the smallest bound so far
    support = list(kernel.shape[3:])  # of the kernel, which may sit zero-padded in a larger grid
    step = 0
    while True:
        # Any positive rescaling is exact as long as L tracks it; the Frobenius norm keeps the
        # powers in range.
        r = torch.linalg.vector_norm(kernel.flatten(1), dim=1).clamp_min(tiny)
        kernel = kernel / r.reshape(-1, *([1] * (kernel.ndim - 1)))
        log_scale = 2 * (log_scale + torch.log(r))  # L_(s+1)
        power = 2.0 ** -(step + 1)
        # The product's support, 2 S - 1, on a grid of fast DFT sizes at least that large.
        grid = [fft_size(2 * n - 1) for n in support]
        if list(kernel.shape[3:]) != grid:
            padding = [p for n, m in zip(reversed(support), reversed(grid), strict=True) for p in (0, m - n)]
            kernel = torch.nn.functional.pad(kernel, padding)
        k_hat = torch.fft.rfftn(kernel, dim=dims)  # (g, c, c', *freq)
        last = step == n_iterations
        if last:
            frobenius = torch.linalg.vector_norm(torch.view_as_real(k_hat), dim=(1, 2, -1)).square()
        else:
            # contiguous(): the products want each frequency's matrix in one block, and torch
            # 2.13's inductor differentiates a complex matmul of a non-contiguous view wrongly
            # (torch.compile gave gradients 0.26 off in 0.39).
            mats = k_hat.movedim((1, 2), (-2, -1)).contiguous()  # (g, *freq, c, c')
            frobenius = torch.linalg.vector_norm(torch.view_as_real(mats).flatten(-3), dim=-1).square()
        schatten = symbol_sup(frobenius, grid, [n - 1 for n in support], step)
        bound = schatten**power * torch.exp(power * log_scale)
        best = bound if best is None else torch.minimum(best, bound)
        done = last
        if not last and tolerance is not None and step:
            # Within ``tolerance`` of sigma at a sampled frequency (a lower estimate): stop.
            lower = _top_eigenvalue(mats, frobenius) ** (2 * power) * torch.exp(power * log_scale)
            done = bool(best.amax() <= lower.amax() * (1 + tolerance))
        if done:
            # In the units of q: what the tap bounds must beat to matter. (Only where steps may
            # stop early: a parametrization's forward keeps no data-dependent branch.)
            beat = torch.exp(torch.log(best) / power - log_scale) if tolerance is not None else None
            taps = _tap_bounds(_crop(kernel, support), hermitian=step > 0, beat=beat)
            return torch.minimum(best, taps**power * torch.exp(power * log_scale)).amax(), step
        product = (mats @ mats.mH).movedim((-2, -1), (1, 2))  # (g, c, c, *freq)
        product = torch.fft.irfftn(product, s=grid, dim=dims)
        # The product's kernel has offsets -(S-1)..(S-1), stored circularly on the grid; in
        # order, it is the next step's kernel (padded onto that step's grid above).
        kernel = _in_order(product, [n - 1 for n in support], dims)
        support = [2 * n - 1 for n in support]
        step += 1


def _crop(kernel: torch.Tensor, support: list[int]) -> torch.Tensor:
    """The first ``support`` taps of ``kernel`` (g, c, c', *taps) on each tap axis."""
    for a, n in enumerate(support):
        kernel = kernel.narrow(3 + a, 0, n)
    return kernel


def _in_order(circular: torch.Tensor, degrees: list[int], axes: tuple[int, ...]) -> torch.Tensor:
    """A kernel stored circularly on its grid, offsets -D..D on each of ``axes`` (``degrees``
    D), as offsets 0..2D in order: a global shift, which the symbol's norms do not see."""
    rolled = torch.roll(circular, degrees, axes)
    for axis, d in zip(axes, degrees, strict=True):
        rolled = rolled.narrow(axis, 0, 2 * d + 1)
    return rolled


@torch.no_grad()
def _top_eigenvalue(mats: torch.Tensor, frobenius: torch.Tensor, most: int = 4, iterations: int = 4) -> torch.Tensor:
    """A lower estimate of the largest eigenvalue among the matrices ``mats`` (g, *freq, c, c),
    each a Hermitian PSD matrix times a phase (the symbol of a shifted kernel), per group: at
    the ``most`` frequencies of largest Frobenius norm, a few power steps from the column of
    largest diagonal entry (after Gram steps the top eigenvalue stands well apart), and the
    moduli of their Rayleigh quotients."""
    mats = mats.flatten(1, -3)  # (g, F, c, c)
    top = frobenius.flatten(1).topk(min(most, mats.shape[1]), dim=1).indices  # (g, k)
    mats = mats.gather(1, top[..., None, None].expand(-1, -1, *mats.shape[2:]))
    column = torch.diagonal(mats, dim1=-2, dim2=-1).abs().argmax(dim=-1)  # (g, k)
    v = mats.gather(-1, column[..., None, None].expand(*mats.shape[:-1], 1))
    for _ in range(iterations):
        v = mats @ v
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(torch.finfo(v.real.dtype).tiny)
    return (v.mH @ (mats @ v)).abs().flatten(1).amax(dim=1)


def _tap_bounds(kernel: torch.Tensor, hermitian: bool, beat: torch.Tensor | None = None) -> torch.Tensor:
    """Bounds on sup_w ||sum_x K[x] e^(-i w.x)||^2 per group from the taps of ``kernel``
    (g, c, c', *taps): the triangle inequality over the taps, and Gershgorin's row sums where
    the symbol is Hermitian (``hermitian``); the smaller of the two, squared. The exact norms
    of the largest taps are skipped where even ||K[x]||_F / sqrt(c) summed cannot ``beat``
    (g,) the bound at hand."""
    fro = torch.linalg.vector_norm(kernel.flatten(3), dim=(1, 2))  # (g, taps): Frobenius
    tap_sums = fro.sum(dim=1)
    c = min(kernel.shape[1:3])
    if beat is None or bool(((tap_sums / math.sqrt(c)).square() < beat).any()):
        # ||K||_2 <= ||K||_F: the exact spectral norm for the largest taps, as many as cost little.
        n_exact = min(fro.shape[1], EXACT_TAPS, max(1, int(EXACT_TAPS_WORK / float(c) ** 3)))
        top = fro.topk(n_exact, dim=1).indices  # (g, n_exact)
        chosen = kernel.flatten(3).permute(0, 3, 1, 2).gather(1, top[..., None, None].expand(-1, -1, *kernel.shape[1:3]))
        exact = torch.linalg.matrix_norm(chosen, ord=2)
        tap_sums = tap_sums - fro.gather(1, top).sum(dim=1) + exact.sum(dim=1)  # (g,)
    if hermitian:
        row_sums = kernel.abs().flatten(2).sum(dim=2).amax(dim=1)  # (g,)
        tap_sums = torch.minimum(tap_sums, row_sums)
    return tap_sums.square()


def symbol_sup(samples: torch.Tensor, grid: list[int], degrees: list[int], step: int) -> torch.Tensor:
    """An upper bound on sup_w q(w) per group, from ``samples`` (g, *freq) of a nonnegative
    trigonometric polynomial q of ``degrees`` D_a per axis at the frequencies of a ``grid`` of
    at least 2 D_a + 1 points (the last axis halved: q is even).

    The samples fix q's coefficients (inverse DFT); q is then evaluated on a finer grid of m_a
    points per axis, and Bernstein's inequality (|f''| <= s^2 sup |f| for f of exponential
    type s) on the line from the maximizer to the nearest fine point, at most pi / m_a away per
    axis, gives sup q <= max_fine q / (1 - x^2 / 2), x = pi sum_a D_a / m_a. The fine grid is
    chosen so that this widens the ``step``-th Schatten bound, q^(2^-(step + 1)), by at most
    SAMPLING_SLACK; where that needs more than MAX_SYMBOL_POINTS points, fewer are taken (the
    bound stays certified, a little wider), and inf is returned if even 4 d points per degree
    would not fit.
    """
    d = len(grid)
    axes = tuple(range(1, 1 + d))
    coefficients = torch.fft.irfftn(samples, s=grid, dim=axes)
    if max(degrees) == 0:  # a 1 x 1 kernel: q is constant
        return coefficients.flatten(1)[:, 0].abs()
    # Target x: (1 - x^2 / 2)^(-2^-(step + 1)) <= 1 + SAMPLING_SLACK.
    x = math.sqrt(2 * (1 - (1 + SAMPLING_SLACK) ** -(2.0 ** (step + 1))))
    nonzero = [D for D in degrees if D]
    rho = math.pi * len(nonzero) / x  # points per degree on each axis
    most = (MAX_SYMBOL_POINTS / math.prod(nonzero)) ** (1 / len(nonzero))
    if most < 4 * len(nonzero):
        return torch.full(samples.shape[:1], math.inf, dtype=samples.dtype, device=samples.device)
    rho = min(rho, most)
    fine = [fft_size(max(2 * D + 1, math.ceil(rho * D))) for D in degrees]
    values = torch.fft.rfftn(_in_order(coefficients, degrees, axes), s=fine, dim=axes).abs()
    return values.flatten(1).amax(dim=1) * bernstein_factor(degrees, fine)


def kernel_gram_iterations(
    weight: torch.Tensor, groups: int, budget: float = 2e9, most: int = 6
) -> int:
    """The most steps (2..``most``) of :func:`kernel_gram_bound` whose last product costs at
    most ``budget`` multiply-adds and whose last DFT fits in MAX_BYTES: the product of
    step N - 1 is on a grid of 2^N (k - 1) + 1 points per axis (half of the last axis), times
    c^3 for the smaller channel side c, the last DFT on twice that grid per axis, times c^2."""
    c = min(weight.shape[0] // groups, weight.shape[1])

    def points(grid_step: int) -> int:
        sizes = [2**grid_step * (k - 1) + 1 for k in weight.shape[2:]]
        sizes[-1] = sizes[-1] // 2 + 1
        return math.prod(sizes) * groups

    n = 2
    while n < most:
        if points(n + 1) * c**3 > budget or 16.0 * 3 * points(n + 2) * c**2 > MAX_BYTES:
            break
        n += 1
    return n


def gram_estimate(
    layer: Layer,
    shape: tuple[int, ...] | None,
    iterations: int | None,
    precise: bool = True,
    budget: float | None = None,
    tolerance: float | None = None,
) -> SigmaResult:
    """The "gram" method: a certified upper bound (Gram iteration; for a conv that is not
    circular at ``shape``, the kernel-domain bound, or the sampled one where it costs less).
    ``precise``: float64, rounded up; ``budget`` bounds the kernel-domain product (it picks the
    default number of steps); ``tolerance``: the bound is within it of a lower estimate
    (default GRAM_TOLERANCE): the kernel-domain steps stop there, or the sampled bound's grid
    is that fine (:mod:`.sampled`)."""
    # precise: computed in float64 and rounded up, since many squarings in float32 would blur
    # the last digits of a number that is meant to be a guarantee. The parametrizations pass
    # False (the weight's own precision, float32 at least) and a smaller budget.
    dtype = float32_or_wider(layer.weight)
    # On W / c, c a power of two (.scale.scaled), multiplied by c at the end: exact, and the
    # Frobenius norms of the first step cannot overflow.
    weight, scale = scaled(layer.weight.to(torch.float64 if precise else dtype))
    geo = layer.geo
    n = gram_iterations(layer, shape, iterations, budget)
    if geo.is_matrix:
        value = gram_iteration(weight, n)
    elif shape is not None and is_circular(geo):
        mats = circular_matrices(weight, geo, shape[1:])
        value = gram_iteration(mats, n).amax()
    else:
        circular_exact = geo.padding_mode == "circular" and geo.pads_wrap_exactly
        copies = 1 if geo.transposed or circular_exact else pad_copies(geo, shape)
        # Steps stop early once converged, unless the caller asked for a number of them (the
        # parametrizations' forward keeps a fixed number: no data-dependent control flow).
        if not precise or iterations is not None:
            tolerance = None
        elif tolerance is None:
            tolerance = GRAM_TOLERANCE
        if tolerance is not None and sampling_is_cheaper(
            tuple(weight.shape), geo.groups, tolerance, MAX_BYTES, MAX_WORK
        ):
            # The exact sigma on a grid fine enough for the tolerance: no Gram steps.
            value, n = sampled_bound(weight, geo.groups, tolerance)[0], 0
        else:
            value, n = _kernel_gram(weight, geo.groups, n, tolerance)
        value = value * math.sqrt(copies)
    if precise:
        return SigmaResult(certified(value * scale, dtype), "upper", "gram", n)
    # In the weight's precision, the steps' rounding can leave a converged bound an ulp or two
    # below sigma: FAST_MARGIN ulps keep it above, at no noticeable cost to the normalization.
    margin = 1 + FAST_MARGIN * torch.finfo(value.dtype).eps
    return SigmaResult(value * (scale * margin), "upper", "gram", n)
