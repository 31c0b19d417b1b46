"""What a sigma method will cost at an input shape, estimated before it starts, and the limit.

Each method's working memory (bytes of the largest tensors it holds at once) and work
(multiply-adds, with a floor per step for the dispatch a step costs however small) follow from
the weight's shape, the geometry and the input shape alone, so a request that would take
gigabytes or minutes is refused before anything is allocated. The defaults, MAX_BYTES (1 GiB)
and MAX_WORK (1e12 multiply-adds: about a minute on a laptop CPU, seconds on a GPU), keep
every layer of the usual sizes (e.g. 512 channels at 32 x 32) below them; ``allow_large=True``
lifts them. The dense oracle ("svd") keeps its own shape limits (SVD_MAX_SIDE, SVD_MAX_ENTRIES)
under the same switch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._errors import ParanormError
from .fourier import fft_sizes, is_circular
from .geometry import Geometry, output_shape
from .layer import Layer

__all__ = [
    "MAX_BYTES",
    "MAX_NORMALIZATION_WORK",
    "MAX_WORK",
    "STEP_FLOOR",
    "SVD_MAX_ENTRIES",
    "SVD_MAX_SIDE",
    "Cost",
    "check_cost",
    "fft_cost",
    "gram_cost",
    "operator_work",
    "power_cost",
    "reshape_cost",
    "svd_cost",
]

#: Working memory a sigma computation may take by default (bytes).
MAX_BYTES = 2**30
#: Work a sigma computation may take by default (multiply-adds).
MAX_WORK = 1e12
#: Work spectral_norm's operator methods may take at an input shape (the warm-up and one
#: forward's sigma), a tenth of MAX_WORK: it is paid at registration, at every new input
#: shape, and (all but the warm-up) on every training step.
MAX_NORMALIZATION_WORK = 1e11
#: The least work one iteration step counts for, whatever its size: a step's kernel launches
#: and Python cost some microseconds, as much as this many multiply-adds.
STEP_FLOOR = 1e5
#: The dense oracle's shape limits: the smaller side of the operator matrix, and its entries.
SVD_MAX_SIDE = 2048
SVD_MAX_ENTRIES = 2**24


@dataclass(frozen=True)
class Cost:
    """Estimated peak working memory (bytes) and work (multiply-adds) of one computation;
    ``what`` names what dominates it, for the message."""

    bytes: float
    work: float
    what: str
    limit: str | None = None  # a shape limit of the method that is exceeded (svd's), if any


def operator_work(layer: Layer, shape: tuple[int, ...]) -> float:
    """Multiply-adds of one application of the layer's map A to one input of ``shape``."""
    weight, geo = layer.weight, layer.geo
    if geo.is_matrix:
        return float(weight.shape[0] * weight.shape[1])
    per_position = weight.shape[0] * weight.shape[1] * math.prod(weight.shape[2:])
    if geo.transposed:
        # Every input position meets every tap: the adjoint of the conv with this weight.
        return float(math.prod(shape[1:]) * per_position)
    out = output_shape(weight, geo, shape)
    return float(math.prod(out[1:]) * per_position)


def _sides(layer: Layer, shape: tuple[int, ...]) -> tuple[int, int]:
    out = output_shape(layer.weight, layer.geo, shape)
    return math.prod(shape), math.prod(out)


def reshape_cost(layer: Layer, iterations: int, itemsize: int) -> Cost:
    """Power iteration on the weight viewed as a matrix: two matrix-vector products a step."""
    numel = layer.weight.numel()
    work = iterations * max(2.0 * numel, STEP_FLOOR)
    return Cost(2.0 * numel * itemsize, work, f"{iterations} power steps on the {numel}-entry weight")


def power_cost(layer: Layer, shape: tuple[int, ...], iterations: int, block: int, itemsize: int) -> Cost:
    """Subspace iteration on A^T A with a block of ``block`` input-shaped vectors: per step
    A and A^T on the block and a QR; held: the block, A(block), A^T A(block) and the QR's copy."""
    n_in, n_out = _sides(layer, shape)
    step = 2.0 * block * operator_work(layer, shape) + 2.0 * block * block * n_in
    memory = itemsize * block * (3.0 * n_in + n_out)
    what = f"{iterations} power steps on a block of {block} vectors of {n_in} inputs and {n_out} outputs"
    return Cost(memory, iterations * max(step, STEP_FLOOR), what)


