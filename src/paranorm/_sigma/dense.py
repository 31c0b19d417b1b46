"""The dense oracle: the operator's matrix in float64 and its exact largest singular value."""

from __future__ import annotations

import math

import torch

from .._errors import ParanormError
from .geometry import output_shape
from .layer import Layer, require_input_shape
from .operator import apply
from .precision import float32_or_wider
from .result import SigmaResult

__all__ = ["SVD_MAX_ENTRIES", "SVD_MAX_SIDE", "dense_matrix", "svd_estimate"]

#: The dense oracle's limits: the smaller side of the operator matrix, and its entries.
SVD_MAX_SIDE = 2048
SVD_MAX_ENTRIES = 2**24


def dense_matrix(layer: Layer, shape: tuple[int, ...] | None) -> torch.Tensor:
    """The operator's matrix in float64 (rows: outputs), by applying it to the identity basis."""
    weight = layer.weight.to(torch.float64)
    if layer.geo.is_matrix:
        return weight
    shape = require_input_shape(layer, shape, "svd")
    out = output_shape(weight, layer.geo, shape)
    n_in, n_out = math.prod(shape), math.prod(out)
    if min(n_in, n_out) > SVD_MAX_SIDE or n_in * n_out > SVD_MAX_ENTRIES:
        raise ParanormError(
            f"method='svd' builds the dense {n_out} x {n_in} operator matrix of "
            f"{layer.where} at input_shape {shape}, above its limit (smaller side <= "
            f"{SVD_MAX_SIDE}, entries <= {SVD_MAX_ENTRIES}). Use a smaller input_shape, or "
            "method='power' (lower), 'fft' or 'gram' (exact/upper)."
        )
    basis = torch.eye(n_in, dtype=torch.float64, device=weight.device).reshape(n_in, *shape)
    return apply(weight, layer.geo, basis).reshape(n_in, n_out).transpose(0, 1)


def svd_estimate(layer: Layer, shape: tuple[int, ...] | None) -> SigmaResult:
    """The "svd" method: the exact sigma of the dense operator matrix."""
    value = torch.linalg.matrix_norm(dense_matrix(layer, shape), ord=2)
    return SigmaResult(value.to(float32_or_wider(layer.weight)), "exact", "svd", None)
