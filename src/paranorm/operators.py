"""The linear map of a layer (bias left out) and its adjoint, from the weight and layer args.

A convolution is ``A = S o C o P``: ``P`` pads the input (zeros, circular, reflect or
replicate), ``C`` is the padding-free ("valid") stride-1 correlation and ``S`` keeps every
``stride``-th output. ``A^T`` is the matching ``conv_transpose`` (``output_padding`` chosen so
that shapes match) followed by the adjoint of the padding: a crop for zeros, a scatter-add of
the copied entries for the other modes (every mode's padding is a gather ``x[idx]``, whose
adjoint is ``index_add``). A transposed convolution is the adjoint of the convolution with
the same weight and arguments, so its adjoint is that convolution (cropped to shape).

Biases never enter: sigma is a property of the linear part, the Lipschitz constant of an
affine map is that of its linear part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ParanormError

__all__ = [
    "Geometry",
    "apply",
    "apply_adjoint",
    "geometry",
    "output_shape",
    "pad_copies",
    "pad_indices",
]

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


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
        return all(l + r == self.extent(a) - 1 for a, (l, r) in enumerate(self.padding))


def _tuple(value: int | Sequence[int], n: int, what: str, minimum: int) -> tuple[int, ...]:
    values: Any = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(values, (tuple, list)) and len(values) == n
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values)
    if not ok:
        raise ParanormError(
            f"sigma: {what} must be an int >= {minimum} or a tuple of {n} such ints for a "
            f"{n}-d convolution, got {what}={value!r}."
        )
    return tuple(values)


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
            f"sigma: expected a 2-D (Linear) or 3/4/5-D (convolution) weight, got shape "
            f"{tuple(weight.shape)}. Pass the layer's weight, e.g. conv.weight."
        )
    n = weight.ndim - 2
    kernel = tuple(weight.shape[2:])
    stride_t = _tuple(stride, n, "stride", 1)
    dilation_t = _tuple(dilation, n, "dilation", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ParanormError(f"sigma: groups must be a positive int, got groups={groups!r}.")
    channels = weight.shape[0]
    if channels % groups:
        raise ParanormError(
            f"sigma: weight.shape[0]={channels} must be divisible by groups={groups}."
        )
    if padding_mode not in PADDING_MODES:
        raise ParanormError(
            f"sigma: unknown padding_mode={padding_mode!r}; expected one of "
            f"{', '.join(PADDING_MODES)}."
        )
    if isinstance(padding, str):
        if padding == "valid":
            pads = tuple((0, 0) for _ in range(n))
        elif padding == "same" and not transposed:
            if any(s != 1 for s in stride_t):
                raise ParanormError("sigma: padding='same' needs stride 1 (torch's rule).")
            # torch: total d (k - 1), the smaller half before.
            pads = tuple(
                ((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2)
                for k, d in zip(kernel, dilation_t)
            )
        else:
            raise ParanormError(
                f"sigma: padding={padding!r} is not understood; expected an int, a tuple, "
                "'valid', or 'same' (not for transposed convolutions)."
            )
    else:
        pads = tuple((p, p) for p in _tuple(padding, n, "padding", 0))
    out_pad = _tuple(output_padding, n, "output_padding", 0)
    if transposed:
        if padding_mode != "zeros":
            raise ParanormError(
                f"sigma: transposed convolutions support only padding_mode='zeros' (torch's "
                f"rule), got {padding_mode!r}."
            )
        if any(op >= max(s, d) for op, s, d in zip(out_pad, stride_t, dilation_t)):
            raise ParanormError(
                f"sigma: output_padding={out_pad} must be smaller than stride or dilation."
            )
    elif any(out_pad):
        raise ParanormError("sigma: output_padding applies only to transposed convolutions.")
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
        (l, r), s = geo.padding[a], geo.stride[a]
        if geo.transposed:
            sizes.append((n - 1) * s - l - r + ext + geo.output_padding[a])
        else:
            sizes.append((n + l + r - ext) // s + 1)
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
            f"sigma: input_shape must be a tuple of positive ints, got {input_shape!r} for {where}."
        )
    if geo.is_matrix:
        if not shape or shape[-1] != weight.shape[1]:
            raise ParanormError(
                f"sigma: input_shape {shape} does not end in in_features={weight.shape[1]} "
                f"for {where}. Pass e.g. input_shape=({weight.shape[1]},)."
            )
        return (weight.shape[1],)
    want = geo.spatial + 1
    if len(shape) == want + 1 and shape[0] == 1:
        shape = shape[1:]
    c = in_channels(weight, geo)
    example = (c,) + ("L",) if geo.spatial == 1 else (c, "H", "W") if geo.spatial == 2 else (c, "D", "H", "W")
    if len(shape) != want or shape[0] != c:
        raise ParanormError(
            f"sigma: input_shape must be one sample's shape {example} (channels first, no "
            f"batch, or a batch of 1), got {shape} for {where}."
        )
    for a, n in enumerate(shape[1:]):
        (l, r), mode = geo.padding[a], geo.padding_mode
        if mode == "circular" and max(l, r) > n:
            raise ParanormError(
                f"sigma: circular padding {max(l, r)} exceeds the input size {n} on spatial axis "
                f"{a} for {where} (torch's rule). Use a larger input_shape."
            )
        if mode == "reflect" and max(l, r) >= n:
            raise ParanormError(
                f"sigma: reflect padding {max(l, r)} must be smaller than the input size {n} on "
                f"spatial axis {a} for {where} (torch's rule). Use a larger input_shape."
            )
    out = output_shape(weight, geo, shape)
    if any(s <= 0 for s in out):
        raise ParanormError(
            f"sigma: input_shape {shape} is too small for {where}: the output would have shape "
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
    raise ParanormError(f"sigma: no index map for padding_mode={mode!r}.")


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
    for a, (l, r) in enumerate(geo.padding):
        if input_shape is not None:
            idx = pad_indices(input_shape[1 + a], l, r, geo.padding_mode)
            total *= int(torch.bincount(idx).max())
        elif geo.padding_mode == "replicate":
            total *= 1 + l + r
        else:
            total *= 1 + (l > 0) + (r > 0)
    return total


def _pad(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    if geo.padding_mode == "zeros":
        flat = [p for pair in reversed(geo.padding) for p in pair]
        return F.pad(x, flat) if any(flat) else x
    for a, (l, r) in enumerate(geo.padding):
        axis = 2 + a
        x = x.index_select(axis, pad_indices(x.shape[axis], l, r, geo.padding_mode, x.device))
    return x


def _pad_adjoint(z: torch.Tensor, geo: Geometry, sizes: Sequence[int]) -> torch.Tensor:
    for a, (l, r) in enumerate(geo.padding):
        axis, n = 2 + a, sizes[a]
        if geo.padding_mode == "zeros":
            z = z.narrow(axis, l, n)
        else:
            shape = list(z.shape)
            shape[axis] = n
            idx = pad_indices(n, l, r, geo.padding_mode, z.device)
            z = z.new_zeros(shape).index_add(axis, idx, z)
    return z


def apply(weight: torch.Tensor, geo: Geometry, x: torch.Tensor) -> torch.Tensor:
    """A(x) for a batch ``x`` of shape (N, C, *spatial): the layer without its bias."""
    if geo.is_matrix:
        return x @ weight.transpose(0, 1)
    if geo.transposed:
        l_pads = tuple(l for l, _ in geo.padding)
        return _CONV_T[geo.spatial](
            x, weight, None, geo.stride, l_pads, geo.output_padding, geo.groups, geo.dilation
        )
    return _CONV[geo.spatial](_pad(x, geo), weight, None, geo.stride, 0, geo.dilation, geo.groups)


def apply_adjoint(
    weight: torch.Tensor, geo: Geometry, y: torch.Tensor, input_shape: Sequence[int]
) -> torch.Tensor:
    """A^T(y) for a batch ``y`` of outputs; ``input_shape`` is one input sample's shape."""
    if geo.is_matrix:
        return y @ weight
    sizes = tuple(input_shape[1:])
    if geo.transposed:
        # conv_transpose is the adjoint of conv with the same arguments; an output_padding
        # >= stride (allowed when < dilation) leaves extra outputs that the crop drops.
        l_pads = tuple(l for l, _ in geo.padding)
        z = _CONV[geo.spatial](y, weight, None, geo.stride, l_pads, geo.dilation, geo.groups)
        for a, n in enumerate(sizes):
            z = z.narrow(2 + a, 0, n)
        return z
    padded = [n + l + r for n, (l, r) in zip(sizes, geo.padding)]
    # The valid conv of a padded size Np gives (Np - ext) // s + 1 outputs; the transposed
    # conv maps them back to (out - 1) s + ext entries: output_padding adds the rest (< s).
    out_pad = tuple(
        p - ((o - 1) * s + geo.extent(a))
        for a, (p, o, s) in enumerate(zip(padded, y.shape[2:], geo.stride))
    )
    z = _CONV_T[geo.spatial](y, weight, None, geo.stride, 0, out_pad, geo.groups, geo.dilation)
    return _pad_adjoint(z, geo, sizes)


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
