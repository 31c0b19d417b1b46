"""The Fourier method: a convolution's singular values from its kernel's DFT.

Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019: a circular
convolution on an n-point grid is block-diagonalized by the DFT, so its singular values are
those of the c_out x c_in matrices K_hat(w), one per frequency w. sigma = max_w ||K_hat(w)||_2:
exact for circular padding (and unpadded 1 x 1 kernels) at stride 1, or at a stride that
divides the input size (the aliased frequencies fold, :func:`strided_frequency_matrices`); for
every other layer an upper bound (:func:`fft_sizes`). The same matrices give the power method's
warm start (:func:`fourier_start`) and the Gram method's circular case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .certify import certified
from .geometry import Geometry, pad_copies
from .layer import Layer, require_input_shape
from .precision import float32_or_wider
from .result import Guarantee, SigmaResult
from .scale import scaled

__all__ = [
    "circular_matrices",
    "fft_estimate",
    "fft_size",
    "fft_sizes",
    "fourier_start",
    "frequency_matrices",
    "is_circular",
    "periodic_kernel",
    "strided_frequency_matrices",
]


def periodic_kernel(
    weight: torch.Tensor, sizes: Sequence[int], dilation: Sequence[int]
) -> torch.Tensor:
    """The kernel of the circular convolution on a grid of ``sizes``: taps at d * j mod n.

    Taps that wrap (a dilated kernel wider than the grid) add up, which is what the circular
    convolution does with them.
    """
    out = weight
    for a, (n, d) in enumerate(zip(sizes, dilation, strict=True)):
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
    split = [v for n, s in zip(sizes, stride, strict=True) for v in (s, n // s)]
    k_hat = k_hat.reshape(groups, o // groups, i, *split)
    perm = [0, *(4 + 2 * a for a in range(spatial)), 1, *(3 + 2 * a for a in range(spatial)), 2]
    aliases = math.prod(stride)
    return k_hat.permute(perm).reshape(-1, o // groups, aliases * i) / math.sqrt(aliases)


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
    for a, (f, n) in enumerate(zip(fs, sizes, strict=True)):
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


def is_circular(geo: Geometry) -> bool:
    """The layer is a (strided) circular convolution on its input grid: circular padding of
    total d (k - 1), or a 1 x 1 kernel without padding."""
    if geo.is_matrix or geo.transposed:
        return False
    if geo.padding_mode == "circular" and geo.pads_wrap_exactly:
        return True
    return all(k == 1 for k in geo.kernel) and not any(lo or hi for lo, hi in geo.padding)


def circular_matrices(weight: torch.Tensor, geo: Geometry, sizes: Sequence[int]) -> torch.Tensor:
    """The frequency matrices of a circular conv (folded by the stride where it divides the
    size: then exact, :func:`strided_frequency_matrices`)."""
    if all(s == 1 for s in geo.stride) or not all(n % s == 0 for n, s in zip(sizes, geo.stride, strict=True)):
        return frequency_matrices(weight, sizes, geo.dilation, geo.groups)
    return strided_frequency_matrices(weight, sizes, geo.dilation, geo.groups, geo.stride)


def fft_sizes(geo: Geometry, shape: tuple[int, ...]) -> tuple[list[int], int, bool]:
    """(grid, copies, exact): the circular grid whose sigma bounds the layer at ``shape``.

    Circular padding of total d (k - 1), or a 1 x 1 kernel without padding: the layer is
    S o (circular conv on the input grid), exact where the stride divides the size (the
    frequencies fold, see :func:`circular_matrices`), else bounded by the stride-1 conv. Zeros: a valid conv of the padded size Np = n + l + r is a submatrix of
    the circular conv on Np points. Other paddings: ||P|| ||valid conv on Np||, ||P||^2 =
    ``copies``. Transposed: the full transposed conv on the zero-upsampled input,
    (n - 1) s + 1 + d (k - 1) points, of which the layer keeps a crop.
    """
    sizes = list(shape[1:])
    if geo.transposed:
        grid = [(n - 1) * s + geo.extent(a) for a, (n, s) in enumerate(zip(sizes, geo.stride, strict=True))]
        return grid, 1, False
    if is_circular(geo):
        return sizes, 1, all(n % s == 0 for n, s in zip(sizes, geo.stride, strict=True))
    grid = [n + lo + hi for n, (lo, hi) in zip(sizes, geo.padding, strict=True)]
    return grid, pad_copies(geo, shape), False


def fft_estimate(layer: Layer, shape: tuple[int, ...] | None, precise: bool = True) -> SigmaResult:
    """The "fft" method: exact for (strided) circular convolutions, a certified upper bound
    otherwise (:func:`fft_sizes`); ``precise``: float64, rounded up. Computed on W / c (c a
    power of two, :func:`.scale.scaled`) and multiplied by c: no overflow, and no SVD of
    values that make it fail to converge."""
    # precise: float64, and rounded up (see certify.certified), the exact value too: nearest
    # rounding would put it an ulp below the truth, and "exact" is also a certified upper
    # bound. The parametrizations, run every step, pass False and compute in the weight's own
    # precision (float32 at least).
    dtype = float32_or_wider(layer.weight)
    weight, scale = scaled(layer.weight.to(torch.float64 if precise else dtype))
    if layer.geo.is_matrix:
        # A matrix is a 1 x 1 convolution on one point: its one frequency matrix is W.
        value = torch.linalg.matrix_norm(weight, ord=2) * scale
        return SigmaResult(certified(value, dtype) if precise else value, "exact", "fft", None)
    shape = require_input_shape(layer, shape, "fft")
    grid, copies, exact = fft_sizes(layer.geo, shape)
    if is_circular(layer.geo):
        mats = circular_matrices(weight, layer.geo, grid)
    else:
        mats = frequency_matrices(weight, grid, layer.geo.dilation, layer.geo.groups)
    value = torch.linalg.matrix_norm(mats, ord=2).amax() * math.sqrt(copies) * scale
    kind: Guarantee = "exact" if exact else "upper"
    return SigmaResult(certified(value, dtype) if precise else value, kind, "fft", None)


def fft_size(n: int) -> int:
    """The smallest 5-smooth number (2^a 3^b 5^c) at least ``n``: a fast DFT length."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best
