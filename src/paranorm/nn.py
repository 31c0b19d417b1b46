"""Normalized layers with EnCodec/audiocraft's layout: NormConv1d ... NormConvTranspose3d, NormLinear.

Défossez et al., "High Fidelity Neural Audio Compression" (EnCodec), 2022,
https://arxiv.org/abs/2210.13438, ``encodec/modules/conv.py``. Each layer holds the torch layer
as ``self.conv`` (``self.convtr`` for the transposed ones, ``self.linear`` for NormLinear) and a
``self.norm`` module, so EnCodec checkpoints load as they are, legacy keys included
(``conv.weight_g``/``conv.weight_v`` from torch's legacy weight norm,
``conv.weight_orig``/``weight_u``/``weight_v`` from its legacy spectral norm), and switching a
model from EnCodec's classes is a change of import. Differences from EnCodec, all on purpose:

- ``norm_kwargs`` reach the parametrization (EnCodec drops them), through
  :func:`paranorm.apply_parametrization_norm`, so a norm added with :func:`paranorm.register_norm`
  works here too;
- ``layer_norm`` normalizes over the channels at each position (EnCodec 0.1.1's ConvLayerNorm
  returns None);
- ``time_layer_norm`` is an error (EnCodec accepts it and silently does nothing);
- bad input raises :class:`paranorm.ParanormError` instead of an ``assert``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._apply import PARAMETRIZATION_NORMS, apply_parametrization_norm, check_norm_kwargs
from ._errors import ParanormError, entry_point
from ._torch_compat import ConvNd

__all__ = [
    "CONV_NORMALIZATIONS",
    "MODULE_NORMS",
    "ConvLayerNorm",
    "NormConv1d",
    "NormConv2d",
    "NormConv3d",
    "NormConvTranspose1d",
    "NormConvTranspose2d",
    "NormConvTranspose3d",
    "NormLinear",
    "apply_parametrization_norm",
    "get_norm_module",
]

#: Norms that are a module applied after the layer (``self.norm``), not a parametrization.
MODULE_NORMS = frozenset({"layer_norm", "time_group_norm"})

_TIME_LAYER_NORM = (
    "'time_layer_norm' is not supported: EnCodec lists it but its apply_parametrization_norm "
    "and get_norm_module do nothing for it, so an EnCodec layer built with it is unnormalized. "
    "Use norm='none' to get what EnCodec actually ran, or norm='layer_norm' for a LayerNorm "
    "over the channels at each time step."
)


class _ConvNormalizations(AbstractSet[str]):
    """EnCodec's ``CONV_NORMALIZATIONS``, kept live: the registered parametrization norms
    (:data:`paranorm._apply.PARAMETRIZATION_NORMS`, including those added by
    :func:`paranorm.register_norm`) plus :data:`MODULE_NORMS`."""

    def _names(self) -> list[str]:
        return [*PARAMETRIZATION_NORMS, *sorted(MODULE_NORMS)]

    def __contains__(self, name: object) -> bool:
        return name in PARAMETRIZATION_NORMS or name in MODULE_NORMS

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"CONV_NORMALIZATIONS({{{', '.join(map(repr, self._names()))}}})"


#: Every name the Norm layers accept for ``norm=``; ``"x" in CONV_NORMALIZATIONS`` works as in EnCodec.
CONV_NORMALIZATIONS: AbstractSet[str] = _ConvNormalizations()


def _check_norm_name(norm: object) -> str:
    if norm == "time_layer_norm":
        raise ParanormError(_TIME_LAYER_NORM)
    if not isinstance(norm, str) or norm not in CONV_NORMALIZATIONS:
        raise ParanormError(
            f"unknown norm {norm!r}; expected one of "
            f"{', '.join(repr(n) for n in CONV_NORMALIZATIONS)}. Add a parametrization norm of "
            "your own with paranorm.register_norm(name, fn)."
        )
    return norm


class ConvLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` tensor, at each position.

    y[b, :, s] = (x[b, :, s] - mean) / sqrt(var + eps) * weight + bias, the statistics taken over
    the C channels only (Ba et al., "Layer Normalization", 2016, https://arxiv.org/abs/1607.06450).
    The channels are moved last, normalized by :class:`torch.nn.LayerNorm`, and moved back: what
    EnCodec's ConvLayerNorm meant to do (its 0.1.1 forward returns None). Keys ``weight``/``bias``.

    Example:
        >>> import torch
        >>> from paranorm.nn import ConvLayerNorm
        >>> y = ConvLayerNorm(4)(torch.randn(2, 4, 7))
        >>> y.shape, bool(y.mean(dim=1).abs().max() < 1e-5)
        (torch.Size([2, 4, 7]), True)
    """

    def __init__(
        self, normalized_shape: int | list[int] | tuple[int, ...] | torch.Size, **kwargs: Any
    ) -> None:
        shape = (
            (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        )
        if len(shape) != 1:
            raise ParanormError(
                f"ConvLayerNorm: normalized_shape must be the number of channels (one int), got "
                f"{normalized_shape!r}; it normalizes over the channel axis at each position."
            )
        super().__init__(shape, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise ParanormError(
                "ConvLayerNorm: expected an input of shape (B, C, *spatial), got a "
                + str(x.ndim)
                + "-D input. Add the batch axis, e.g. x.unsqueeze(0)."
            )
        y = F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


def _channels(module: nn.Module, norm: str) -> int:
    if isinstance(module, ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear) and norm == "layer_norm":
        return module.out_features
    raise ParanormError(
        f"norm={norm!r} needs a convolution"
        + (" or an nn.Linear" if norm == "layer_norm" else " (it normalizes over time per sample)")
        + f", got {type(module).__name__}. Use a parametrization norm (weight_norm, "
        "spectral_norm) or 'none'" + ("." if norm == "layer_norm" else ", or 'layer_norm'.")
    )


def _build(cls: Any, norm: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        return cls(*args, **kwargs)
    except TypeError as error:
        raise ParanormError(
            f"bad norm_kwargs {dict(kwargs)!r} for norm={norm!r} "
            f"({cls.__name__}): {error}"
        ) from None


@entry_point("get_norm_module")
def get_norm_module(
    module: nn.Module, causal: bool = False, norm: str = "none", **norm_kwargs: Any
) -> nn.Module:
    """The module applied after ``module`` for ``norm``: EnCodec's ``get_norm_module``.

    'layer_norm' gives :class:`ConvLayerNorm` over ``out_channels`` (a plain
    :class:`torch.nn.LayerNorm` over ``out_features`` for an nn.Linear); 'time_group_norm' gives
    ``GroupNorm(1, out_channels)`` (statistics over channels and time, per sample), which needs
    the whole sequence and so cannot be causal; every other norm gives :class:`torch.nn.Identity`
    (parametrization norms live on the layer's weight). ``norm_kwargs`` reach the norm module.

    Raises:
        ParanormError: unknown or unsupported norm name, causal time_group_norm, a module the
            norm does not fit, bad norm_kwargs.

    Example:
        >>> import torch
        >>> from paranorm.nn import get_norm_module
        >>> gn = get_norm_module(torch.nn.Conv1d(2, 6, 3), norm="time_group_norm")
        >>> type(gn).__name__, gn.num_groups, gn.num_channels
        ('GroupNorm', 1, 6)
    """
    return _norm_module(module, causal, norm, **norm_kwargs)


def _norm_module(module: nn.Module, causal: bool, norm: str, **norm_kwargs: Any) -> nn.Module:
    norm = _check_norm_name(norm)
    if norm == "layer_norm":
        channels = _channels(module, norm)
        cls = nn.LayerNorm if isinstance(module, nn.Linear) else ConvLayerNorm
        return _build(cls, norm, (channels,), norm_kwargs)
    if norm == "time_group_norm":
        if causal:
            raise ParanormError(
                "norm='time_group_norm' cannot be causal: GroupNorm's statistics "
                "span the whole sequence, so each output would see the future. Use causal=False, "
                "or norm='layer_norm' (per time step) for a causal layer."
            )
        return _build(nn.GroupNorm, norm, (1, _channels(module, norm)), norm_kwargs)
    return nn.Identity()


class _NormLayer(nn.Module):
    """A torch layer (normalized as ``norm`` says) followed by ``self.norm``."""

    _layer_cls: ClassVar[type[nn.Module]]
    _attr: ClassVar[str]

    def __init__(
        self,
        *args: Any,
        causal: bool = False,
        norm: str = "none",
        norm_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        try:
            layer, norm_module = self._build_layers(args, kwargs, causal, norm, norm_kwargs)
        except ParanormError as error:
            error.name_entry(type(self).__name__)
            raise
        setattr(self, self._attr, layer)
        # A conv also takes unbatched (C, *spatial) input; its norm module needs the batch axis.
        # (-1: never, for Linear and for the Identity norm.) Plain ints keep TorchScript happy.
        kernel_size = getattr(layer, "kernel_size", None)
        self._unbatched_ndim: int = -1
        if kernel_size is not None and not isinstance(norm_module, nn.Identity):
            self._unbatched_ndim = len(kernel_size) + 1
        self.norm = norm_module
        self.norm_type = norm

    def _build_layers(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], causal: bool, norm: str,
        norm_kwargs: Mapping[str, Any] | None,
    ) -> tuple[nn.Module, nn.Module]:
        """The torch layer, normalized, and the norm module after it."""
        norm = _check_norm_name(norm)
        if norm_kwargs is None:
            norm_kwargs = {}
        if not isinstance(norm_kwargs, Mapping):
            raise ParanormError(
                f"norm_kwargs must be a dict or None, got {type(norm_kwargs).__name__}. "
                "Pass e.g. norm_kwargs={'dim': None}."
            )
        layer = self._layer_cls(*args, **kwargs)
        if norm in MODULE_NORMS:
            # The norm module is built on the layer's device and dtype unless told otherwise.
            options: dict[str, Any] = {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}
            options.update(norm_kwargs)
            return layer, _norm_module(layer, causal, norm, **options)
        check_norm_kwargs(norm, layer, norm_kwargs)
        return PARAMETRIZATION_NORMS[norm](layer, **norm_kwargs), _norm_module(layer, causal, norm)

    def _normalize_output(self, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == self._unbatched_ndim:
            return self.norm(y.unsqueeze(0)).squeeze(0)
        return self.norm(y)


class NormConv1d(_NormLayer):
    """``nn.Conv1d(*args, **kwargs)`` as ``self.conv``, normalized by ``norm``, then ``self.norm``.

    Args:
        *args, **kwargs: nn.Conv1d's.
        causal: only checked against 'time_group_norm', which cannot be causal.
        norm: 'none', 'weight_norm', 'spectral_norm', a registered norm, 'layer_norm' or
            'time_group_norm'.
        norm_kwargs: keywords of the norm, e.g. ``{"dim": None}`` for weight_norm.

    Raises:
        ParanormError: unknown norm, 'time_layer_norm', causal time_group_norm, bad norm_kwargs.

    Example:
        >>> import torch
        >>> from paranorm.nn import NormConv1d
        >>> layer = NormConv1d(2, 4, 3, norm="weight_norm")
        >>> sorted(layer.state_dict())
        ['conv.bias', 'conv.parametrizations.weight.original0', 'conv.parametrizations.weight.original1']
        >>> layer(torch.randn(1, 2, 10)).shape
        torch.Size([1, 4, 8])
    """

    _layer_cls = nn.Conv1d
    _attr = "conv"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        conv: nn.Conv1d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.conv(x))


class NormConv2d(_NormLayer):
    """:class:`NormConv1d` with ``nn.Conv2d`` as ``self.conv``."""

    _layer_cls = nn.Conv2d
    _attr = "conv"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        conv: nn.Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.conv(x))


class NormConv3d(_NormLayer):
    """:class:`NormConv1d` with ``nn.Conv3d`` as ``self.conv``."""

    _layer_cls = nn.Conv3d
    _attr = "conv"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        conv: nn.Conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.conv(x))


class NormConvTranspose1d(_NormLayer):
    """:class:`NormConv1d` with ``nn.ConvTranspose1d`` as ``self.convtr``.

    spectral_norm takes dim=1 (the output channels) for it by default, as torch does.
    """

    _layer_cls = nn.ConvTranspose1d
    _attr = "convtr"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        convtr: nn.ConvTranspose1d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.convtr(x))


