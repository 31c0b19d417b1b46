"""A layer's linear map A (bias left out) and its adjoint A^T, from the weight and its geometry.

``A^T`` of a convolution is the matching ``conv_transpose`` (``output_padding`` chosen so that
shapes match) followed by the adjoint of the padding: a crop for zeros, a scatter-add of the
copied entries for the other modes (every mode's padding is a gather ``x[idx]``, whose adjoint
is ``index_add``). A transposed convolution is the adjoint of the convolution with the same
weight and arguments, so its adjoint is that convolution (cropped to shape).

Biases never enter: sigma is a property of the linear part, the Lipschitz constant of an
affine map is that of its linear part.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .geometry import Geometry, pad_indices

__all__ = ["apply", "apply_adjoint"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _pad(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    if geo.padding_mode == "zeros":
        flat = [p for pair in reversed(geo.padding) for p in pair]
        return F.pad(x, flat) if any(flat) else x
    for a, (lo, hi) in enumerate(geo.padding):
        axis = 2 + a
        x = x.index_select(axis, pad_indices(x.shape[axis], lo, hi, geo.padding_mode, x.device))
    return x


def _pad_adjoint(z: torch.Tensor, geo: Geometry, sizes: Sequence[int]) -> torch.Tensor:
    for a, (lo, hi) in enumerate(geo.padding):
        axis, n = 2 + a, sizes[a]
        if geo.padding_mode == "zeros":
            z = z.narrow(axis, lo, n)
        else:
            shape = list(z.shape)
            shape[axis] = n
            idx = pad_indices(n, lo, hi, geo.padding_mode, z.device)
            z = z.new_zeros(shape).index_add(axis, idx, z)
    return z


def apply(weight: torch.Tensor, geo: Geometry, x: torch.Tensor) -> torch.Tensor:
    """A(x) for a batch ``x`` of shape (N, C, *spatial): the layer without its bias."""
    if geo.is_matrix:
        return x @ weight.transpose(0, 1)
    if geo.transposed:
        l_pads = tuple(lo for lo, _ in geo.padding)
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
        l_pads = tuple(lo for lo, _ in geo.padding)
        z = _CONV[geo.spatial](y, weight, None, geo.stride, l_pads, geo.dilation, geo.groups)
        for a, n in enumerate(sizes):
            z = z.narrow(2 + a, 0, n)
        return z
    padded = [n + lo + hi for n, (lo, hi) in zip(sizes, geo.padding, strict=True)]
    # The valid conv of a padded size Np gives (Np - ext) // s + 1 outputs; the transposed
    # conv maps them back to (out - 1) s + ext entries: output_padding adds the rest (< s).
    out_pad = tuple(
        p - ((o - 1) * s + geo.extent(a))
        for a, (p, o, s) in enumerate(zip(padded, y.shape[2:], geo.stride, strict=True))
    )
    z = _CONV_T[geo.spatial](y, weight, None, geo.stride, 0, out_pad, geo.groups, geo.dilation)
    return _pad_adjoint(z, geo, sizes)
