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
  at ``input_shape``; for other convs the kernel-domain bound of Delattre et al. 2024, which holds
  for every input size (so it needs no ``input_shape`` and sits above the value at any one size).
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError, entry_point
from .dense import svd_estimate
from .fourier import fft_estimate
from .geometry import check_input_shape
from .gram import check_iterations, gram_estimate
from .layer import Layer, layer_of
from .matrix import reshape_estimate
from .power import POWER_ITERATIONS, power_estimate
from .precision import autocast_off
from .result import SigmaResult

__all__ = ["METHODS", "RESHAPE_ITERATIONS", "Method", "sigma"]

#: Default power steps of the "reshape" method.
RESHAPE_ITERATIONS = 100

Estimator = Callable[[Layer, tuple[int, ...] | None, int | None], SigmaResult]


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
    """

    name: str
    guarantee: str
    summary: str
    iterations: str | None
    trainable: bool
    estimate: Estimator


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "reshape", "lower", "power iteration on the weight viewed as a matrix (torch's "
            "spectral_norm; not the layer's operator for a convolution)", "power steps", True,
            lambda layer, shape, n: reshape_estimate(layer, check_iterations(n, RESHAPE_ITERATIONS)),
        ),
        Method(
            "power", "lower", "power iteration on the layer's operator at the input shape",
            "power steps", True,
            lambda layer, shape, n: power_estimate(layer, shape, check_iterations(n, POWER_ITERATIONS)),
        ),
        Method(
            "fft", "exact or upper", "the largest singular value over the kernel's DFT "
            "matrices at the input size (exact for circular convolutions)", None, True,
            lambda layer, shape, n: fft_estimate(layer, shape),
        ),
        Method(
            "gram", "upper", "Gram iteration, a certified bound (for any input size unless the "
            "convolution is circular)", "Gram steps", True, gram_estimate,
        ),
        Method(
            "svd", "exact", "the dense operator matrix's exact SVD in float64 (small layers)",
            None, False, lambda layer, shape, n: svd_estimate(layer, shape),
        ),
    )
}


@entry_point("sigma")
def sigma(
    module_or_weight: nn.Module | torch.Tensor,
    method: str = "power",
    input_shape: Sequence[int] | None = None,
    iterations: int | None = None,
    **layer_args: Any,
) -> SigmaResult:
    """Return the largest singular value of a layer's linear map, and what the number guarantees.

    Args:
        module_or_weight: an nn.Linear, nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d (a
            parametrized one is measured at its effective ``module.weight``), or a weight tensor
            with ``layer_args``.
        method: "reshape", "power", "fft", "gram" or "svd" (see the module docstring).
        input_shape: one sample's shape without the batch, (C, L), (C, H, W) or (C, D, H, W);
            a leading batch of 1 is accepted. Needed by "power", "fft", "svd" for convolutions.
        iterations: power steps ("reshape", "power") or Gram steps ("gram"); None: defaults.
            "fft" and "svd" take none.
        **layer_args: with a raw weight: stride, padding, dilation, groups, padding_mode,
            transposed, output_padding (torch's meanings); and ``dim`` for "reshape".

    Returns:
        A :class:`SigmaResult`; ``value`` is differentiable in the weight for every method
        (power iterations run without grad, and the final estimate is taken with grad).

    Raises:
        ParanormError: an unknown method, an unsupported layer, a missing or bad input_shape,
            iterations for a method that takes none, or a layer too large for "svd".

    Example:
        >>> import torch, paranorm as pn
        >>> conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        >>> exact = pn.sigma(conv, "svd", input_shape=(4, 6, 6))
        >>> exact.kind, pn.sigma(conv, "reshape").value.item() < exact.value.item()
        ('exact', True)
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
    layer = layer_of(module_or_weight, **layer_args)
    shape = check_input_shape(layer.weight, layer.geo, input_shape, layer.where)
    with autocast_off(layer.weight):  # estimators in float32 or wider, also under autocast
        return entry.estimate(layer, shape, iterations)

