"""``paranorm.sigma``: the largest singular value of a layer's linear map, and what it guarantees.

A convolution's Lipschitz constant (l2) is the spectral norm of the operator x -> conv(x) at
the input size it sees, not of its reshaped kernel (Miyato et al. 2018), which underestimates
it (about 1.5x for 3x3 kernels). Each method says what its number is: ``kind="lower"`` (an
estimate that never exceeds the truth), ``"exact"`` or ``"upper"`` (a certified bound).

Methods:

- ``"reshape"``: power iteration on the weight viewed as a matrix (torch's spectral_norm). A
  lower estimate of the *reshaped matrix's* sigma only, not of the layer's.
- ``"power"``: power iteration on the true operator A at ``input_shape`` (A^T is the matching
  transposed conv). Lower (Gouk et al. 2021; Farnia et al. 2019).
- ``"fft"``: Sedghi, Gupta, Long 2019: sigma = max over frequencies of the largest singular value
  of the c_out x c_in matrix of the kernel's DFT at the input size. Exact for circular padding
  (and unpadded 1 x 1 kernels) at stride 1, or at a stride that divides the input size (the
  aliased frequencies fold into one matrix each); for every other layer an upper bound (see
  below). Needs ``input_shape``.
- ``"gram"``: Gram iteration (Delattre et al. 2023): upper bound, for matrices and circular convs
  at ``input_shape``; for other convs a bound on the sup over all frequencies of the kernel's
  DFT (Delattre et al. 2024), which holds for every input size (so it needs no ``input_shape``
  and sits above the value at any one size): their kernel-domain Gram iteration, or, where it
  costs less (most one-dimensional kernels) and a tolerance applies, the exact sigma on a grid
  of frequencies fine enough that Bernstein's inequality bounds what lies between
  (:mod:`paranorm._sigma.sampled`); ``iterations`` then reads 0 (no Gram steps).
- ``"svd"``: the dense oracle: the operator's matrix, built by applying the layer to the identity
  basis in float64, and ``torch.linalg.matrix_norm(ord=2)``. Exact; small layers only.

Why "fft"/"gram" bound every layer: a strided conv is the stride-1 conv followed by subsampling
(norm <= 1); a transposed conv has the norm of the conv it transposes; zero padding is a
submatrix of a circular conv of the padded size; dilation is a sparser kernel; groups are
diagonal blocks (max over groups). Reflect/replicate/uneven circular padding is a gather P that
copies entries: ||A|| <= ||P|| ||valid conv||, with ||P||^2 the largest copy count (exact from
``input_shape``, else the worst case). These are handled exactly by "power" and "svd".

Biases never enter sigma: the Lipschitz constant of x -> Ax + b is ||A||.
"""


from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError, entry_point
from .checks import check_finite, check_not_empty, check_weight
from .cost import Cost, check_cost, fft_cost, gram_cost, power_cost, reshape_cost, svd_cost
from .dense import svd_estimate
from .fourier import fft_estimate
from .geometry import check_input_shape
from .gram import check_iterations, check_tolerance, gram_estimate, gram_iterations
from .layer import Layer, layer_of
from .matrix import reshape_estimate
from .power import POWER_BLOCK, POWER_ITERATIONS, power_estimate
from .precision import autocast_off, float32_or_wider
from .result import SigmaResult

__all__ = ["METHODS", "RESHAPE_ITERATIONS", "Method", "sigma"]

#: Default power steps of the "reshape" method.
RESHAPE_ITERATIONS = 100

Estimator = Callable[[Layer, tuple[int, ...] | None, int | None], SigmaResult]
Coster = Callable[[Layer, tuple[int, ...] | None, int | None], Cost]


@dataclass(frozen=True)
class Method:
    """One way of estimating sigma, as every part of paranorm names it.

    Attributes:
        name: what ``method=`` says.
        guarantee: what its number is for a layer's operator ("lower", "exact", "upper", or
            "exact or upper" where that depends on the layer).
        summary: one line on how it works.
        iterations: what ``iterations=`` counts, or None when it takes none.
        trainable: usable by ``paranorm.spectral_norm(method=...)``, which needs a
            differentiable estimate cheap enough to run on every forward.
        estimate: ``(layer, input_shape, iterations) -> SigmaResult``.
        cost: ``(layer, input_shape, iterations) -> Cost``, its memory and work, estimated
            before it starts (:mod:`.cost`).
    """

    name: str
    guarantee: str
    summary: str
    iterations: str | None
    trainable: bool
    estimate: Estimator
    cost: Coster