class NormConvTranspose2d(_NormLayer):
    """:class:`NormConvTranspose1d` with ``nn.ConvTranspose2d`` as ``self.convtr``."""

    _layer_cls = nn.ConvTranspose2d
    _attr = "convtr"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        convtr: nn.ConvTranspose2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.convtr(x))


class NormConvTranspose3d(_NormLayer):
    """:class:`NormConvTranspose1d` with ``nn.ConvTranspose3d`` as ``self.convtr``."""

    _layer_cls = nn.ConvTranspose3d
    _attr = "convtr"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        convtr: nn.ConvTranspose3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.convtr(x))


class NormLinear(_NormLayer):
    """``nn.Linear(*args, **kwargs)`` as ``self.linear``, normalized by ``norm``, then ``self.norm``.

    'layer_norm' is a plain LayerNorm over the output features (the last axis);
    'time_group_norm' is refused (a Linear has no channel-then-time layout).

    Example:
        >>> import torch
        >>> from paranorm.nn import NormLinear
        >>> layer = NormLinear(3, 5, norm="spectral_norm", norm_kwargs={"n_power_iterations": 50})
        >>> round(torch.linalg.matrix_norm(layer.linear.weight.detach(), ord=2).item(), 4)
        1.0
    """

    _layer_cls = nn.Linear
    _attr = "linear"
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read these annotations
        linear: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize_output(self.linear(x))
