"""The columns of a Lipschitz report: sigma methods, and "bound", the tightest certified one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError
from .._sigma import METHODS
from .._sigma.layer import CONV
from .._sigma.methods import sigma
from .results import Estimate

__all__ = [
    "COLUMNS",
    "COLUMN_TITLES",
    "DEFAULT_METHODS",
    "TABLE_TITLES",
    "check_methods",
    "estimate",
    "layer_method",
]

#: Every column: each sigma method, and "bound": fft where it is exact (circular padding,
#: stride 1), else gram.
COLUMNS: tuple[str, ...] = (*METHODS, "bound")
#: The default columns: torch's reshaped-kernel sigma, the operator's sigma by power
#: iteration, and the certified bound.
DEFAULT_METHODS: tuple[str, ...] = ("reshape", "power", "bound")
COLUMN_TITLES = {
    "reshape": "reshape σ",
    "power": "operator σ (power)",
    "gram": "gram σ",
    "fft": "fft σ",
    "svd": "svd σ",
    "bound": "certified bound",
}
TABLE_TITLES = {**COLUMN_TITLES, "power": "operator σ", "bound": "bound"}


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a tuple of known columns without repeats, or an error naming them."""
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in COLUMNS]
    if unknown or not methods:
        raise ParanormError(
            f"methods must be a non-empty list of {', '.join(COLUMNS)}; got "
            f"{list(methods)!r}. The default is {list(DEFAULT_METHODS)!r}."
        )
    return tuple(dict.fromkeys(methods))


def estimate(target: nn.Module | torch.Tensor, method: str, **options: Any) -> Estimate:
    """Run one pn.sigma call; a ParanormError becomes an Estimate that says why."""
    try:
        result = sigma(target, method=method, **options)
    except ParanormError as error:
        return Estimate(method, None, None, None, error.detail)
    return Estimate(result.method, float(result), result.kind, result.iterations)


def layer_method(module: nn.Module, column: str) -> str:
    """The estimator behind a column: "bound" is fft where exact (circular, stride 1), else gram."""
    if column != "bound":
        return column
    if isinstance(module, CONV) and module.padding_mode == "circular" and all(s == 1 for s in module.stride):
        return "fft"
    return "gram"
