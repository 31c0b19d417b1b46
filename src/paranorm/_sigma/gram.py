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
from .fourier import circular_matrices, is_circular
from .geometry import pad_copies
from .layer import Layer
from .precision import float32_or_wider
from .result import SigmaResult
from .scale import scaled

__all__ = [
    "GRAM_CIRCULAR_ITERATIONS",
    "GRAM_KERNEL_BUDGET",
    "GRAM_MATRIX_ITERATIONS",
    "GRAM_MAX_ITERATIONS",
    "check_iterations",
    "gram_estimate",
    "gram_iteration",
    "gram_iterations",
    "kernel_gram_bound",
    "kernel_gram_iterations",
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


#: Taps of the kernel-domain bound's last kernel whose spectral norm is taken exactly.
EXACT_TAPS = 256


def kernel_gram_bound(weight: torch.Tensor, groups: int, n_iterations: int) -> torch.Tensor:
    """A bound on sigma of the convolution by ``weight`` that holds for every input size.

    Delattre, Barthelemy, Allauzen 2024 (arXiv 2402.00240): the kernel of A A^H (A^H A on the
    smaller channel side) is squared N - 1 times, rescaled as in Gram iteration, so its symbol
    is H_N(w) = (K(w) K(w)^H)^(2^(N-1)) exp(-L). Then sigma(w)^(2^N) = lambda_max(H_N(w)) e^L
    <= max_i sum_{j,x} |K_N[i, j, x]| e^L for every frequency w (Gershgorin, and
    |H_N(w)_ij| <= sum_x |K_N[i, j, x]|), hence for zero, circular or no padding at any size:
    sigma <= max_i (sum_{j,x} |K_N[i,j,x]|)^(2^-N) exp(2^-N L). The triangle inequality over
    the taps gives a second bound, (sum_x ||K_N[x]||_2)^(2^-N) exp(2^-N L), tighter for many
    channels; the smaller of the two is returned.

    Each product is taken on the DFT of the current kernel on a grid as large as the product's
    support (2 S - 1 for a kernel of support S), so no tap wraps and each inverse DFT is the
    product's kernel exactly (up to rounding); the grid doubles per step, so the last step
    costs most. A shift of the kernel multiplies its symbol by a phase, which H H^H cancels.
    Dilation spreads the same taps and changes nothing in the bound; groups are bounded each
    and the max taken.
    """
    spatial = weight.ndim - 2
    o, i = weight.shape[:2]
    kernel = weight.reshape(groups, o // groups, i, *weight.shape[2:])
    if kernel.shape[1] > kernel.shape[2]:
        # A^H A: the adjoint's kernel is the channel transpose (its spatial flip is a phase).
        kernel = kernel.transpose(1, 2)
    real = weight.dtype
    tiny = torch.finfo(real).tiny
    r = torch.linalg.vector_norm(kernel.flatten(1), dim=1).clamp_min(tiny)
    log_scale = torch.zeros(groups, dtype=real, device=weight.device)
    kernel = kernel / r.reshape(-1, *([1] * (kernel.ndim - 1)))
    log_scale = 2 * torch.log(r)
    for step in range(n_iterations):
        if step:
            # Any positive rescaling is exact as long as L tracks it; the largest entry keeps
            # the powers in range.
            r = kernel.abs().flatten(1).amax(dim=1).clamp_min(tiny)
            kernel = kernel / r.reshape(-1, *([1] * (kernel.ndim - 1)))
            log_scale = 2 * (log_scale + torch.log(r))
        support = kernel.shape[3:]
        grid = [2 * n - 1 for n in support]
        dims = tuple(range(3, 3 + spatial))
        k_hat = torch.fft.rfftn(kernel, s=grid, dim=dims)  # (g, c, c', *freq)
        # contiguous(): torch 2.13's inductor differentiates a complex matmul of this
        # non-contiguous view wrongly (torch.compile gave gradients 0.26 off in 0.39).
        mats = k_hat.permute(0, *range(3, 3 + spatial), 1, 2).contiguous()  # (g, *freq, c, c')
        prod = mats @ mats.mH
        prod = prod.permute(0, spatial + 1, spatial + 2, *range(1, spatial + 1))
        # The product's kernel fills its grid, offsets -(S-1)..(S-1) stored circularly; roll
        # them contiguous (a global shift) so that the next zero-padded DFT sees one kernel.
        kernel = torch.roll(
            torch.fft.irfftn(prod, s=grid, dim=dims), [n - 1 for n in support], dims
        )
    # Two bounds on sup_w ||H_N(w)||, both certified; the smaller is kept. Gershgorin on the
    # taps' absolute values (the 2024 paper's), and the triangle inequality over the taps,
    # ||sum_x K_N[x] e^(i w.x)|| <= sum_x ||K_N[x]||_2, which avoids Gershgorin's growth with
    # the channel count.
    row_sums = kernel.abs().flatten(3).sum(dim=3).sum(dim=2).amax(dim=1)  # (g,)
    taps = kernel.flatten(3).permute(0, 3, 1, 2)  # (g, taps, c, c)
    # ||K||_2 <= ||K||_F: the exact spectral norm for the largest taps, Frobenius (free) for
    # the many small ones that contribute little.
    fro = torch.linalg.matrix_norm(taps)  # (g, taps)
    top = fro.topk(min(EXACT_TAPS, fro.shape[1]), dim=1).indices
    chosen = taps.gather(1, top[..., None, None].expand(-1, -1, *taps.shape[2:]))
    exact = torch.linalg.matrix_norm(chosen, ord=2)
    tap_sums = fro.sum(dim=1) - fro.gather(1, top).sum(dim=1) + exact.sum(dim=1)  # (g,)
    scale = 2.0**-n_iterations
    return (torch.minimum(row_sums, tap_sums) ** scale * torch.exp(scale * log_scale)).amax()


def kernel_gram_iterations(
    weight: torch.Tensor, groups: int, budget: float = 2e9, most: int = 6
) -> int:
    """The most steps (2..``most``) of :func:`kernel_gram_bound` whose last product costs at
    most ``budget`` multiply-adds: a grid of 2^N (k - 1) + 1 points per axis (half of the last
    axis), times c^3 for the smaller channel side c."""
    c = min(weight.shape[0] // groups, weight.shape[1])
    n = 2
    while n < most:
        points = [2 ** (n + 1) * (k - 1) + 1 for k in weight.shape[2:]]
        points[-1] = points[-1] // 2 + 1
        if math.prod(points) * groups * c**3 > budget:
            break
        n += 1
    return n


def gram_estimate(
    layer: Layer,
    shape: tuple[int, ...] | None,
    iterations: int | None,
    precise: bool = True,
    budget: float | None = None,
) -> SigmaResult:
    """The "gram" method: a certified upper bound (Gram iteration; the kernel-domain bound for
    a conv that is not circular at ``shape``). ``precise``: float64, rounded up; ``budget``
    bounds the kernel-domain product (it picks the default number of steps)."""
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
        value = kernel_gram_bound(weight, geo.groups, n) * math.sqrt(copies)
    if precise:
        return SigmaResult(certified(value * scale, dtype), "upper", "gram", n)
    # In the weight's precision, the steps' rounding can leave a converged bound an ulp or two
    # below sigma: FAST_MARGIN ulps keep it above, at no noticeable cost to the normalization.
    margin = 1 + FAST_MARGIN * torch.finfo(value.dtype).eps
    return SigmaResult(value * (scale * margin), "upper", "gram", n)
