"""Which torch layers have a known linear map, and a layer's weight with its geometry.

The layer families are written here once: every module of paranorm that asks "is this a
Linear, a convolution, a transposed convolution?" reads these tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils.parametrize import type_before_parametrizations

from .._errors import ParanormError
from .checks import check_weight
from .geometry import Geometry, geometry

__all__ = [
    "CONV",
    "CONV_TRANSPOSE",
    "LAYER_ARGS",
    "LINEAR",
    "OPERATOR_LAYERS",
    "Layer",
    "default_dim",
    "layer_of",
    "require_input_shape",
]

LINEAR = (nn.Linear,)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: The layers whose weight defines a linear map paranorm knows (sigma, the scaled forward).
OPERATOR_LAYERS = LINEAR + CONV + CONV_TRANSPOSE
#: The arguments that fix a convolution's map besides its weight (torch's meanings).
LAYER_ARGS = ("stride", "padding", "dilation", "groups", "padding_mode", "transposed", "output_padding")


def default_dim(module: nn.Module | type[nn.Module]) -> int:
    """The weight axis of a layer's output features: 1 for ConvTranspose (its weight is
    (in, out/groups, *kernel)), else 0. torch's default for spectral_norm's ``dim``."""
    cls = module if isinstance(module, type) else type_before_parametrizations(module)
    return 1 if issubclass(cls, CONV_TRANSPOSE) else 0


@dataclass(frozen=True)
class Layer:
    """A weight with its geometry, the ``dim`` of its reshaped matrix and a name for messages."""

    weight: torch.Tensor
    geo: Geometry
    dim: int
    where: str


def _module_geometry(module: Any, kind: type[nn.Module]) -> Geometry:
    if issubclass(kind, LINEAR):
        return geometry(module.weight)
    transposed = issubclass(kind, CONV_TRANSPOSE)
    return geometry(
        module.weight,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        padding_mode=module.padding_mode,
        transposed=transposed,
        output_padding=module.output_padding if transposed else 0,
    )


def layer_of(module_or_weight: nn.Module | torch.Tensor, **layer_args: Any) -> Layer:
    """The weight and geometry of a Linear/Conv/ConvTranspose module or of a raw weight.

    A raw weight takes ``layer_args`` (:data:`LAYER_ARGS`, and ``dim`` for the reshaped
    matrix); a module's are read from it.
    """
    unknown = set(layer_args) - set(LAYER_ARGS) - {"dim"}
    if unknown:
        raise ParanormError(
            f"unknown argument(s) {', '.join(sorted(unknown))}; layer arguments are "
            f"{', '.join(LAYER_ARGS)} and dim."
        )
    dim = layer_args.pop("dim", None)
    if isinstance(getattr(module_or_weight, "weight", module_or_weight), UninitializedParameter):
        raise ParanormError(
            f"the weight of {type(module_or_weight).__name__} is a lazy, uninitialized "
            "parameter. Run one forward pass first."
        )
    if isinstance(module_or_weight, nn.Module):
        kind = type_before_parametrizations(module_or_weight)
        where = kind.__name__ + ".weight"
        if layer_args:
            raise ParanormError(
                f"layer arguments ({', '.join(sorted(layer_args))}) are read from the "
                f"module {kind.__name__}; pass them only with a raw weight tensor."
            )
        if not issubclass(kind, OPERATOR_LAYERS):
            raise ParanormError(
                f"{kind.__name__} is not supported; expected nn.Linear, nn.Conv1d/2d/3d or "
                "nn.ConvTranspose1d/2d/3d (or pass a weight tensor with its layer arguments)."
            )
        weight: torch.Tensor = module_or_weight.weight  # type: ignore[assignment]
        geo = _module_geometry(module_or_weight, kind)
        if dim is None:
            dim = default_dim(kind)
    elif isinstance(module_or_weight, torch.Tensor):
        weight = module_or_weight
        where = f"weight of shape {tuple(weight.shape)}"
        if weight.ndim == 2 and layer_args:
            raise ParanormError(
                f"a 2-D weight is a Linear layer; layer arguments "
                f"({', '.join(sorted(layer_args))}) apply to 3/4/5-D convolution weights."
            )
        geo = geometry(weight, **layer_args)
        if dim is None:
            dim = 1 if geo.transposed else 0
    else:
        raise ParanormError(
            f"expected an nn.Module or a weight tensor, got {type(module_or_weight).__name__}."
        )
    check_weight(weight, where, allow_meta=True)  # meta: a registration's shapes suffice
    if isinstance(dim, bool) or not isinstance(dim, int) or not -weight.ndim <= dim < weight.ndim:
        raise ParanormError(f"dim={dim!r} is not an axis of {where}.")
    return Layer(weight, geo, dim % weight.ndim, where)


def require_input_shape(layer: Layer, shape: tuple[int, ...] | None, method: str) -> tuple[int, ...]:
    """``shape``, or an error saying that ``method`` needs one for this convolution."""
    if shape is None:
        raise ParanormError(
            f"method={method!r} needs input_shape for {layer.where} (a convolution's norm "
            "depends on the input size). Pass one sample's shape, e.g. input_shape=(C, H, W)."
        )
    return shape
