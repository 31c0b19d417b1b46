"""Power iteration on a layer's true operator A: a lower estimate of sigma at one input size.

Gouk, Frank, Pfahringer, Cree, "Regularisation of Neural Networks by Enforcing Lipschitz
Continuity", 2021; Farnia, Zhang, Tse, "Generalizable Adversarial Training via Spectral
Normalization", ICLR 2019: a persistent input-shaped x, y = A(x) / ||A(x)||,
x = A^T(y) / ||A^T(y)||, sigma ~ ||A x||. Any unit x gives a lower estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .fourier import fourier_start
from .geometry import Geometry
from .layer import Layer, require_input_shape
from .operator import apply, apply_adjoint
from .precision import float32_or_wider
from .result import SigmaResult
from .scale import scaled

__all__ = [
    "POWER_BLOCK",
    "POWER_ITERATIONS",
    "WARM_START_MAX_ENTRIES",
    "Operator",
    "block_power_iteration_",
    "block_sigma",
    "operator_power_iteration_",
    "operator_sigma",
    "power_estimate",
    "start_vector",
    "warm_start",
    "warm_start_applies",
]

#: Default power steps of the "power" (and "reshape") method.
POWER_ITERATIONS = 100
#: "power" iterates a block of this many vectors (subspace iteration): a conv's top singular
#: values cluster, and a block resolves the cluster at the rate sigma_(b+1) / sigma_1.
POWER_BLOCK = 8
#: The Fourier warm start takes an SVD of every frequency's matrix: skipped above this many
#: DFT entries (e.g. 512 channels at 64 x 64), where it would cost more than it saves.
WARM_START_MAX_ENTRIES = 2**23

Operator = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def operator_power_iteration_(
    forward: Operator, adjoint: Operator, x: torch.Tensor, n_iterations: int, eps: float = 1e-12
) -> None:
    """Power iteration on a linear operator, in place on the input-shaped unit vector ``x``.

    y = A(x) / ||A(x)||; x = A^T(y) / ||A^T(y)|| (Gouk et al. 2021; Farnia et al. 2019): x tends
    to the top right singular vector, linearly at the rate (sigma_2 / sigma_1)^2.
    """
    for _ in range(n_iterations):
        y = forward(x)
        y = y / y.norm().clamp_min(eps)
        z = adjoint(y)
        x.copy_(z / z.norm().clamp_min(eps))


def operator_sigma(forward: Operator, x: torch.Tensor) -> torch.Tensor:
    """||A(x)|| for a unit ``x`` held constant: a lower estimate, differentiable in A.

    Its gradient in the weight is that of y^T A x with y = A(x)/||A(x)||: torch's u^T W v.
    """
    return torch.linalg.vector_norm(forward(x))


@torch.no_grad()
def block_power_iteration_(
    forward: Operator, adjoint: Operator, x: torch.Tensor, n_iterations: int
) -> None:
    """Subspace (block power) iteration on A^T A, in place on the batch ``x`` (b, *input).

    X <- orth(A^T A X) (QR of the flattened block). The top Ritz value converges at the rate
    (sigma_(b+1) / sigma_1)^2 instead of (sigma_2 / sigma_1)^2: a convolution's top singular
    values come in tight clusters (neighbouring frequencies), which a single vector resolves
    only slowly. With b = 1 this is :func:`operator_power_iteration_`.
    """
    b = x.shape[0]
    for _ in range(n_iterations):
        z = adjoint(forward(x)).reshape(b, -1)
        q, _ = torch.linalg.qr(z.transpose(0, 1))
        x.copy_(q.transpose(0, 1).reshape(x.shape))


def block_sigma(forward: Operator, x: torch.Tensor) -> torch.Tensor:
    """Largest singular value of A restricted to the span of the orthonormal block ``x``.

    ||A X||_2 <= ||A|| ||X||_2 = ||A||: a lower estimate, differentiable in A (X held constant).
    """
    out = forward(x)
    return torch.linalg.matrix_norm(out.reshape(x.shape[0], -1), ord=2)


def start_vector(shape: Sequence[int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A unit random vector of ``shape`` from a private generator (the global RNG is untouched)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return x / x.norm()


def warm_start_applies(weight: torch.Tensor, geo: Geometry, shape: tuple[int, ...]) -> bool:
    """Whether :func:`warm_start` takes the Fourier plane waves (a conv whose kernel DFT at
    ``shape`` has at most WARM_START_MAX_ENTRIES entries), not just a random vector."""
    sizes = shape[1:]
    if geo.is_matrix or not sizes:
        return False
    dft_entries = math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1) * weight.shape[0] * weight.shape[1]
    return dft_entries <= WARM_START_MAX_ENTRIES


def warm_start(weight: torch.Tensor, geo: Geometry, shape: tuple[int, ...]) -> torch.Tensor:
    """A unit start for operator power iteration, shape (1, *shape).

    For a conv, the better of the two Fourier plane waves
    (:func:`.fourier.fourier_start`) plus a seeded random vector of the same norm;
    for a matrix, or a conv whose kernel DFT would exceed WARM_START_MAX_ENTRIES, the random
    vector. Any start gives a lower estimate; a good one converges
    sooner.
    """
    if not warm_start_applies(weight, geo, shape):
        return start_vector((1, *shape), weight.dtype, weight.device)
    waves = fourier_start(weight, shape[1:], geo.dilation, geo.groups, geo.transposed)
    gains = torch.linalg.vector_norm(apply(weight, geo, waves).flatten(1), dim=1)
    wave = waves[int(gains.argmax()) : int(gains.argmax()) + 1]
    # Half random: a plane wave alone can miss the top singular vector entirely (a strided
    # conv couples only aliased frequencies), and power iteration never finds what its start
    # lacks.
    x = wave + start_vector((1, *shape), weight.dtype, weight.device)
    return x / x.norm()


def power_estimate(layer: Layer, shape: tuple[int, ...] | None, iterations: int) -> SigmaResult:
    """The "power" method: subspace iteration on A^T A from a warm start; a lower estimate.

    Run on W / c (c a power of two, :func:`.scale.scaled`) and multiplied by c.
    """
    if layer.geo.is_matrix:
        shape = (layer.weight.shape[1],)
    shape = require_input_shape(layer, shape, "power")
    weight, scale = scaled(layer.weight.to(float32_or_wider(layer.weight)))
    detached = weight.detach()
    block = min(POWER_BLOCK, math.prod(shape))
    x = torch.cat([warm_start(detached, layer.geo, shape), start_vector((block - 1, *shape), weight.dtype, weight.device, seed=1)])
    block_power_iteration_(
        lambda t: apply(detached, layer.geo, t),
        lambda t: apply_adjoint(detached, layer.geo, t, shape),
        x,
        iterations,
    )
    value = block_sigma(lambda t: apply(weight, layer.geo, t), x) * scale
    return SigmaResult(value, "lower", "power", iterations)
