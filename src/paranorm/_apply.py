"""``apply_parametrization_norm``: EnCodec/audiocraft's helper, with a registry.

EnCodec's version accepts 'none', 'weight_norm', 'spectral_norm' (and silently ignores the
layer-norm names), uses ``assert`` and drops every keyword. Here the keywords reach the norm,
an unknown name is a clear error, and :func:`register_norm` adds a norm of one's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ._errors import ParanormError, entry_point
from ._spectral_norm import spectral_norm
from ._weight_norm import weight_norm

__all__ = ["PARAMETRIZATION_NORMS", "apply_parametrization_norm", "check_norm_kwargs", "register_norm"]

NormFn = Callable[..., nn.Module]


def _no_norm(module: nn.Module, **kwargs: Any) -> nn.Module:
    if kwargs:
        raise ParanormError(
            f"norm='none' takes no options, got "
            f"{', '.join(sorted(kwargs))} for {type(module).__name__}. Drop them or pick a norm."
        )
    return module


#: name -> function(module, **kwargs) returning the normalized module.
PARAMETRIZATION_NORMS: dict[str, NormFn] = {
    "none": _no_norm,
    "weight_norm": weight_norm,
    "spectral_norm": spectral_norm,
}


@entry_point("register_norm")
def register_norm(name: str, fn: NormFn, *, overwrite: bool = False) -> None:
    """Make ``apply_parametrization_norm(module, name, **kwargs)`` call ``fn(module, **kwargs)``.

    Raises:
        ParanormError: ``name`` is not a non-empty str, ``name`` is taken and ``overwrite`` is
            False, or ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ParanormError(
            f"name must be a non-empty str (apply_parametrization_norm looks "
            f"norms up by string), got {name!r}. Pass e.g. register_norm('my_norm', fn)."
        )
    if not callable(fn):
        raise ParanormError(f"fn for {name!r} must be callable, got {fn!r}.")
    if name in PARAMETRIZATION_NORMS and not overwrite:
        raise ParanormError(
            f"{name!r} is already registered; pass overwrite=True to replace it."
        )
    PARAMETRIZATION_NORMS[name] = fn


def check_norm_kwargs(norm: str, module: nn.Module, norm_kwargs: Mapping[str, Any]) -> None:
    """Refuse keywords the norm's function does not take, naming the ones it does."""
    fn = PARAMETRIZATION_NORMS[norm]
    try:
        signature = inspect.signature(fn)
    except ValueError:  # a callable without an introspectable signature: let it check
        return
    try:
        signature.bind(module, **norm_kwargs)
    except TypeError as error:
        allowed = [
            p.name for p in list(signature.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        raise ParanormError(
            f"bad norm_kwargs {dict(norm_kwargs)!r} for norm={norm!r} on {type(module).__name__} "
            f"({error}); {norm} takes {', '.join(allowed) or 'no keywords'}."
        ) from None


@entry_point("apply_parametrization_norm")
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
            f"unknown norm {norm!r} for {type(module).__name__}; "
            f"expected one of {', '.join(repr(n) for n in PARAMETRIZATION_NORMS)}.{hint}"
        )
    check_norm_kwargs(norm, module, norm_kwargs)
    return fn(module, **norm_kwargs)