def _itemsize(layer: Layer) -> int:
    return torch.empty((), dtype=float32_or_wider(layer.weight)).element_size()


def _power_shape(layer: Layer, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return (layer.weight.shape[1],) if layer.geo.is_matrix else shape


def _power_cost(layer: Layer, shape: tuple[int, ...] | None, n: int | None) -> Cost:
    shape = _power_shape(layer, shape)
    if shape is None:  # the estimate itself says that it needs one
        return Cost(0.0, 0.0, "nothing")
    block = min(POWER_BLOCK, math.prod(shape))
    return power_cost(layer, shape, check_iterations(n, POWER_ITERATIONS), block, _itemsize(layer))


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "reshape", "lower", "power iteration on the weight viewed as a matrix (torch's "
            "spectral_norm; not the layer's operator for a convolution)", "power steps", True,
            lambda layer, shape, n: reshape_estimate(layer, check_iterations(n, RESHAPE_ITERATIONS)),
            lambda layer, shape, n: reshape_cost(layer, check_iterations(n, RESHAPE_ITERATIONS), _itemsize(layer)),
        ),
        Method(
            "power", "lower", "power iteration on the layer's operator at the input shape",
            "power steps", True,
            lambda layer, shape, n: power_estimate(layer, shape, check_iterations(n, POWER_ITERATIONS)),
            _power_cost,
        ),
        Method(
            "fft", "exact or upper", "the largest singular value over the kernel's DFT "
            "matrices at the input size (exact for circular convolutions)", None, True,
            lambda layer, shape, n: fft_estimate(layer, shape),
            lambda layer, shape, n: fft_cost(layer, shape),
        ),
        Method(
            "gram", "upper", "Gram iteration, a certified bound (for any input size unless the "
            "convolution is circular)", "Gram steps", True, gram_estimate,
            lambda layer, shape, n: gram_cost(layer, shape, gram_iterations(layer, shape, n)),
        ),
        Method(
            "svd", "exact", "the dense operator matrix's exact SVD in float64 (small layers)",
            None, False, lambda layer, shape, n: svd_estimate(layer, shape),
            lambda layer, shape, n: svd_cost(layer, shape),
        ),
    )
}


def check_values(layer: Layer) -> None:
    """Raise unless the weight has values (not meta), entries, and only finite ones."""
    check_weight(layer.weight, layer.where)
    check_not_empty(layer.weight, layer.where)
    check_finite(layer.weight.detach(), layer.where)


def check_result(result: SigmaResult, where: str) -> SigmaResult:
    """``result``, after checking that its value is a finite number in its dtype.

    The estimators work on the weight scaled to order one, so only a sigma past the largest
    number of the result's dtype (float32 for float32 and half weights) can end up infinite.
    """
    value = float(result.value.detach())
    if math.isfinite(value):
        return result
    dtype = result.value.dtype
    fix = (
        "Compute it in float64: pass the weight as weight.double() (or module.double())."
        if dtype != torch.float64
        else "The weights are beyond what float64 represents; rescale them."
    )
    raise ParanormError(
        f"sigma of {where} by method={result.method!r} is above the largest {dtype} "
        f"({torch.finfo(dtype).max:.3g}), so it cannot be returned as a {dtype} number. {fix}"
    )


