"""The columns of a Lipschitz report: sigma methods, and "bound", the tightest certified one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError
from .._sigma import METHODS
from .._sigma.checks import unsupported_reason
from .._sigma.layer import CONV
from .._sigma.methods import sigma
from .results import Estimate

__all__ = [
    "COLUMNS",
    "COLUMN_TITLES",
    "DEFAULT_METHODS",
    "LOWER_SLACK",
    "TABLE_TITLES",
    "check_methods",
    "estimate",
    "gram_options",
    "layer_method",
    "unestimated",
    "weight_problem",
    "withdraw_contradicted",
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
    """Run one pn.sigma call; a ParanormError becomes an Estimate that says why.

    A failure inside torch (out of memory, a kernel a device lacks) becomes one too, worded as
    such: one layer that cannot be measured does not take the rest of the report with it.
    """
    try:
        result = sigma(target, method=method, **options)
    except ParanormError as error:
        return Estimate(method, None, None, None, error.detail)
    except (RuntimeError, NotImplementedError) as error:  # torch's own, e.g. out of memory
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return Estimate(method, None, None, None, f"torch failed while computing it: {first}")
    return Estimate(result.method, float(result), result.kind, result.iterations)


def gram_options(method: str, tolerance: float | None) -> dict[str, float]:
    """The ``tolerance`` keyword for a "gram" estimate, when one is given."""
    return {"tolerance": tolerance} if method == "gram" and tolerance is not None else {}


def weight_problem(name: str, weight: torch.Tensor) -> str | None:
    """Why no sigma of the weight ``name`` can be computed (its dtype, layout, device, no
    entries, NaN or inf), or None. Reads the values once (a host sync) to look for NaN/inf."""
    reason = unsupported_reason(weight)
    if reason is not None:
        return f"{name} {reason}"
    if weight.numel() == 0:
        return (
            f"empty weight (shape {tuple(weight.shape)}): a layer with no inputs or no outputs "
            "has no sigma to estimate"
        )
    finite = torch.isfinite(weight.detach())
    if not bool(finite.all()):
        nan = int(torch.isnan(weight.detach()).sum())
        inf = int((~finite).sum()) - nan
        return (
            f"{name} has {nan} NaN and {inf} infinite entries, so its sigma is undefined; "
            "restore finite values (e.g. from an earlier checkpoint)"
        )
    return None


def unestimated(methods: Sequence[str], module: nn.Module | None, why: str) -> dict[str, Estimate]:
    """Every column n/a for the same reason."""
    return {
        c: Estimate(layer_method(module, c) if module is not None else _column_method(c), None, None, None, why)
        for c in methods
    }


def _column_method(column: str) -> str:
    return "gram" if column == "bound" else column


#: How far a lower estimate computed in a weight's dtype may sit above a certified value
#: (float64, rounded up) through rounding alone, relative: beyond it, one of them is wrong.
LOWER_SLACK = {torch.float64: 1e-9}
_DEFAULT_SLACK = 1e-4


def withdraw_contradicted(
    estimates: Mapping[str, Estimate], is_matrix: bool, dtype: torch.dtype
) -> dict[str, Estimate]:
    """``estimates`` with every certified (exact or upper) value that is below a lower estimate
    of the same operator withdrawn, saying why: a bound paranorm certifies must hold, and a
    contradiction means rounding or a bug has broken one of them, so neither is trusted above
    the other. The same operator: "power" always; "reshape" for a matrix (a conv's reshaped
    kernel is another matrix, whose sigma can exceed the layer's with groups)."""
    lower = [
        e for c, e in estimates.items()
        if e.value is not None and e.kind == "lower" and (c == "power" or (c == "reshape" and is_matrix))
    ]  # fmt: skip
    if not lower:
        return dict(estimates)
    top = max(lower, key=lambda e: e.value)  # type: ignore[arg-type, return-value]
    slack = LOWER_SLACK.get(dtype, _DEFAULT_SLACK)
    out = {}
    for column, e in estimates.items():
        if e.certified and e.value < top.value * (1 - slack):  # type: ignore[operator]
            e = Estimate(
                e.method, None, None, e.iterations,
                f"not certified: {e.method} computed {e.value:.6g}, below the lower estimate "
                f"{top.value:.6g} ({top.method}) of the same operator, so one of them is wrong "
                "(a numerical failure); none is reported",
            )
        out[column] = e
    return out


def layer_method(module: nn.Module, column: str) -> str:
    """The estimator behind a column: "bound" is fft where exact (circular, stride 1), else gram."""
    if column != "bound":
        return column
    if isinstance(module, CONV) and module.padding_mode == "circular" and all(s == 1 for s in module.stride):
        return "fft"
    return "gram"
