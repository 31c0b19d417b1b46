"""Maps whose Lipschitz constant (l2) is known to be at most 1, and why others are not."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from .._torch_compat import BatchNormBase

__all__ = ["one_lipschitz_reason"]

#: Maps whose Lipschitz constant (l2) is at most 1 whatever their parameters.
_ONE_LIPSCHITZ = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid,
    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.LogSigmoid, nn.CELU, nn.Softplus,
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout,
)  # fmt: skip
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_AVG_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_POOL = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_NORM_LAYERS = (
    BatchNormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.RMSNorm,
)  # fmt: skip


def _activation_reason(module: nn.Module) -> str | None:
    if isinstance(module, nn.LeakyReLU) and abs(module.negative_slope) > 1:
        return f"LeakyReLU with |negative_slope| = {abs(module.negative_slope)} > 1"
    if isinstance(module, nn.ELU) and not 0 <= module.alpha <= 1:
        return f"ELU with alpha = {module.alpha} outside [0, 1]"
    if isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().abs().max())
        return None if slope <= 1 else f"PReLU with a learned |slope| up to {slope:.4g} > 1"
    return None


def _pool_reason(module: Any, label: str, input_shape: tuple[int, ...] | None) -> str | None:
    if isinstance(module, _MAX_POOL):
        kernel, stride, dilation = (
            _as_tuple(getattr(module, a), module) for a in ("kernel_size", "stride", "dilation")
        )
        if all(d == 1 for d in dilation) and all(k <= s for k, s in zip(kernel, stride, strict=True)):
            return None  # non-overlapping windows: max is 1-Lipschitz per window
        return f"{label} with overlapping windows (kernel {kernel} > stride {stride} or dilation) can be up to sqrt(overlap)-Lipschitz"
    if isinstance(module, _AVG_POOL):
        exact = module.count_include_pad or not any(_as_tuple(module.padding, module))
        if exact and not module.ceil_mode and getattr(module, "divisor_override", None) is None:
            return None  # a conv with a kernel of l1 norm 1, then subsampling (Young's inequality)
        return f"{label} with ceil_mode, divisor_override or count_include_pad=False averages with weights above 1/k"
    out = _as_tuple(module.output_size, module)
    if input_shape is not None:
        spatial = input_shape[-len(out) :]
        if all(o is None or (o > 0 and s % o == 0) for s, o in zip(spatial, out, strict=True)):
            return None  # equal non-overlapping windows
    return f"{label} with windows that may overlap (input size not a multiple of output_size)"


def one_lipschitz_reason(module: nn.Module, input_shape: tuple[int, ...] | None) -> str | None:
    """None when ``module`` is a known 1-Lipschitz map (l2, eval mode), else why it is not known to be."""
    label = type_before_parametrizations(module).__name__
    if isinstance(module, _ONE_LIPSCHITZ):
        return None
    if isinstance(module, (nn.LeakyReLU, nn.ELU, nn.PReLU)):
        return _activation_reason(module)
    if isinstance(module, _MAX_POOL + _AVG_POOL + _ADAPTIVE_POOL):
        return _pool_reason(module, label, input_shape)
    if isinstance(module, _NORM_LAYERS):
        return f"{label} divides by a data-dependent or running standard deviation and scales by a learned weight"
    return f"{label} is not a known 1-Lipschitz map"


def _as_tuple(value: Any, module: nn.Module) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(value)
    n = next((i for i in (1, 2, 3) if str(i) + "d" in type(module).__name__), 1)
    return (value,) * n
