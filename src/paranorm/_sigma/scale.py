"""Keeping a weight's magnitude in range: exact power-of-two rescaling, and the range of
magnitudes in which a plain (unscaled) float norm is computed correctly.

sigma is positively homogeneous, sigma(W) = c sigma(W / c) for any c > 0, and for c a power of
two W / c is exact in binary floating point (only entries pushed below the smallest normal
number round, by at most half a subnormal ulp each). So every estimator of :mod:`paranorm._sigma`
runs on W / c with max|W / c| in [1, 2) and multiplies the result by c: squares and products
of W stay far from overflow (1e19 squared is inf in float32) and from underflow (1e-20
squared is subnormal, 1e-23 squared is 0), and the decompositions (SVD, QR) never see values
that make LAPACK fail to converge. IEEE 754-2019, section 5.3.3 (scaleB); Higham, "Accuracy and
Stability of Numerical Algorithms", 2nd ed., section 27.8 (avoiding overflow in norms).

torch's own kernels (``torch._weight_norm``, ``F.normalize``, the power step of its
spectral_norm) square the entries without scaling. :func:`plain_norm_range` is the range of
magnitudes in which such a sum of squares is exact to rounding: the checks at registration
(:mod:`paranorm._validate`) refuse weights outside it for the paths that must stay torch's
bit for bit.
"""

from __future__ import annotations

import math

import torch

__all__ = ["accumulation_dtype", "plain_norm_range", "pow2_floor", "pow2_scale", "scaled"]


def pow2_floor(magnitude: torch.Tensor) -> torch.Tensor:
    """Elementwise 2^(e - 1) for ``magnitude`` in [2^(e - 1), 2^e); 1 where it is 0 or not finite.

    frexp gives m = f 2^e with f in [0.5, 1), and m / (2 f) is that power of two exactly (2 f
    is exact and the quotient representable), subnormal m and m near the largest number
    included. No host synchronization.
    """
    mantissa, _ = torch.frexp(magnitude)
    one = torch.ones_like(magnitude)
    usable = torch.isfinite(magnitude) & (magnitude > 0)
    return torch.where(usable, magnitude / torch.where(usable, 2 * mantissa, one), one)


def pow2_scale(t: torch.Tensor) -> torch.Tensor:
    """c = 2^(e - 1) where max|t| lies in [2^(e - 1), 2^e): max|t / c| is in [1, 2).

    A detached 0-dim tensor of ``t``'s dtype; 1 when ``t`` is empty, all zero or not finite
    (nothing to scale, or nothing a scale could save). No host synchronization
    (:func:`pow2_floor` of max|t|).
    """
    if t.numel() == 0:
        return torch.ones((), dtype=t.dtype, device=t.device)
    return pow2_floor(t.detach().abs().amax())


def scaled(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t / c, c) with c = :func:`pow2_scale` (t): sigma(t) = c sigma(t / c), exactly.

    The division keeps ``t``'s autograd graph, and c is a constant, so the gradient of
    c sigma(t / c) is the gradient of sigma at t.
    """
    c = pow2_scale(t)
    return t / c, c


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype torch's norm kernels accumulate a ``dtype`` tensor's squares in: float32 for
    the half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def plain_norm_range(dtype: torch.dtype, n: int) -> tuple[float, float]:
    """(low, high): the magnitudes of the largest entry of an ``n``-entry slice for which its
    2-norm, taken as sqrt(sum of squares) in ``dtype``'s accumulation type without scaling, is
    correct to rounding.

    high: n high^2 stays a quarter below the largest finite number, so no square or partial
    sum overflows. low: low^2 >= n tiny (tiny the smallest normal number), so the squares that
    fall below tiny, each off by at most half a subnormal ulp (tiny eps / 2), change the sum
    by at most eps / 2 relative to its largest term. For float32 and n = 1000 this is about
    [3.4e-18, 2.9e17]; for float64 [4.7e-153, 2.1e152].
    """
    info = torch.finfo(accumulation_dtype(dtype))
    n = max(n, 1)
    high = math.sqrt(info.max / 4 / n)
    low = math.sqrt(n * info.tiny)
    return low, high
