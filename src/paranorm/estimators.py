"""Estimators of the largest singular value sigma, as pure functions of tensors.

They know nothing of modules: the parametrizations in :mod:`paranorm.spectral_norm` own the
state (u, v) and call these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "weight_to_matrix",
    "power_iteration_",
    "reshape_sigma",
    "operator_power_iteration_",
    "operator_sigma",
    "periodic_kernel",
    "frequency_matrices",
    "gram_iteration",
    "kernel_gram_bound",
]


def weight_to_matrix(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """View a weight as the 2-D matrix Miyato et al. normalize: ``dim`` first, the rest flattened.

    This is the *reshaped kernel*; for a convolution its sigma is not the layer's Lipschitz
    constant (see :func:`paranorm.sigma` with ``method="power"``/``"gram"``).
    """
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.ndim) if d != dim))
    return weight.flatten(1)


@torch.no_grad()
def power_iteration_(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iterations: int, eps: float = 1e-12
) -> None:
    """Run ``n_iterations`` power-method steps on ``matrix`` in place on u and v.

    u <- normalize(W v); v <- normalize(W^H u) (Miyato et al. 2018, as torch orders them).
    In place with ``out=`` so that u and v stay the same buffers (DDP broadcasts them, and
    anything holding a reference sees the update). Computed in ``matrix``'s dtype.
    """
    for _ in range(n_iterations):
        F.normalize(torch.mv(matrix, v), dim=0, eps=eps, out=u)
        F.normalize(torch.mv(matrix.H, u), dim=0, eps=eps, out=v)


def reshape_sigma(matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^H W v with u, v held constant: differentiable in W, a lower estimate."""
    return torch.vdot(u, torch.mv(matrix, v))


# --- The true operator: power iteration, and the frequency-domain methods -------------------

Operator = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def operator_power_iteration_(
    forward: Operator, adjoint: Operator, x: torch.Tensor, n_iterations: int, eps: float = 1e-12
) -> None:
    """Power iteration on a linear operator, in place on the input-shaped unit vector ``x``.

    y = A(x) / ||A(x)||; x = A^T(y) / ||A^T(y)|| (Gouk et al. 2021; Farnia et al. 2019): x tends
    to the top right singular vector, linearly at the rate (sigma_2 / sigma_1)^2.
    """
    for _ in range(n_iterations):
        y = forward(x)
        y = y / y.norm().clamp_min(eps)
        z = adjoint(y)
        x.copy_(z / z.norm().clamp_min(eps))


def operator_sigma(forward: Operator, x: torch.Tensor) -> torch.Tensor:
    """||A(x)|| for a unit ``x`` held constant: a lower estimate, differentiable in A.

    Its gradient in the weight is that of y^T A x with y = A(x)/||A(x)||: torch's u^T W v.
    """
    return torch.linalg.vector_norm(forward(x))


def periodic_kernel(weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int]) -> torch.Tensor:
    """The kernel of the circular convolution on a grid of ``sizes``: taps at d * j mod n.

    Taps that wrap (a dilated kernel wider than the grid) add up, which is what the circular
    convolution does with them.
    """
    out = weight
    for a, (n, d) in enumerate(zip(sizes, dilation)):
        axis = 2 + a
        shape = list(out.shape)
        shape[axis] = n
        taps = (torch.arange(weight.shape[axis], device=weight.device) * d) % n
        out = out.new_zeros(shape).index_add(axis, taps, out)
    return out


def frequency_matrices(
    weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int
) -> torch.Tensor:
    """The c_out/g x c_in/g matrices of the kernel's DFT, one per frequency and group.

    Shape (frequencies * groups, c_out/g, c_in/g), complex. The circular convolution's
    singular values are those of these matrices (Sedghi et al. 2019). A real kernel's DFT is
    conjugate-symmetric, so ``rfftn`` (half of the last axis) loses no singular value.
    """
    spatial = weight.ndim - 2
    k_hat = torch.fft.rfftn(periodic_kernel(weight, sizes, dilation), dim=tuple(range(2, 2 + spatial)))
    o, i = weight.shape[:2]
    k_hat = k_hat.reshape(groups, o // groups, i, -1).permute(3, 0, 1, 2)
    return k_hat.reshape(-1, o // groups, i)


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


def kernel_gram_bound(weight: torch.Tensor, groups: int, n_iterations: int) -> torch.Tensor:
    """A bound on sigma of the convolution by ``weight`` that holds for every input size.

    Delattre, Barthelemy, Allauzen 2024 (arXiv 2402.00240): the kernel of A A^H (A^H A on the
    smaller channel side) is squared N - 1 times, rescaled as in Gram iteration, so its symbol
    is H_N(w) = (K(w) K(w)^H)^(2^(N-1)) exp(-L). Then sigma(w)^(2^N) = lambda_max(H_N(w)) e^L
    <= max_i sum_{j,x} |K_N[i, j, x]| e^L for every frequency w (Gershgorin, and
    |H_N(w)_ij| <= sum_x |K_N[i, j, x]|), hence for zero, circular or no padding at any size:
    sigma <= max_i (sum_{j,x} |K_N[i,j,x]|)^(2^-N) exp(2^-N L).

    The products are taken on the DFT of the kernel at a grid of 2^N (k - 1) + 1 points per
    axis, the support of K_N, so no tap wraps and the inverse DFT is K_N exactly (up to
    rounding); dilation spreads the same taps and changes nothing in the bound. Groups are
    bounded each and the max taken.
    """
    spatial = weight.ndim - 2
    dims = tuple(range(2, 2 + spatial))
    sizes = [2**n_iterations * (k - 1) + 1 for k in weight.shape[2:]]
    mats = frequency_matrices(weight, sizes, [1] * spatial, groups)  # (F * g, o/g, i/g)
    if mats.shape[-2] > mats.shape[-1]:
        mats = mats.mH
    n_freq = mats.shape[0] // groups
    real = weight.dtype
    log_scale = torch.zeros(groups, dtype=real, device=weight.device)
    tiny = torch.finfo(real).tiny
    # Step 1 rescales by ||K||_F per group, then forms the symbol of K K^H.
    per_group = weight.reshape(groups, -1)
    r = torch.linalg.vector_norm(per_group, dim=1).clamp_min(tiny)
    log_scale = 2 * torch.log(r)
    h = mats.reshape(n_freq, groups, *mats.shape[1:]) / r[:, None, None].to(mats.dtype)
    h = h @ h.mH
    for _ in range(n_iterations - 1):
        # Any positive rescaling is exact as long as L tracks it; the largest entry keeps
        # the powers in range.
        r = torch.linalg.matrix_norm(h).amax(dim=0).clamp_min(tiny)
        h = h / r[:, None, None].to(h.dtype)
        log_scale = 2 * (log_scale + torch.log(r))
        h = h @ h.mH
    c = h.shape[-1]
    grid = h.permute(1, 2, 3, 0).reshape(groups, c, c, *sizes[:-1], sizes[-1] // 2 + 1)
    kernel = torch.fft.irfftn(grid, s=sizes, dim=tuple(d + 1 for d in dims))
    row_sums = kernel.abs().flatten(2).sum(dim=2)  # (g, c)
    scale = 2.0**-n_iterations
    return (row_sums.amax(dim=1) ** scale * torch.exp(scale * log_scale)).amax()
