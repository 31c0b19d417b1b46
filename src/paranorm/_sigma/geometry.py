"""Everything but the weight that fixes a layer's linear map, and the input shapes it takes.

A convolution is ``A = S o C o P``: ``P`` pads the input (zeros, circular, reflect or
replicate), ``C`` is the padding-free ("valid") stride-1 correlation and ``S`` keeps every
``stride``-th output (see :mod:`.operator` for A and its adjoint). A Linear layer is a matrix:
``spatial`` is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import ParanormError

__all__ = [
    "PADDING_MODES",
    "Geometry",
    "check_input_shape",
    "geometry",
    "in_channels",
    "most_copies",
    "numel",
    "out_channels",
    "output_shape",
    "pad_copies",
    "pad_indices",
]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


@dataclass(frozen=True)
class Geometry:
    """Everything but the weight that fixes a layer's linear map.

    ``spatial`` is 0 for a matrix (Linear), else 1, 2 or 3. ``padding`` holds (before, after)
    per spatial axis; for a transposed conv it is torch's symmetric crop ``(p, p)``.
    """

    spatial: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[tuple[int, int], ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    @property
    def is_matrix(self) -> bool:
        return self.spatial == 0

    def extent(self, axis: int) -> int:
        """Span of the dilated kernel along ``axis``: d (k - 1) + 1."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1

    @property
    def pads_wrap_exactly(self) -> bool:
        """Padding of total d (k - 1) on every axis ('same' size before striding)."""
        return all(lo + hi == self.extent(a) - 1 for a, (lo, hi) in enumerate(self.padding))


def _tuple(value: int | Sequence[int], n: int, what: str, minimum: int) -> tuple[int, ...]:
    values: Any = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(values, (tuple, list)) and len(values) == n
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    if not ok:
        raise ParanormError(
            f"{what} must be an int >= {minimum} or a tuple of {n} such ints for a "
            f"{n}-d convolution, got {what}={value!r}."
        )
    return tuple(values)


