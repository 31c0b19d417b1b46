"""``paranorm.sigma`` (module ``paranorm.measure``): the largest singular value of a layer's linear map, and what it guarantees.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils.parametrize import type_before_parametrizations

from . import estimators as est
from . import operators as ops
from ._base import autocast_off
from .errors import ParanormError

__all__ = ["METHODS", "SVD_MAX_ENTRIES", "SVD_MAX_SIDE", "SigmaResult", "sigma"]

METHODS = ("reshape", "power", "fft", "gram", "svd")
#: Default iterations: power steps for "reshape"/"power", Gram steps for "gram".
RESHAPE_ITERATIONS = 100
POWER_ITERATIONS = 100
#: "power" iterates a block of this many vectors (subspace iteration): a conv's top singular
#: values cluster, and a block resolves the cluster at the rate sigma_(b+1) / sigma_1.
POWER_BLOCK = 8
#: The Fourier warm start takes an SVD of every frequency's matrix: skipped above this many
#: DFT entries (e.g. 512 channels at 64 x 64), where it would cost more than it saves.
WARM_START_MAX_ENTRIES = 2**23
GRAM_MATRIX_ITERATIONS = 10
GRAM_CIRCULAR_ITERATIONS = 8
#: The kernel-domain bound's kernel grows to 2^N (k - 1) + 1 per axis; by default N is the
#: most steps (2..6) whose last product stays under this many multiply-adds
#: (:func:`paranorm.estimators.kernel_gram_iterations`).
GRAM_KERNEL_BUDGET = 4e9
#: The dense oracle's limits: the smaller side of the operator matrix, and its entries.
#: Relative widening of the float64 bounds: their matrix products round at ~1e-16 per step,
#: and a bound that is tight (matrices, circular convs) would otherwise sit an ulp below.
ROUNDING_MARGIN = 1e-12
SVD_MAX_SIDE = 2048
SVD_MAX_ENTRIES = 2**24

Kind = Literal["lower", "exact", "upper"]

_LAYER_ARGS = ("stride", "padding", "dilation", "groups", "padding_mode", "transposed", "output_padding")
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class SigmaResult:
    """sigma of a layer: ``value`` (0-dim tensor), what it guarantees (``kind``), how it was found."""

    value: torch.Tensor
    kind: Kind
    method: str
    iterations: int | None

    def __float__(self) -> float:
        return float(self.value.detach())

    def __repr__(self) -> str:
        it = "" if self.iterations is None else f", iterations={self.iterations}"
        return f"SigmaResult({float(self):.6g}, kind={self.kind!r}, method={self.method!r}{it})"


@dataclass(frozen=True)
class Layer:
    """A weight with its geometry, the ``dim`` of its reshaped matrix and a name for messages."""

    weight: torch.Tensor
    geo: ops.Geometry
    dim: int
    where: str


def layer_of(module_or_weight: nn.Module | torch.Tensor, **layer_args: Any) -> Layer:
    """The weight and geometry of a Linear/Conv/ConvTranspose module or of a raw weight."""
    unknown = set(layer_args) - set(_LAYER_ARGS) - {"dim"}
    if unknown:
        raise ParanormError(
            f"sigma: unknown argument(s) {', '.join(sorted(unknown))}; layer arguments are "
            f"{', '.join(_LAYER_ARGS)} and dim."
        )
    dim = layer_args.pop("dim", None)
    weight: torch.Tensor
    geo: ops.Geometry
    if isinstance(getattr(module_or_weight, "weight", module_or_weight), UninitializedParameter):
        raise ParanormError(
            f"sigma: the weight of {type(module_or_weight).__name__} is a lazy, uninitialized "
            "parameter. Run one forward pass first."
        )
    if isinstance(module_or_weight, nn.Module):
        module: Any = module_or_weight
        kind = type_before_parametrizations(module)
        where = kind.__name__ + ".weight"
        if layer_args:
            raise ParanormError(
                f"sigma: layer arguments ({', '.join(sorted(layer_args))}) are read from the "
                f"module {kind.__name__}; pass them only with a raw weight tensor."
            )
        if issubclass(kind, nn.Linear):
            weight = module.weight
            geo = ops.geometry(weight)
        elif issubclass(kind, _CONVS + _TRANSPOSED):
            weight = module.weight
            transposed = issubclass(kind, _TRANSPOSED)
            geo = ops.geometry(
                weight,
                stride=module.stride,
                padding=module.padding,
                dilation=module.dilation,
                groups=module.groups,
                padding_mode=module.padding_mode,
                transposed=transposed,
                output_padding=module.output_padding if transposed else 0,
            )
        else:
            raise ParanormError(
                f"sigma: {kind.__name__} is not supported; expected nn.Linear, nn.Conv1d/2d/3d or "
                "nn.ConvTranspose1d/2d/3d (or pass a weight tensor with its layer arguments)."
            )
        if dim is None:
            dim = 1 if issubclass(kind, _TRANSPOSED) else 0
    elif isinstance(module_or_weight, torch.Tensor):
        weight = module_or_weight
        where = f"weight of shape {tuple(weight.shape)}"
        if weight.ndim == 2 and layer_args:
            raise ParanormError(
                f"sigma: a 2-D weight is a Linear layer; layer arguments "
                f"({', '.join(sorted(layer_args))}) apply to 3/4/5-D convolution weights."
            )
        geo = ops.geometry(weight, **layer_args)
        if dim is None:
            dim = 1 if geo.transposed else 0
    else:
        raise ParanormError(
            f"sigma: expected an nn.Module or a weight tensor, got {type(module_or_weight).__name__}."
        )
    if not weight.is_floating_point():
        raise ParanormError(f"sigma: {where} has dtype {weight.dtype}; expected floating point.")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -weight.ndim <= dim < weight.ndim:
        raise ParanormError(f"sigma: dim={dim!r} is not an axis of {where}.")
    return Layer(weight, geo, dim % weight.ndim, where)


def _iterations(iterations: int | None, default: int) -> int:
    if iterations is None:
        return default
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ParanormError(f"sigma: iterations must be a positive int or None, got {iterations!r}.")
    return iterations


def _need_shape(layer: Layer, shape: tuple[int, ...] | None, method: str) -> tuple[int, ...]:
    if shape is None:
        raise ParanormError(
            f"sigma: method={method!r} needs input_shape for {layer.where} (a convolution's norm "
            "depends on the input size). Pass one sample's shape, e.g. input_shape=(C, H, W)."
        )
    return shape


def _work_dtype(weight: torch.Tensor) -> torch.dtype:
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def _reshape(layer: Layer, iterations: int) -> SigmaResult:
    matrix = est.weight_to_matrix(layer.weight, layer.dim).to(_work_dtype(layer.weight))
    generator = torch.Generator(device=matrix.device).manual_seed(0)
    u = torch.nn.functional.normalize(
        torch.randn(matrix.shape[0], generator=generator, device=matrix.device, dtype=matrix.dtype), dim=0
    )
    v = torch.nn.functional.normalize(
        torch.randn(matrix.shape[1], generator=generator, device=matrix.device, dtype=matrix.dtype), dim=0
    )
    est.power_iteration_(matrix.detach(), u, v, iterations)
    return SigmaResult(est.reshape_sigma(matrix, u, v), "lower", "reshape", iterations)


def dense_matrix(layer: Layer, shape: tuple[int, ...] | None) -> torch.Tensor:
    """The operator's matrix in float64 (rows: outputs), by applying it to the identity basis."""
    weight = layer.weight.to(torch.float64)
    if layer.geo.is_matrix:
        return weight
    shape = _need_shape(layer, shape, "svd")
    out = ops.output_shape(weight, layer.geo, shape)
    n_in, n_out = math.prod(shape), math.prod(out)
    if min(n_in, n_out) > SVD_MAX_SIDE or n_in * n_out > SVD_MAX_ENTRIES:
        raise ParanormError(
            f"sigma: method='svd' builds the dense {n_out} x {n_in} operator matrix of "
            f"{layer.where} at input_shape {shape}, above its limit (smaller side <= "
            f"{SVD_MAX_SIDE}, entries <= {SVD_MAX_ENTRIES}). Use a smaller input_shape, or "
            "method='power' (lower), 'fft' or 'gram' (exact/upper)."
        )
    basis = torch.eye(n_in, dtype=torch.float64, device=weight.device).reshape(n_in, *shape)
    return ops.apply(weight, layer.geo, basis).reshape(n_in, n_out).transpose(0, 1)


