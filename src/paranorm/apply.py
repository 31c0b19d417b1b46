"""``apply_parametrization_norm``: the seed's (EnCodec/audiocraft) helper, with a registry.

EnCodec's version accepts 'none', 'weight_norm', 'spectral_norm' (and silently ignores the
layer-norm names), uses ``assert`` and drops every keyword. Here the keywords reach the norm,
an unknown name is a clear error, and :func:`register_norm` adds a norm of one's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .errors import ParanormError
from .spectral_normalization import spectral_norm
from .weight_normalization import weight_norm

__all__ = ["PARAMETRIZATION_NORMS", "apply_parametrization_norm", "register_norm"]

NormFn = Callable[..., nn.Module]


def _no_norm(module: nn.Module, **kwargs: Any) -> nn.Module:
    if kwargs:
        raise ParanormError(
            f"apply_parametrization_norm: norm='none' takes no options, got "
            f"{', '.join(sorted(kwargs))} for {type(module).__name__}. Drop them or pick a norm."
        )
    return module


#: name -> function(module, **kwargs) returning the normalized module.
PARAMETRIZATION_NORMS: dict[str, NormFn] = {
    "none": _no_norm,
    "weight_norm": weight_norm,
    "spectral_norm": spectral_norm,
}


def register_norm(name: str, fn: NormFn, *, overwrite: bool = False) -> None:
    """Make ``apply_parametrization_norm(module, name, **kwargs)`` call ``fn(module, **kwargs)``.

    Raises:
        ParanormError: ``name`` is not a non-empty str, ``name`` is taken and ``overwrite`` is
            False, or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ParanormError(
            f"register_norm: name must be a non-empty str (apply_parametrization_norm looks "
            f"norms up by string), got {name!r}. Pass e.g. register_norm('my_norm', fn)."
        )
    if not callable(fn):
        raise ParanormError(f"register_norm: fn for {name!r} must be callable, got {fn!r}.")
    if name in PARAMETRIZATION_NORMS and not overwrite:
        raise ParanormError(
            f"register_norm: {name!r} is already registered; pass overwrite=True to replace it."
        )
    PARAMETRIZATION_NORMS[name] = fn


def apply_parametrization_norm(
    module: nn.Module, norm: str = "none", **norm_kwargs: Any
) -> nn.Module:
    """Apply the parametrization norm called ``norm`` to ``module`` and return it.

    Args:
        module: the layer.
        norm: 'none', 'weight_norm', 'spectral_norm' or a name added by :func:`register_norm`.
        **norm_kwargs: passed to the norm, e.g. ``dim=None`` or ``n_power_iterations=2``.

    Raises:
        ParanormError: an unknown name (the message lists the valid ones), or the norm's own
            errors; the module is unchanged.

    Example:
        >>> import torch, paranorm as pn
        >>> conv = pn.apply_parametrization_norm(torch.nn.Conv1d(4, 8, 3), "weight_norm", dim=None)
        >>> conv.parametrizations.weight.original0.shape
        torch.Size([])
    """
    fn = PARAMETRIZATION_NORMS.get(norm) if isinstance(norm, str) else None
    if fn is None:
        layer_norms = {"layer_norm", "time_layer_norm", "time_group_norm"}
        hint = (
            " It is not a parametrization: use paranorm.nn.NormConv1d(..., norm=...) for "
            "layer_norm/time_group_norm."
            if norm in layer_norms
            else ""
        )
        raise ParanormError(
            f"apply_parametrization_norm: unknown norm {norm!r} for {type(module).__name__}; "
            f"expected one of {', '.join(repr(n) for n in PARAMETRIZATION_NORMS)}.{hint}"
        )
    return fn(module, **norm_kwargs)
