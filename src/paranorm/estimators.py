"""Estimators of the largest singular value sigma, as pure functions of tensors.

They know nothing of modules: the parametrizations in :mod:`paranorm.spectral_norm` own the
state (u, v) and call these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["weight_to_matrix", "power_iteration_", "reshape_sigma"]


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
