"""Estimators of the largest singular value sigma, as pure functions of tensors.

They know nothing of modules: the parametrizations in :mod:`paranorm.spectral_norm` own the
state (u, v) and call these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "block_power_iteration_",
    "block_sigma",
    "fourier_start",
    "frequency_matrices",
    "gram_iteration",
    "kernel_gram_bound",
    "kernel_gram_iterations",
    "operator_power_iteration_",
    "operator_sigma",
    "periodic_kernel",
    "power_iteration_",
    "reshape_sigma",
    "strided_frequency_matrices",
    "weight_to_matrix",
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


def periodic_kernel(
    weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int]
) -> torch.Tensor:
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
    k_hat = torch.fft.rfftn(
        periodic_kernel(weight, sizes, dilation), dim=tuple(range(2, 2 + spatial))
    )
    o, i = weight.shape[:2]
    k_hat = k_hat.reshape(groups, o // groups, i, -1).permute(3, 0, 1, 2)
    return k_hat.reshape(-1, o // groups, i)


def strided_frequency_matrices(
    weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int], groups: int, stride: Sequence[int]
) -> torch.Tensor:
    """The matrices whose singular values are those of a strided circular convolution.

    Keeping every s-th output of the circular convolution C on n points (s divides n) folds
    the frequencies: with unitary DFTs, the output at frequency xi (of n/s) is
    (1/sqrt(s)) sum_j K(xi + j n/s) x(xi + j n/s). So the operator is block-diagonal with one
    c_out/g x (s c_in/g) block [K(xi + j n/s)]_j / sqrt(s) per xi and group (per axis, s^d
    aliases in d dims): Sedghi et al.'s method carried over to strides. Shape
    (prod(n/s) * groups, c_out/g, prod(s) c_in/g), complex.
    """
    spatial = len(sizes)
    k_hat = torch.fft.fftn(periodic_kernel(weight, sizes, dilation), dim=tuple(range(2, 2 + spatial)))
    o, i = weight.shape[:2]
    split = [v for n, s in zip(sizes, stride) for v in (s, n // s)]
    k_hat = k_hat.reshape(groups, o // groups, i, *split)
    perm = [0, *(4 + 2 * a for a in range(spatial)), 1, *(3 + 2 * a for a in range(spatial)), 2]
    aliases = math.prod(stride)
    return k_hat.permute(perm).reshape(-1, o // groups, aliases * i) / math.sqrt(aliases)


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


@torch.no_grad()
def fourier_start(
    weight: torch.Tensor,
    sizes: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    transposed: bool,
) -> torch.Tensor:
    """Two real plane waves, shape (2, C_in, *sizes), near the operator's top singular vector.

    On the circular grid of the input size the top right singular vectors are plane waves
    v e^(+-i w.t), (w, v) the top of the kernel's DFT matrices (Sedghi et al. 2019); padding
    and stride perturb them only at the borders, so starting power iteration there skips most
    of its slow phase (the top singular values of a conv cluster, so the gap is small). The
    sign of w that matches the correlation's convention is picked by the caller. For a
    transposed conv the input side is the DFT matrices' left side.
    """
    spatial = len(sizes)
    mats = frequency_matrices(weight, sizes, dilation, groups)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    best = int(s[:, 0].argmax())
    vec = u[best, :, 0] if transposed else vh[best, 0].conj()
    n_freq_shape = (*sizes[:-1], sizes[-1] // 2 + 1)
    freq_index, group = divmod(best, groups)
    fs = torch.unravel_index(torch.tensor(freq_index), n_freq_shape)
    phase = torch.zeros(tuple(sizes), dtype=weight.dtype, device=weight.device)
    for a, (f, n) in enumerate(zip(fs, sizes)):
        t = torch.arange(n, dtype=weight.dtype, device=weight.device) * (2 * math.pi * int(f) / n)
        phase = phase + t.reshape([n if b == a else 1 for b in range(spatial)])
    block = vec.shape[0]
    channels = block * groups
    out = torch.zeros(2, channels, *sizes, dtype=weight.dtype, device=weight.device)
    for i, sign in enumerate((1.0, -1.0)):
        wave = vec.reshape(-1, *([1] * spatial)) * torch.polar(torch.ones_like(phase), sign * phase)
        out[i, group * block : (group + 1) * block] = wave.real
    norms = torch.linalg.vector_norm(out.flatten(1), dim=1).clamp_min(1e-30)
    return out / norms.reshape(2, *([1] * (spatial + 1)))


@torch.no_grad()
def block_power_iteration_(
    forward: Operator, adjoint: Operator, x: torch.Tensor, n_iterations: int
) -> None:
    """Subspace (block power) iteration on A^T A, in place on the batch ``x`` (b, *input).

    X <- orth(A^T A X) (QR of the flattened block). The top Ritz value converges at the rate
    (sigma_(b+1) / sigma_1)^2 instead of (sigma_2 / sigma_1)^2: a convolution's top singular
    values come in tight clusters (neighbouring frequencies), which a single vector resolves
    only slowly. With b = 1 this is :func:`operator_power_iteration_`.
    """
    b = x.shape[0]
    for _ in range(n_iterations):
        z = adjoint(forward(x)).reshape(b, -1)
        q, _ = torch.linalg.qr(z.transpose(0, 1))
        x.copy_(q.transpose(0, 1).reshape(x.shape))


def block_sigma(forward: Operator, x: torch.Tensor) -> torch.Tensor:
    """Largest singular value of A restricted to the span of the orthonormal block ``x``.

    ||A X||_2 <= ||A|| ||X||_2 = ||A||: a lower estimate, differentiable in A (X held constant).
    """
    out = forward(x)
    return torch.linalg.matrix_norm(out.reshape(x.shape[0], -1), ord=2)