def _paddings(
    padding: int | Sequence[int] | str, n: int, kernel: tuple[int, ...], stride: tuple[int, ...],
    dilation: tuple[int, ...], transposed: bool,
) -> tuple[tuple[int, int], ...]:
    """(before, after) per spatial axis, from torch's ``padding`` argument."""
    if not isinstance(padding, str):
        return tuple((p, p) for p in _tuple(padding, n, "padding", 0))
    if padding == "valid":
        return tuple((0, 0) for _ in range(n))
    if padding != "same" or transposed:
        raise ParanormError(
            f"padding={padding!r} is not understood; expected an int, a tuple, "
            "'valid', or 'same' (not for transposed convolutions)."
        )
    if any(s != 1 for s in stride):
        raise ParanormError("padding='same' needs stride 1 (torch's rule).")
    # torch: total d (k - 1), the smaller half before.
    return tuple(((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in zip(kernel, dilation, strict=True))


def _check_transposed(
    transposed: bool, padding_mode: str, output_padding: tuple[int, ...], stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
    if not transposed:
        if any(output_padding):
            raise ParanormError("output_padding applies only to transposed convolutions.")
        return
    if padding_mode != "zeros":
        raise ParanormError(
            f"transposed convolutions support only padding_mode='zeros' (torch's "
            f"rule), got {padding_mode!r}."
        )
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation, strict=True)):
        raise ParanormError(f"output_padding={output_padding} must be smaller than stride or dilation.")


def geometry(
    weight: torch.Tensor,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: int | Sequence[int] = 0,
) -> Geometry:
    """Check and normalize a layer's arguments (torch's meaning) for ``weight``.

    A 2-D weight is a Linear layer (no other argument applies); a 3-, 4- or 5-D weight a
    1-, 2- or 3-d (transposed) convolution with torch's weight layout.
    """
    if weight.ndim == 2:
        return Geometry(spatial=0)
    if weight.ndim not in (3, 4, 5):
        raise ParanormError(
            f"expected a 2-D (Linear) or 3/4/5-D (convolution) weight, got shape "
            f"{tuple(weight.shape)}. Pass the layer's weight, e.g. conv.weight."
        )
    n = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    stride_t = _tuple(stride, n, "stride", 1)
    dilation_t = _tuple(dilation, n, "dilation", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ParanormError(f"groups must be a positive int, got groups={groups!r}.")
    channels = weight.shape[0]
    if channels % groups:
        raise ParanormError(
            f"weight.shape[0]={channels} must be divisible by groups={groups}."
        )
    if padding_mode not in PADDING_MODES:
        raise ParanormError(
            f"unknown padding_mode={padding_mode!r}; expected one of "
            f"{', '.join(PADDING_MODES)}."
        )
    pads = _paddings(padding, n, kernel, stride_t, dilation_t, transposed)
    out_pad = _tuple(output_padding, n, "output_padding", 0)
    _check_transposed(transposed, padding_mode, out_pad, stride_t, dilation_t)
    return Geometry(
        spatial=n,
        kernel=kernel,
        stride=stride_t,
        padding=pads,
        dilation=dilation_t,
        groups=groups,
        padding_mode=padding_mode,
        transposed=transposed,
        output_padding=out_pad,
    )


def in_channels(weight: torch.Tensor, geo: Geometry) -> int:
    """Channels (features) of the layer's input."""
    if geo.is_matrix:
        return weight.shape[1]
    return weight.shape[0] if geo.transposed else weight.shape[1] * geo.groups


def out_channels(weight: torch.Tensor, geo: Geometry) -> int:
    if geo.is_matrix:
        return weight.shape[0]
    return weight.shape[1] * geo.groups if geo.transposed else weight.shape[0]


def output_shape(weight: torch.Tensor, geo: Geometry, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of one output sample for one input sample of ``input_shape`` (no batch)."""
    if geo.is_matrix:
        return (*tuple(input_shape)[:-1], weight.shape[0])
    sizes = []
    for a, n in enumerate(input_shape[1:]):
        ext = geo.extent(a)
        (lo, hi), s = geo.padding[a], geo.stride[a]
        if geo.transposed:
            sizes.append((n - 1) * s - lo - hi + ext + geo.output_padding[a])
        else:
            sizes.append((n + lo + hi - ext) // s + 1)
    return (out_channels(weight, geo), *sizes)


def check_input_shape(
    weight: torch.Tensor, geo: Geometry, input_shape: Sequence[int] | None, where: str
) -> tuple[int, ...] | None:
    """One sample's shape as a tuple (a leading batch of 1 dropped), after checking it fits."""
    if input_shape is None:
        return None
    shape = tuple(input_shape.shape if isinstance(input_shape, torch.Tensor) else input_shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ParanormError(
            f"input_shape must be a tuple of positive ints, got {input_shape!r} for {where}."
        )
    if geo.is_matrix:
        if not shape or shape[-1] != weight.shape[1]:
            raise ParanormError(
                f"input_shape {shape} does not end in in_features={weight.shape[1]} "
                f"for {where}. Pass e.g. input_shape=({weight.shape[1]},)."
            )
        return (weight.shape[1],)
    want = geo.spatial + 1
    if len(shape) == want + 1 and shape[0] == 1:
        shape = shape[1:]
    c = in_channels(weight, geo)
    example = (c, *(("L",), ("H", "W"), ("D", "H", "W"))[geo.spatial - 1])
    if len(shape) != want or shape[0] != c:
        raise ParanormError(
            f"input_shape must be one sample's shape {example} (channels first, no "
            f"batch, or a batch of 1), got {shape} for {where}."
        )
    for a, n in enumerate(shape[1:]):
        (lo, hi), mode = geo.padding[a], geo.padding_mode
        if mode == "circular" and max(lo, hi) > n:
            raise ParanormError(
                f"circular padding {max(lo, hi)} exceeds the input size {n} on spatial axis "
                f"{a} for {where} (torch's rule). Use a larger input_shape."
            )
        if mode == "reflect" and max(lo, hi) >= n:
            raise ParanormError(
                f"reflect padding {max(lo, hi)} must be smaller than the input size {n} on "
                f"spatial axis {a} for {where} (torch's rule). Use a larger input_shape."
            )
    out = output_shape(weight, geo, shape)
    if any(s <= 0 for s in out):
        raise ParanormError(
            f"input_shape {shape} is too small for {where}: the output would have shape "
            f"{out}. Use a larger input_shape."
        )
    return shape


def pad_indices(n: int, before: int, after: int, mode: str, device: torch.device | None = None) -> torch.Tensor:
    """Indices into range(n) such that ``x[idx]`` is x padded with ``mode`` (not zeros)."""
    j = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return j % n
    if mode == "replicate":
        return j.clamp(0, n - 1)
    if mode == "reflect":
        j = j.abs()
        return torch.where(j > n - 1, 2 * (n - 1) - j, j)
    raise ParanormError(f"no index map for padding_mode={mode!r}.")


def pad_copies(geo: Geometry, input_shape: Sequence[int] | None) -> int:
    """The most times one input entry is copied by the padding: ||P||^2 (P is a gather).

    P is a Kronecker product of 1-D gathers, so P^T P is diagonal with the copy counts and
    ||P||^2 = prod over axes of the largest count. Without ``input_shape``, the worst case over
    sizes torch allows: 1 + [before > 0] + [after > 0] for circular and reflect, 1 + before +
    after for replicate. Zeros padding copies nothing: 1.
    """
    if geo.padding_mode == "zeros" or geo.is_matrix:
        return 1
    total = 1
    for a, (lo, hi) in enumerate(geo.padding):
        if input_shape is not None:
            total *= most_copies(input_shape[1 + a], lo, hi, geo.padding_mode)
        elif geo.padding_mode == "replicate":
            total *= 1 + lo + hi
        else:
            total *= 1 + (lo > 0) + (hi > 0)
    return total


def most_copies(n: int, before: int, after: int, mode: str) -> int:
    """The largest number of times :func:`pad_indices` (n, before, after, mode) holds one
    index, counted without building it (an input size may be huge).

    circular: the n + before + after positions run through the n residues in order, so some
    residue comes ceil((n + before + after) / n) times. replicate: the ends, 1 + before and
    1 + after (both for n = 1). reflect (before, after < n): index j is copied by the left pad
    for 1 <= j <= before and by the right pad for n - 1 - after <= j <= n - 2.
    """
    if mode == "circular":
        return -(-(n + before + after) // n)
    if mode == "replicate":
        return 1 + before + after if n == 1 else 1 + max(before, after)
    if mode == "reflect":
        left = (1, before) if before else None
        right = (n - 1 - after, n - 2) if after else None
        if left and right and max(left[0], right[0]) <= min(left[1], right[1]):
            return 3
        return 1 + (left is not None or right is not None)
    raise ParanormError(f"no index map for padding_mode={mode!r}.")




def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
