"""The dense oracle: the operator's matrix in float64 and its exact largest singular value."""

from __future__ import annotations

import math

import torch

from .certify import certified
from .cost import SVD_MAX_ENTRIES, SVD_MAX_SIDE
from .geometry import output_shape
from .layer import Layer, require_input_shape
from .operator import apply, apply_adjoint
from .precision import float32_or_wider
from .result import SigmaResult
from .scale import scaled

__all__ = ["SVD_MAX_ENTRIES", "SVD_MAX_SIDE", "dense_matrix", "svd_estimate"]


def dense_matrix(layer: Layer, shape: tuple[int, ...] | None) -> torch.Tensor:
    """The operator's matrix in float64 (rows: outputs).

    Built from the identity basis of its smaller side: A applied to the input basis gives the
    columns, A^T applied to the output basis the rows, so the basis never outgrows the matrix.
    The size is checked by the caller (:func:`.cost.svd_cost`).
    """
    weight = layer.weight.to(torch.float64)
    if layer.geo.is_matrix:
        return weight
    shape = require_input_shape(layer, shape, "svd")
    out = output_shape(weight, layer.geo, shape)
    n_in, n_out = math.prod(shape), math.prod(out)
    if n_out < n_in:
        basis = torch.eye(n_out, dtype=torch.float64, device=weight.device).reshape(n_out, *out)
        return apply_adjoint(weight, layer.geo, basis, shape).reshape(n_out, n_in)
    basis = torch.eye(n_in, dtype=torch.float64, device=weight.device).reshape(n_in, *shape)
    return apply(weight, layer.geo, basis).reshape(n_in, n_out).transpose(0, 1)


def svd_estimate(layer: Layer, shape: tuple[int, ...] | None) -> SigmaResult:
    """The "svd" method: the exact sigma of the dense operator matrix, built from W / c (c a
    power of two, :func:`.scale.scaled`) and multiplied by c, so that the SVD sees entries of
    order one whatever the weight's magnitude."""
    weight, scale = scaled(layer.weight.to(torch.float64))
    unit = Layer(weight, layer.geo, layer.dim, layer.where)
    value = torch.linalg.matrix_norm(dense_matrix(unit, shape), ord=2) * scale
    # Rounded up (certify.certified): an exact value is also a certified upper bound, and
    # nearest rounding could leave it an ulp below the truth.
    return SigmaResult(certified(value, float32_or_wider(layer.weight)), "exact", "svd", None)