@entry_point("sigma")
def sigma(
    module_or_weight: nn.Module | torch.Tensor,
    method: str = "power",
    input_shape: Sequence[int] | None = None,
    iterations: int | None = None,
    *,
    allow_large: bool = False,
    tolerance: float | None = None,
    **layer_args: Any,
) -> SigmaResult:
    """Return the largest singular value of a layer's linear map, and what the number guarantees.

    Every method works on the weight divided by a power of two near its largest entry and
    multiplies the result back (exact: sigma(W) = 2^k sigma(2^-k W)), so any finite weight of
    float16, bfloat16, float32 or float64 gives a finite, correct sigma, from subnormal
    entries to the largest representable ones, unless sigma itself is past the largest number
    of its dtype (then a float32 weight must be passed as float64).

    Args:
        module_or_weight: an nn.Linear, nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d (a
            parametrized one is measured at its effective ``module.weight``), or a weight tensor
            with ``layer_args``.
        method: "reshape", "power", "fft", "gram" or "svd" (see the module docstring).
        input_shape: one sample's shape without the batch, (C, L), (C, H, W) or (C, D, H, W);
            a leading batch of 1 is accepted. Needed by "power", "fft", "svd" for convolutions.
        iterations: power steps ("reshape", "power") or Gram steps ("gram", at most
            GRAM_MAX_ITERATIONS); None: defaults. "fft" and "svd" take none.
        allow_large: run even when the estimated memory or work is past the limits of
            :mod:`paranorm._sigma.cost` (1 GiB, 1e12 multiply-adds; "svd" also a dense matrix
            of at most 2048 rows or columns and 2^24 entries). Off: such a request is refused
            before it starts, with the estimate.
        tolerance: "gram" on a convolution that is not circular at ``input_shape``: the
            bound is within this (relative) of a lower estimate (default GRAM_TOLERANCE, 1%):
            Gram steps stop there, or the frequency grid is that fine. A larger one is faster
            and looser, still certified.
        **layer_args: with a raw weight: stride, padding, dilation, groups, padding_mode,
            transposed, output_padding (torch's meanings); and ``dim`` for "reshape".

    Returns:
        A :class:`SigmaResult`; ``value`` is differentiable in the weight for every method
        (power iterations run without grad, and the final estimate is taken with grad).

    Raises:
        ParanormError: an unknown method, an unsupported layer, a weight that is not a dense
            float16/bfloat16/float32/float64 tensor with values (int8, complex, float8,
            sparse, meta), an empty or non-finite weight, a missing or bad input_shape,
            iterations for a method that takes none, a request past the cost limits, or a
            sigma past the largest number of its dtype.

    Example:
        >>> import torch, paranorm as pn
        >>> conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        >>> exact = pn.sigma(conv, "svd", input_shape=(4, 6, 6))
        >>> exact.kind, pn.sigma(conv, "reshape").value.item() < exact.value.item()
        ('exact', True)
        >>> f"{float(pn.sigma(torch.full((2, 2), 1e30), 'svd')):.4g}"  # no overflow in float32
        '2e+30'
    """
    entry = METHODS.get(method) if isinstance(method, str) else None
    if entry is None:
        raise ParanormError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    if iterations is not None and entry.iterations is None:
        raise ParanormError(
            f"method={method!r} takes no iterations (it is computed directly), got "
            f"iterations={iterations!r}. Drop iterations, or pick one of "
            f"{', '.join(m for m, e in METHODS.items() if e.iterations)}."
        )
    estimator = entry.estimate
    if tolerance is not None:
        estimator = _with_tolerance(method, iterations, tolerance)
    layer = layer_of(module_or_weight, **layer_args)
    shape = check_input_shape(layer.weight, layer.geo, input_shape, layer.where)
    check_values(layer)
    check_cost(entry.cost(layer, shape, iterations), method, layer.where, shape, allow_large)
    with autocast_off(layer.weight):  # estimators in float32 or wider, also under autocast
        return check_result(estimator(layer, shape, iterations), layer.where)


def _with_tolerance(method: str, iterations: int | None, tolerance: float) -> Estimator:
    """The "gram" estimator with ``tolerance``, after checking that it applies."""
    if method != "gram":
        raise ParanormError(
            f"tolerance applies to method='gram' only (when its Gram steps may stop early), "
            f"got method={method!r}. Drop tolerance, or use method='gram'."
        )
    if iterations is not None:
        raise ParanormError(
            f"tolerance={tolerance!r} and iterations={iterations!r} both fix when the Gram "
            "steps stop; pass one of them."
        )
    checked = check_tolerance(tolerance)
    return lambda layer, shape, n: gram_estimate(layer, shape, n, tolerance=checked)