def _svd(layer: Layer, shape: tuple[int, ...] | None) -> SigmaResult:
    value = torch.linalg.matrix_norm(dense_matrix(layer, shape), ord=2)
    return SigmaResult(value.to(_work_dtype(layer.weight)), "exact", "svd", None)


def start_vector(shape: Sequence[int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A unit random vector of ``shape`` from a private generator (the global RNG is untouched)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return x / x.norm()


def warm_start(weight: torch.Tensor, geo: ops.Geometry, shape: tuple[int, ...]) -> torch.Tensor:
    """A unit start for operator power iteration, shape (1, *shape).

    For a conv, the better of the two Fourier plane waves
    (:func:`paranorm.estimators.fourier_start`) plus a seeded random vector of the same norm;
    for a matrix, or a conv whose kernel DFT would exceed WARM_START_MAX_ENTRIES, the random
    vector. Any start gives a lower estimate; a good one converges
    sooner.
    """
    sizes = shape[1:]
    dft_entries = math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1) * weight.shape[0] * weight.shape[1] if sizes else 0
    if geo.is_matrix or dft_entries > WARM_START_MAX_ENTRIES:
        return start_vector((1, *shape), weight.dtype, weight.device)
    waves = est.fourier_start(weight, shape[1:], geo.dilation, geo.groups, geo.transposed)
    gains = torch.linalg.vector_norm(ops.apply(weight, geo, waves).flatten(1), dim=1)
    wave = waves[int(gains.argmax()) : int(gains.argmax()) + 1]
    # Half random: a plane wave alone can miss the top singular vector entirely (a strided
    # conv couples only aliased frequencies), and power iteration never finds what its start
    # lacks.
    x = wave + start_vector((1, *shape), weight.dtype, weight.device)
    return x / x.norm()


def _power(layer: Layer, shape: tuple[int, ...] | None, iterations: int) -> SigmaResult:
    if layer.geo.is_matrix:
        shape = (layer.weight.shape[1],)
    shape = _need_shape(layer, shape, "power")
    weight = layer.weight.to(_work_dtype(layer.weight))
    detached = weight.detach()
    block = min(POWER_BLOCK, math.prod(shape))
    x = torch.cat([warm_start(detached, layer.geo, shape), start_vector((block - 1, *shape), weight.dtype, weight.device, seed=1)])
    est.block_power_iteration_(
        lambda t: ops.apply(detached, layer.geo, t),
        lambda t: ops.apply_adjoint(detached, layer.geo, t, shape),
        x,
        iterations,
    )
    value = est.block_sigma(lambda t: ops.apply(weight, layer.geo, t), x)
    return SigmaResult(value, "lower", "power", iterations)


def is_circular(geo: ops.Geometry) -> bool:
    """The layer is a (strided) circular convolution on its input grid: circular padding of
    total d (k - 1), or a 1 x 1 kernel without padding."""
    if geo.is_matrix or geo.transposed:
        return False
    if geo.padding_mode == "circular" and geo.pads_wrap_exactly:
        return True
    return all(k == 1 for k in geo.kernel) and not any(l or r for l, r in geo.padding)


def circular_matrices(weight: torch.Tensor, geo: ops.Geometry, sizes: Sequence[int]) -> torch.Tensor:
    """The frequency matrices of a circular conv (folded by the stride where it divides the
    size: then exact, :func:`paranorm.estimators.strided_frequency_matrices`)."""
    if all(s == 1 for s in geo.stride) or not all(n % s == 0 for n, s in zip(sizes, geo.stride)):
        return est.frequency_matrices(weight, sizes, geo.dilation, geo.groups)
    return est.strided_frequency_matrices(weight, sizes, geo.dilation, geo.groups, geo.stride)


def fft_sizes(geo: ops.Geometry, shape: tuple[int, ...]) -> tuple[list[int], int, bool]:
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
        grid = [(n - 1) * s + geo.extent(a) for a, (n, s) in enumerate(zip(sizes, geo.stride))]
        return grid, 1, False
    if is_circular(geo):
        return sizes, 1, all(n % s == 0 for n, s in zip(sizes, geo.stride))
    grid = [n + l + r for n, (l, r) in zip(sizes, geo.padding)]
    return grid, ops.pad_copies(geo, shape), False


def _fft(layer: Layer, shape: tuple[int, ...] | None, precise: bool = True) -> SigmaResult:
    # precise: float64, and an upper bound rounded up (see _certified): float32 would put a
    # tight bound an ulp below the truth. The parametrizations, run every step, pass False
    # and compute in the weight's own precision (float32 at least).
    dtype = _work_dtype(layer.weight)
    weight = layer.weight.to(torch.float64 if precise else dtype)
    if layer.geo.is_matrix:
        # A matrix is a 1 x 1 convolution on one point: its one frequency matrix is W.
        value = torch.linalg.matrix_norm(weight, ord=2)
        return SigmaResult(value.to(dtype), "exact", "fft", None)
    shape = _need_shape(layer, shape, "fft")
    grid, copies, exact = fft_sizes(layer.geo, shape)
    if is_circular(layer.geo):
        mats = circular_matrices(weight, layer.geo, grid)
    else:
        mats = est.frequency_matrices(weight, grid, layer.geo.dilation, layer.geo.groups)
    value = torch.linalg.matrix_norm(mats, ord=2).amax() * math.sqrt(copies)
    if exact or not precise:
        return SigmaResult(value.to(dtype), "exact" if exact else "upper", "fft", None)
    return SigmaResult(_certified(value, dtype), "upper", "fft", None)


def _certified(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (float64) widened by ROUNDING_MARGIN for the float64 rounding of the steps
    that computed it, cast to ``dtype`` and rounded up, so that an upper bound stays one."""
    value = value * (1 + ROUNDING_MARGIN)
    cast = value.to(dtype)
    low = cast.detach().to(value.dtype) < value.detach()
    bump = torch.nextafter(cast.detach(), torch.full_like(cast, math.inf)) - cast.detach()
    return cast + torch.where(low, bump, torch.zeros_like(bump))


def _gram(
    layer: Layer,
    shape: tuple[int, ...] | None,
    iterations: int | None,
    precise: bool = True,
    budget: float | None = None,
) -> SigmaResult:
    # precise: computed in float64 and rounded up, since many squarings in float32 would blur
    # the last digits of a number that is meant to be a guarantee. The parametrizations pass
    # False (the weight's own precision, float32 at least) and a smaller budget.
    dtype = _work_dtype(layer.weight)
    weight = layer.weight.to(torch.float64 if precise else dtype)
    geo = layer.geo
    if geo.is_matrix:
        n = _iterations(iterations, GRAM_MATRIX_ITERATIONS)
        value = est.gram_iteration(weight, n)
    elif shape is not None and is_circular(geo):
        n = _iterations(iterations, GRAM_CIRCULAR_ITERATIONS)
        mats = circular_matrices(weight, geo, shape[1:])
        value = est.gram_iteration(mats, n).amax()
    else:
        default = est.kernel_gram_iterations(weight, geo.groups, budget or GRAM_KERNEL_BUDGET)
        n = _iterations(iterations, default)
        circular_exact = geo.padding_mode == "circular" and geo.pads_wrap_exactly
        copies = 1 if geo.transposed or circular_exact else ops.pad_copies(geo, shape)
        value = est.kernel_gram_bound(weight, geo.groups, n) * math.sqrt(copies)
    return SigmaResult(_certified(value, dtype) if precise else value, "upper", "gram", n)


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
        **layer_args: with a raw weight: stride, padding, dilation, groups, padding_mode,
            transposed, output_padding (torch's meanings); and ``dim`` for "reshape".

    Returns:
        A :class:`SigmaResult`; ``value`` is differentiable in the weight for every method
        (power iterations run without grad, and the final estimate is taken with grad).

    Raises:
        ParanormError: an unknown method, an unsupported layer, a missing or bad input_shape,
            or a layer too large for "svd".

    Example:
        >>> import torch, paranorm as pn
        >>> conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        >>> exact = pn.sigma(conv, "svd", input_shape=(4, 6, 6))
        >>> exact.kind, pn.sigma(conv, "reshape").value.item() < exact.value.item()
        ('exact', True)
    """
    if method not in METHODS:
        raise ParanormError(f"sigma: unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    layer = layer_of(module_or_weight, **layer_args)
    shape = ops.check_input_shape(layer.weight, layer.geo, input_shape, layer.where)
    with autocast_off(layer.weight):  # estimators in float32 or wider, also under autocast
        if method == "reshape":
            return _reshape(layer, _iterations(iterations, RESHAPE_ITERATIONS))
        if method == "svd":
            return _svd(layer, shape)
        if method == "power":
            return _power(layer, shape, _iterations(iterations, POWER_ITERATIONS))
        if method == "fft":
            return _fft(layer, shape)
        return _gram(layer, shape, iterations)

