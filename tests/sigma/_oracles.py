"""Independent references for the bounds on sup_w ||K(w)||, the sup of a kernel's DFT."""

from __future__ import annotations

import torch

from paranorm._sigma import fourier


def symbol_sup_oracle(weight: torch.Tensor, groups: int = 1, points: int = 256) -> float:
    """max_w ||K(w)||_2 on a fine grid: a lower estimate of the sup that the bound must clear."""
    spatial = weight.ndim - 2
    sizes = [points] * spatial if spatial == 1 else [points // 4] * spatial
    mats = fourier.frequency_matrices(weight, sizes, [1] * spatial, groups)
    return torch.linalg.matrix_norm(mats, ord=2).max().item()