def _frequency_cost(geo: Geometry, weight_shape: tuple[int, ...], grid: list[int], full: bool) -> tuple[float, float]:
    """(entries, SVD work) of the kernel's DFT matrices on ``grid`` (half the last axis unless
    ``full``), complex, one c_out/g x c_in/g matrix per frequency and group."""
    freq = math.prod(grid[:-1]) * (grid[-1] if full else grid[-1] // 2 + 1)
    o, i = weight_shape[0], weight_shape[1]
    entries = float(freq) * o * i
    aliases = math.prod(geo.stride) if full else 1
    small, large = sorted((o // geo.groups, i * aliases))
    matrices = float(freq) * geo.groups / aliases
    return entries, matrices * 4.0 * small * small * large


def fft_cost(layer: Layer, shape: tuple[int, ...] | None) -> Cost:
    """The DFT of the kernel on the grid, its matrices (complex128) and their SVDs."""
    geo = layer.geo
    if geo.is_matrix or shape is None:
        o, i = layer.weight.shape[:2]
        return Cost(8.0 * 3 * o * i, 4.0 * min(o, i) ** 2 * max(o, i), "the SVD of the weight")
    grid, _, _ = fft_sizes(geo, shape)
    full = is_circular(geo) and any(s > 1 for s in geo.stride)
    entries, work = _frequency_cost(geo, tuple(layer.weight.shape), grid, full)
    return Cost(16.0 * 3 * entries, work, f"the kernel's DFT on a {'x'.join(map(str, grid))} grid")


def gram_cost(layer: Layer, shape: tuple[int, ...] | None, iterations: int) -> Cost:
    """Gram iteration: on the matrix, on the DFT matrices (circular), or on the kernel, whose
    support doubles each step (Delattre et al. 2024): the last steps dominate."""
    geo, weight = layer.geo, layer.weight
    if geo.is_matrix:
        small, large = sorted(weight.shape[:2])
        work = small * small * large + iterations * float(small) ** 3
        return Cost(8.0 * 3 * small * large, work, f"{iterations} Gram steps on the weight")
    if shape is not None and is_circular(geo):
        grid, _, _ = fft_sizes(geo, shape)
        full = any(s > 1 for s in geo.stride)
        entries, _ = _frequency_cost(geo, tuple(weight.shape), grid, full)
        c = min(weight.shape[0] // geo.groups, weight.shape[1] * (math.prod(geo.stride) if full else 1))
        work = iterations * entries * c
        return Cost(16.0 * 3 * entries, work, f"{iterations} Gram steps on the kernel's DFT matrices")
    c = min(weight.shape[0] // geo.groups, weight.shape[1])
    memory = work = 0.0
    for step in range(iterations + 1):  # the last DFT, of the last kernel, has no product
        points = [2 ** (step + 1) * (k - 1) + 1 for k in weight.shape[2:]]
        points[-1] = points[-1] // 2 + 1
        entries = math.prod(points) * geo.groups * float(c) ** 2
        memory = max(memory, 16.0 * 3 * entries)
        work += entries * c if step < iterations else entries
    return Cost(memory, work, f"{iterations} kernel-domain Gram steps (the kernel doubles each step)")


def svd_cost(layer: Layer, shape: tuple[int, ...] | None) -> Cost:
    """The dense operator matrix (float64), built from the identity on its smaller side, and
    its SVD."""
    if layer.geo.is_matrix or shape is None:
        n_out, n_in = layer.weight.shape[:2]
        build = 0.0
    else:
        n_in, n_out = _sides(layer, shape)
        build = min(n_in, n_out) * operator_work(layer, shape)
    small, large = sorted((n_in, n_out))
    limit = None
    if small > SVD_MAX_SIDE or small * large > SVD_MAX_ENTRIES:
        limit = f"a dense matrix of smaller side <= {SVD_MAX_SIDE} and <= {SVD_MAX_ENTRIES} entries"
    memory = 8.0 * (small * small + 2.0 * small * large)
    what = f"the dense {n_out} x {n_in} operator matrix and its SVD"
    return Cost(memory, build + 4.0 * small * small * large, what, limit)


def _human(n: float, unit: str) -> str:
    if unit == "B":
        for scale, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if n >= scale:
                return f"{n / scale:.3g} {name}"
        return f"{n:.0f} B"
    return f"{n:.3g} {unit}"


def check_cost(
    cost: Cost, method: str, where: str, shape: tuple[int, ...] | None, allow_large: bool,
    max_work: float = MAX_WORK,
) -> None:
    """Raise if ``cost`` is past MAX_BYTES, ``max_work`` or the method's shape limit, unless
    ``allow_large``; the message names the limit, the estimate and the way to allow it."""
    if allow_large:
        return
    over = []
    if cost.limit is not None:
        over.append(cost.limit)
    if cost.bytes > MAX_BYTES:
        over.append(f"{_human(MAX_BYTES, 'B')} of memory")
    if cost.work > max_work:
        over.append(f"{max_work:.3g} multiply-adds")
    if not over:
        return
    at = "" if shape is None else f" at input_shape {shape}"
    raise ParanormError(
        f"method={method!r} for {where}{at} is above its limit: {cost.what} needs about "
        f"{_human(cost.bytes, 'B')} of memory and {cost.work:.3g} multiply-adds, past "
        f"the limit of {'; '.join(over)}. Pass allow_large=True (paranorm inspect: --allow-large) to run it anyway, or use a "
        "smaller input_shape (or fewer iterations), or a cheaper method ('gram' bounds a "
        "zero-padded conv at any input size)."
    )
