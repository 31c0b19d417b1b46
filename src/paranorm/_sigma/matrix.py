"""The weight viewed as a matrix (Miyato et al. 2018), its power iteration and the soft clamp.

This is torch's spectral_norm: the weight with ``dim`` first and the rest flattened, and the
persistent power iteration u <- normalize(W v), v <- normalize(W^H u). For a convolution its
sigma is the *reshaped kernel's*, not the layer's Lipschitz constant (see :mod:`.power`,
:mod:`.fourier`, :mod:`.gram`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import Layer
from .precision import float32_or_wider
from .result import SigmaResult
from .scale import scaled

__all__ = [
    "divide_by_scale",
    "power_iteration_",
    "power_step_sigma_",
    "rank_one_shape",
    "reshape_estimate",
    "reshape_sigma",
    "soft_scale",
    "soft_scale_active",
    "weight_to_matrix",
]


def weight_to_matrix(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """View a weight as the 2-D matrix Miyato et al. normalize: ``dim`` first, the rest flattened."""
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


@torch.no_grad()
def power_step_sigma_(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iterations: int, eps: float
) -> torch.Tensor:
    """:func:`power_iteration_`, returning sigma = u^T W v' = ||W^T u|| from the last step.

    The same ops as ``F.normalize(..., out=)``, so u and v get torch's values bit for bit; the
    norm of the last W^T u is kept instead of recomputing u^T W v with another pass over W.
    """
    for _ in range(n_iterations):
        F.normalize(torch.mv(matrix, v), dim=0, eps=eps, out=u)
        t = torch.mv(matrix.t(), u)
        norm = torch.linalg.vector_norm(t)
        denominator = norm.clamp_min(eps)
        torch.div(t, denominator.expand_as(t), out=v)
    # u^T W v' = ||t||^2 / max(||t||, eps): equal to ||t|| unless W^T u vanishes.
    return norm * (norm / denominator)


def reshape_sigma(matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sigma = u^H W v with u, v held constant: differentiable in W, a lower estimate."""
    return torch.vdot(u, torch.mv(matrix, v))


def soft_scale(sigma: torch.Tensor, coeff: float | None) -> torch.Tensor:
    """What spectral norm divides by: sigma (hard), or max(1, sigma / coeff) (soft: only shrinks).

    Behrmann et al., "Invertible Residual Networks", ICML 2019, for the soft variant.
    """
    return sigma if coeff is None else torch.clamp(sigma / coeff, min=1.0)


def divide_by_scale(
    weight: torch.Tensor, unit: torch.Tensor, scale: torch.Tensor, unit_sigma: torch.Tensor,
    coeff: float | None,
) -> torch.Tensor:
    """W / soft_scale(sigma) from W = c U (``unit``, ``scale`` c a power of two) and
    sigma = c sigma(U), without forming sigma, which can overflow its dtype (a float32 W with
    entries near 3e38) while W / sigma is of order one.

    Hard: U / sigma(U). Soft: W where sigma / coeff < 1 (the clamp keeps W), else
    U / (sigma(U) / coeff). Since multiplying by c is exact, each is bit for bit
    W / soft_scale(sigma, coeff) wherever that does not overflow, and so is the gradient.
    """
    if coeff is None:
        return unit / unit_sigma
    ratio = unit_sigma / coeff
    # sigma / coeff >= 1 as c ratio >= 1; 1 / c is inf only for a c so small that it is false.
    shrink = ratio >= scale.reciprocal()
    return torch.where(shrink, unit / ratio, weight)


def soft_scale_active(sigma: torch.Tensor, coeff: float) -> torch.Tensor:
    """d max(1, sigma / c) / d sigma * c: 1 where the clamp passes sigma / c (at equality too,
    as torch's clamp does), else 0; tested in sigma's dtype, as the forward made it."""
    return (sigma / coeff >= 1.0).to(sigma.dtype)


def rank_one_shape(
    u: torch.Tensor, v: torch.Tensor, shape: torch.Size, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """u and v reshaped so that ``u * v`` broadcasts to ``shape`` as u v^T laid out like W."""
    rest = [s for d, s in enumerate(shape) if d != dim]
    u_shape = [1] * len(shape)
    u_shape[dim] = shape[dim]
    return u.view(u_shape), v.view(rest).unsqueeze(dim)


def reshape_estimate(layer: Layer, iterations: int) -> SigmaResult:
    """The "reshape" method: power iteration on the reshaped matrix from seeded random u, v.

    Run on W / c (c a power of two, :func:`.scale.scaled`) and multiplied by c, so that no
    square overflows or underflows whatever the weight's magnitude.
    """
    matrix = weight_to_matrix(layer.weight, layer.dim).to(float32_or_wider(layer.weight))
    matrix, scale = scaled(matrix)
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    u, v = (
        F.normalize(torch.randn(n, generator=generator, device=matrix.device, dtype=matrix.dtype), dim=0)
        for n in matrix.shape
    )
    power_iteration_(matrix.detach(), u, v, iterations)
    return SigmaResult(reshape_sigma(matrix, u, v) * scale, "lower", "reshape", iterations)
