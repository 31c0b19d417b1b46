"""Per-layer spectral norms of a model, and a network Lipschitz bound where one provably holds.

For each layer with a weight, :func:`lipschitz_report` lists the reshaped-kernel sigma (what
torch's spectral_norm divides by, Miyato et al. 2018), the sigma of the layer's true linear
operator at the input shape it really sees (power iteration: a lower estimate, Gouk et al. 2021)
and a certified upper bound (Gram iteration, Delattre et al. 2023/2024, or the exact FFT value of
a circular convolution, Sedghi et al. 2019). Every number carries its kind: "lower", "exact" or
"upper".

The network bound: if f = L_n o a_{n-1} o L_{n-1} o ... o a_1 o L_1 with every a_i 1-Lipschitz,
then Lip(f) <= prod_i ||L_i||_2 (l2 norms of the flattened input and output; biases shift but
do not stretch). It is printed only when the model is an ``nn.Sequential`` chain of such
layers and of known 1-Lipschitz maps; otherwise the report says why there is none.

:func:`state_dict_report` does what can honestly be done from the tensors of a checkpoint alone.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

from ._atomic import atomic_write
from ._base import find_normalization
from .checkpoint import CheckpointWarning, convert, detect
from .errors import CheckpointError, ParanormError
from .measure import sigma as estimate_sigma

__all__ = [
    "DEFAULT_METHODS",
    "Estimate",
    "LayerReport",
    "LipschitzReport",
    "NetworkBound",
    "lipschitz_report",
    "state_dict_report",
]

#: The columns of a report: torch's reshaped-kernel sigma, the operator's sigma by power
#: iteration, and "bound": fft where it is exact (circular padding, stride 1), else gram.
DEFAULT_METHODS: tuple[str, ...] = ("reshape", "power", "bound")
_METHODS = ("reshape", "power", "gram", "fft", "svd", "bound")
_COLUMN_TITLES = {
    "reshape": "reshape σ",
    "power": "operator σ (power)",
    "gram": "gram σ",
    "fft": "fft σ",
    "svd": "svd σ",
    "bound": "certified bound",
}
_TABLE_TITLES = {**_COLUMN_TITLES, "power": "operator σ", "bound": "bound"}

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_OPERATORS = (nn.Linear, *_CONV, *_CONV_T)

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
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.RMSNorm,
)  # fmt: skip

_KIND_STYLE = {"lower": "yellow", "exact": "cyan", "upper": "green"}
_KIND_SIGN = {"lower": "≥", "exact": "=", "upper": "≤"}


@dataclass(frozen=True)
class Estimate:
    """One sigma of one layer: its value and what it guarantees, or why it is missing."""

    method: str  # the estimator that ran: reshape | power | gram | fft | svd
    value: float | None
    kind: str | None  # lower | exact | upper; None when not computed
    iterations: int | None = None
    error: str | None = None  # why it could not be computed

    @property
    def certified(self) -> bool:
        """True when the value is a guaranteed upper bound on the operator's sigma."""
        return self.value is not None and self.kind in ("exact", "upper")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "value": _json_float(self.value),
            "kind": self.kind,
            "iterations": self.iterations,
            "error": self.error,
        }


@dataclass(frozen=True)
class LayerReport:
    """The sigmas of one layer's weight, at the input shape it saw."""

    name: str  # module path, or state_dict key of the weight
    type: str
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...] | None  # one sample's shape, without the batch
    normalization: str | None  # e.g. "spectral_norm (torch)"; None when plain
    estimates: Mapping[str, Estimate] = field(default_factory=dict)  # column -> estimate
    calls: int = 0  # how often example_input called it; -1 when there was no model to run

    @property
    def bound(self) -> Estimate | None:
        """The smallest certified (exact or upper) estimate, or None when there is none."""
        certified = [e for e in self.estimates.values() if e.certified]
        return min(certified, key=lambda e: e.value) if certified else None  # type: ignore[arg-type, return-value]

    def to_dict(self) -> dict[str, Any]:
        bound = self.bound
        return {
            "name": self.name,
            "type": self.type,
            "weight_shape": list(self.weight_shape),
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "normalization": self.normalization,
            "calls": self.calls,
            "estimates": {column: e.to_dict() for column, e in self.estimates.items()},
            "certified_bound": None if bound is None else _json_float(bound.value),
        }


@dataclass(frozen=True)
class NetworkBound:
    """Lip(f) <= value, when ``holds``; ``statement`` says why it holds, or why there is none."""

    value: float | None
    holds: bool
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": _json_float(self.value), "holds": self.holds, "statement": self.statement}


@dataclass(frozen=True)
class LipschitzReport:
    """What :func:`lipschitz_report` or :func:`state_dict_report` found; print it or ``to_dict()``."""

    source: str
    methods: tuple[str, ...]
    layers: tuple[LayerReport, ...]
    network: NetworkBound
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats as strings "inf"/"nan")."""
        return {
            "source": self.source,
            "methods": list(self.methods),
            "layers": [layer.to_dict() for layer in self.layers],
            "network_bound": self.network.to_dict(),
            "notes": list(self.notes),
            "kinds": {
                "lower": "a lower estimate of the operator's sigma (the truth may be larger)",
                "exact": "the operator's sigma",
                "upper": "a certified upper bound on the operator's sigma",
            },
        }

    def table(self) -> Any:
        """The per-layer rich Table."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"Lipschitz report: {self.source}", title_justify="left")
        for title in ("layer", "type", "input", "normalization"):
            table.add_column(title, overflow="fold")
        for column in self.methods:
            table.add_column(_TABLE_TITLES[column], justify="right", no_wrap=True)
        for layer in self.layers:
            cells: list[Any] = [
                layer.name,
                layer.type,
                "?" if layer.input_shape is None else "x".join(map(str, layer.input_shape)),
                layer.normalization or "-",
            ]
            for column in self.methods:
                estimate = layer.estimates.get(column)
                if estimate is None or estimate.value is None:
                    cells.append(Text("n/a", style="dim"))
                    continue
                cell = Text(
                    _KIND_SIGN.get(estimate.kind or "", "?"),
                    style=_KIND_STYLE.get(estimate.kind or "", ""),
                )
                cell += Text(f"{estimate.value:.4g}", style="bold")
                if column == "bound":
                    cell += Text(f" {estimate.method}", style="dim")
                cells.append(cell)
            table.add_row(*cells)
        return table

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text

        yield self.table()
        yield Text(
            "≥x: a lower estimate (sigma is at least x); =x: exact; ≤x: a certified upper bound. "
            "reshape σ: the reshaped kernel's (Miyato 2018, what torch's spectral_norm divides "
            "by), for a conv not the layer's Lipschitz constant; operator σ: the layer's map at "
            "its input shape, by power iteration; bound: gram, or fft where exact.",
            style="dim",
        )
        if self.network.holds:
            yield Text.assemble(
                ("network Lipschitz bound: ", "bold"),
                (f"≤{self.network.value:.6g}", "bold green"),
                f"  ({self.network.statement})",
            )
        else:
            yield Text.assemble(("no network bound: ", "bold yellow"), self.network.statement)
        missing: dict[tuple[str, str], list[str]] = {}
        for layer in self.layers:
            for column, e in layer.estimates.items():
                if e.error:
                    missing.setdefault((column, e.error), []).append(layer.name)
        lines = [*self.notes]
        lines += [
            f"{column} n/a for {', '.join(names)}: {error}"
            for (column, error), names in missing.items()
        ]
        for line in lines:
            yield Text(f"note: {line}", style="dim")

    def render(self, width: int = 140) -> str:
        """The report as plain text (what ``print(report)`` shows)."""
        from rich.console import Console

        console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
        console.print(self)
        return console.export_text()

    def __str__(self) -> str:
        return self.render()

    def save_plot(self, path: str | os.PathLike[str]) -> None:
        """Draw per layer the reshape sigma, the operator sigma and the bound (grouped bars, log y).

        Written atomically (temp file in the same folder, then os.replace); the format follows
        the suffix (png, pdf, svg, ...). Zero or missing values are left out of the bars.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import ScalarFormatter

        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        suffix = os.path.splitext(path)[1].lstrip(".").lower() or "png"
        if not os.path.isdir(folder):
            raise ParanormError(
                f"save_plot: folder {folder!r} does not exist; create it or pick another path."
            )
        figure = Figure(figsize=(max(6.0, 0.9 * len(self.layers) + 2.5), 4.5), layout="constrained")
        canvas = FigureCanvasAgg(figure)
        if suffix not in canvas.get_supported_filetypes():
            raise ParanormError(
                f"save_plot: cannot write {path!r}: matplotlib has no {suffix!r} format; use one of "
                f"{', '.join(sorted(canvas.get_supported_filetypes()))}."
            )
        axes = figure.add_subplot()
        n_columns = max(1, len(self.methods))
        width = 0.8 / n_columns
        for j, column in enumerate(self.methods):
            xs, heights = [], []
            for i, layer in enumerate(self.layers):
                estimate = layer.estimates.get(column)
                if estimate is not None and estimate.value is not None and estimate.value > 0:
                    xs.append(i + (j - (n_columns - 1) / 2) * width)
                    heights.append(estimate.value)
            bars = axes.bar(xs, heights, width=width, label=_COLUMN_TITLES[column])
            axes.bar_label(bars, fmt="%.3g", fontsize=7)
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.yaxis.set_minor_formatter(ScalarFormatter())
        axes.tick_params(axis="y", which="minor", labelsize=7)
        axes.set_xticks(
            range(len(self.layers)),
            [f"{layer.name}\n{layer.type}" for layer in self.layers],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        axes.set_ylabel("σ (log scale)")
        axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        title = self.source
        if self.network.holds:
            title += f"   network bound {self.network.value:.4g}"
        axes.set_title(title, fontsize=10)
        axes.legend(fontsize=8)
        with atomic_write(path) as file:
            figure.savefig(file, format=suffix)


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)


def _check_methods(methods: Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    unknown = [m for m in methods if m not in _METHODS]
    if unknown or not methods:
        raise ParanormError(
            f"{where}: methods must be a non-empty list of {', '.join(_METHODS)}; got "
            f"{list(methods)!r}. The default is {list(DEFAULT_METHODS)!r}."
        )
    return tuple(dict.fromkeys(methods))


def _estimate(target: nn.Module | torch.Tensor, method: str, **options: Any) -> Estimate:
    """Run one pn.sigma call; a ParanormError becomes an Estimate that says why."""
    try:
        result = estimate_sigma(target, method=method, **options)
    except ParanormError as error:
        return Estimate(method, None, None, None, str(error))
    return Estimate(result.method, float(result), result.kind, result.iterations)


def _layer_method(module: nn.Module, column: str) -> str:
    """The estimator behind a column: "bound" is fft where exact (circular, stride 1), else gram."""
    if column != "bound":
        return column
    if (
        isinstance(module, _CONV)
        and module.padding_mode == "circular"
        and all(s == 1 for s in module.stride)
    ):
        return "fft"
    return "gram"


def _describe_normalization(module: nn.Module, name: str = "weight") -> str | None:
    found = find_normalization(module, name)
    if found is None:
        return None
    details: list[str] = [found.implementation]
    p = found.parametrization
    if p is not None and found.implementation == "paranorm":
        if getattr(p, "method", None):
            details.append(f"method={p.method}")
        if getattr(p, "coeff", None) is not None:
            details.append(f"coeff={p.coeff}")
    return f"{found.kind} ({', '.join(details)})"


def _type_name(module: nn.Module) -> str:
    return parametrize.type_before_parametrizations(module).__name__


def _sample_shape(module: nn.Module, x: Any) -> tuple[int, ...] | None:
    """One sample's shape (no batch) of the tensor a layer received; None if not a tensor."""
    if not isinstance(x, torch.Tensor):
        return None
    if isinstance(module, (*_CONV, *_CONV_T)):
        batched_ndim = len(module.kernel_size) + 2
        return (
            tuple(x.shape) if x.ndim == batched_ndim - 1 else tuple(x.shape[1:])
        )  # unbatched or batched
    if x.ndim <= 1:
        return tuple(x.shape)
    return tuple(x.shape[1:])


def _weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding a tensor named ``weight`` (parametrized or by a legacy hook), in order."""
    found = []
    for path, module in model.named_modules():
        if ".parametrizations" in f".{path}" or isinstance(module, parametrize.ParametrizationList):
            continue
        has_weight = (
            module._parameters.get("weight") is not None
            or module._buffers.get("weight") is not None
            or parametrize.is_parametrized(module, "weight")
            or find_normalization(module, "weight") is not None
        )
        if has_weight:
            found.append((path, module))
    return found


def _sequential_items(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | str:
    """The items of a chain of (nested) plain nn.Sequential, or the reason it is not one."""
    items: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            if type(child).forward is not nn.Sequential.forward:
                return f"{path} ({type(child).__name__}) overrides Sequential.forward, so it may not be a chain"
            inner = _sequential_items(child, f"{path}.")
            if isinstance(inner, str):
                return inner
            items.extend(inner)
        else:
            items.append((path, child))
    return items


def _lipschitz_one_reason(module: nn.Module, input_shape: tuple[int, ...] | None) -> str | None:
    """None when ``module`` is a known 1-Lipschitz map (l2, eval mode), else why it is not known to be."""
    label = _type_name(module)
    if isinstance(module, _ONE_LIPSCHITZ):
        return None
    if isinstance(module, nn.LeakyReLU):
        return (
            None
            if abs(module.negative_slope) <= 1
            else f"LeakyReLU with |negative_slope| = {abs(module.negative_slope)} > 1"
        )
    if isinstance(module, nn.ELU):
        return None if 0 <= module.alpha <= 1 else f"ELU with alpha = {module.alpha} outside [0, 1]"
    if isinstance(module, nn.PReLU):
        slope = float(module.weight.detach().abs().max())
        return None if slope <= 1 else f"PReLU with a learned |slope| up to {slope:.4g} > 1"
    if isinstance(module, _MAX_POOL):
        kernel, stride, dilation = (
            _as_tuple(getattr(module, a), module) for a in ("kernel_size", "stride", "dilation")
        )
        if all(d == 1 for d in dilation) and all(k <= s for k, s in zip(kernel, stride)):
            return None  # non-overlapping windows: max is 1-Lipschitz per window
        return f"{label} with overlapping windows (kernel {kernel} > stride {stride} or dilation) can be up to sqrt(overlap)-Lipschitz"
    if isinstance(module, _AVG_POOL):
        exact = module.count_include_pad or not any(_as_tuple(module.padding, module))
        if exact and not module.ceil_mode and getattr(module, "divisor_override", None) is None:
            return None  # a conv with a kernel of l1 norm 1, then subsampling (Young's inequality)
        return f"{label} with ceil_mode, divisor_override or count_include_pad=False averages with weights above 1/k"
    if isinstance(module, _ADAPTIVE_POOL):
        if input_shape is not None:
            spatial = input_shape[-len(_as_tuple(module.output_size, module)) :]
            out = _as_tuple(module.output_size, module)
            if all(o is None or (o > 0 and s % o == 0) for s, o in zip(spatial, out)):
                return None  # equal non-overlapping windows
        return f"{label} with windows that may overlap (input size not a multiple of output_size)"
    if isinstance(module, _NORM_LAYERS):
        return f"{label} divides by a data-dependent or running standard deviation and scales by a learned weight"
    return f"{label} is not a known 1-Lipschitz map"


def _as_tuple(value: Any, module: nn.Module) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(value)
    n = next((i for i in (1, 2, 3) if str(i) + "d" in type(module).__name__), 1)
    return (value,) * n


def _chain_bound(
    model: nn.Module,
    layers: Sequence[LayerReport],
    call_log: Sequence[str],
    shapes: Mapping[str, list[tuple[int, ...] | None]],
    single_input: bool,
) -> NetworkBound:
    if not single_input:
        return NetworkBound(
            None, False, "the model takes several inputs; a chain bound needs one input tensor"
        )
    if isinstance(model, _OPERATORS):
        items: list[tuple[str, nn.Module]] | str = [("", model)]
    elif isinstance(model, nn.Sequential):
        if type(model).forward is not nn.Sequential.forward:
            return NetworkBound(
                None,
                False,
                f"{type(model).__name__} overrides Sequential.forward, so it may not be a chain",
            )
        items = _sequential_items(model)
    else:
        return NetworkBound(
            None,
            False,
            f"the model is a {type(model).__name__}, not an nn.Sequential chain: its forward may add "
            "residuals, branches or attention, which the product of layer norms does not bound",
        )
    if isinstance(items, str):
        return NetworkBound(None, False, items)
    by_name = {layer.name: layer for layer in layers}
    product, n_layers = 1.0, 0
    for path, item in items:
        if isinstance(item, _OPERATORS):
            layer = by_name.get(path or "(model)")
            bound = None if layer is None else layer.bound
            if bound is None:
                certified = [
                    m for m in ("bound", "gram", "fft", "svd") if layer and m in layer.estimates
                ]
                why = "see its notes" if certified else "methods has none of bound, gram, fft, svd"
                return NetworkBound(
                    None, False, f"layer {path or '(model)'} has no certified sigma ({why})"
                )
            product *= bound.value  # type: ignore[operator]
            n_layers += 1
            continue
        shape_list = shapes.get(path) or [None]
        reason = _lipschitz_one_reason(item, shape_list[0])
        if reason is not None:
            return NetworkBound(
                None,
                False,
                f"{path}: {reason}, so the product of layer norms does not bound the network",
            )
    chain = [path for path, _ in items]
    called = [name for name in call_log if name in set(chain)]
    if called != chain:
        return NetworkBound(
            None,
            False,
            "the forward did not call the chain's items once each, in order (shared or skipped layers)",
        )
    if n_layers == 0:
        return NetworkBound(None, False, "the model has no Linear or convolution layer")
    return NetworkBound(
        product,
        True,
        f"product of {n_layers} layers' certified bounds; holds for the model in eval mode, l2 norm of "
        "the flattened input and output, because it is an nn.Sequential chain of these layers with "
        "1-Lipschitz maps between them (biases do not matter)",
    )


def _report_layer(
    path: str,
    module: nn.Module,
    input_shapes: list[tuple[int, ...] | None],
    methods: tuple[str, ...],
) -> list[LayerReport]:
    name = path or "(model)"
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # found as a tensor
    shape = tuple(weight.shape)
    normalization = _describe_normalization(module)
    if not isinstance(module, _OPERATORS):
        why = f"{_type_name(module)} is not a Linear, Conv or ConvTranspose layer; paranorm estimates sigma only for those"
        estimates = {c: Estimate(_layer_method(module, c), None, None, None, why) for c in methods}
        return [
            LayerReport(
                name,
                _type_name(module),
                shape,
                (input_shapes or [None])[0],
                normalization,
                estimates,
                len(input_shapes),
            )
        ]
    rows = []
    for input_shape in dict.fromkeys(input_shapes or [None]):  # one row per distinct input shape
        estimates = {}
        for column in methods:
            method = _layer_method(module, column)
            needs_shape = isinstance(module, (*_CONV, *_CONV_T)) and method not in ("reshape",)
            if needs_shape and input_shape is None and method != "gram":
                why = "example_input never reached this layer, so its input shape is unknown"
                estimates[column] = Estimate(method, None, None, None, why)
                continue
            shape_arg = input_shape if needs_shape else None
            estimates[column] = _estimate(module, method, input_shape=shape_arg)
        rows.append(
            LayerReport(
                name,
                _type_name(module),
                shape,
                input_shape,
                normalization,
                estimates,
                len(input_shapes),
            )
        )
    return rows


def lipschitz_report(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> LipschitzReport:
    """Report each weighted layer's sigmas at the input shape it sees, and a chain bound if one holds.

    ``example_input`` is run once through ``model`` (eval mode, no_grad) only to learn each
    layer's input shape; afterwards the model's train/eval flags and buffers (u, v included)
    are exactly as before, and the global RNG too (the estimators run under ``seed``).
    Columns (``methods``): "reshape" (torch's reshaped-kernel sigma), "power" (the operator's
    sigma by power iteration, a lower estimate), "bound" (fft where exact, else gram: a
    certified upper bound), or any of "gram", "fft", "svd". The network bound is the product
    of the layers' smallest certified values, given only when the model is an nn.Sequential
    chain of Linear/conv layers and known 1-Lipschitz maps (ReLU, Tanh, non-overlapping
    pooling, Flatten, ...).

    Args:
        model: the network.
        example_input: a batch (or a tuple of inputs) the model accepts.
        methods: the columns to compute.
        seed: seeds the estimators' random starts, for reproducible numbers.
        on_layer: called as ``on_layer(done, total, name)`` after each layer (progress bars).

    Returns:
        a :class:`LipschitzReport`: print it, or ``to_dict()`` for JSON.

    Raises:
        ParanormError: not a module, uninitialized (lazy) parameters, unknown method, or the
            model failed on ``example_input``; the model is left as it was.

    Example:
        >>> import torch, paranorm as pn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> report = pn.lipschitz_report(net, torch.randn(1, 4))
        >>> [layer.name for layer in report.layers], report.network.holds
        (['0', '2'], True)
        >>> w0, w2 = (torch.linalg.matrix_norm(m.weight.detach(), ord=2) for m in (net[0], net[2]))
        >>> bool(report.network.value >= (w0 * w2).item() * (1 - 1e-4))
        True
    """
    if not isinstance(model, nn.Module):
        raise ParanormError(
            f"lipschitz_report: expected an nn.Module, got {type(model).__name__}. Pass the network itself."
        )
    methods = _check_methods(methods, "lipschitz_report")
    for path, param in model.named_parameters():
        if isinstance(param, UninitializedParameter):
            raise ParanormError(
                f"lipschitz_report: parameter {path!r} is uninitialized (a lazy module); run one "
                "forward to materialize it before asking for its sigma."
            )
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    weighted = _weighted_modules(model)
    names = {module: path for path, module in model.named_modules()}
    shapes: dict[str, list[tuple[int, ...] | None]] = {}
    call_log: list[str] = []
    training = {module: module.training for module in model.modules()}
    buffers = {path: b.detach().clone() for path, b in model.named_buffers()}

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        path = names.get(module)
        if path is None:
            return
        call_log.append(path)
        shapes.setdefault(path, []).append(_sample_shape(module, args[0]) if args else None)

    with ExitStack() as stack:
        handles = [module.register_forward_pre_hook(pre_hook) for module in model.modules()]
        for handle in handles:
            stack.callback(handle.remove)
        stack.callback(_restore, model, training, buffers)
        stack.enter_context(torch.random.fork_rng(devices=_cuda_devices()))
        stack.enter_context(torch.no_grad())
        torch.manual_seed(seed)
        model.eval()
        try:
            model(*inputs)
        except (RuntimeError, TypeError, ValueError) as error:
            if isinstance(error, ParanormError):
                raise
            got = ", ".join(
                str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
                for x in inputs
            )
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ParanormError(
                f"lipschitz_report: {type(model).__name__} failed on example_input of shape {got}: "
                f"{first}. Pass an input the model accepts (check the channels and sizes)."
            ) from error
        for h in handles:
            h.remove()
        layers: list[LayerReport] = []
        with parametrize.cached():
            for i, (path, module) in enumerate(weighted):
                layers.extend(_report_layer(path, module, shapes.get(path, []), methods))
                if on_layer is not None:
                    on_layer(i + 1, len(weighted), path or "(model)")
        network = _chain_bound(model, layers, call_log, shapes, single_input=len(inputs) == 1)
    notes = []
    if not weighted:
        notes.append("the model has no layer with a weight")
    unreached = [layer.name for layer in layers if layer.calls == 0]
    if unreached:
        notes.append(f"example_input never reached {', '.join(unreached)}")
    return LipschitzReport(type(model).__name__, methods, tuple(layers), network, tuple(notes))


def _cuda_devices() -> list[int]:
    """Every CUDA device: torch.manual_seed seeds them all, so all their RNGs are saved too."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@torch.no_grad()
def _restore(
    model: nn.Module, training: Mapping[nn.Module, bool], buffers: Mapping[str, torch.Tensor]
) -> None:
    """Put back every module's train/eval flag and any buffer the run changed."""
    for module, flag in training.items():
        module.training = flag
    for path, buffer in model.named_buffers():
        saved = buffers.get(path)
        if saved is not None and saved.shape == buffer.shape and not torch.equal(saved, buffer):
            buffer.copy_(saved)


# --- checkpoints without a model ----------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """A tensor of a state_dict read by paranorm.checkpoint: effective value and how it was stored."""

    name: str
    value: torch.Tensor | None  # None when the effective weight could not be computed
    layout: str | None  # e.g. "spectral_norm (legacy, dim=0)"; None when plain
    dim: int | None = None  # the spectral norm's dim, for the reshape sigma
    error: str | None = None


def _effective_weights(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[_Tensor], list[str]]:
    """The eval-mode effective tensors of a state_dict in any layout, via paranorm.checkpoint.

    Each normalized tensor is converted on its own, so that one that cannot be (an unknown
    parametrization, an ambiguous dim) is reported as such instead of failing the rest; what
    the conversion derived (a dim read from u, v) becomes a note.
    """
    out: list[_Tensor] = []
    notes: list[str] = []
    metadata = getattr(state_dict, "_metadata", None)
    for entry in detect(state_dict):
        if entry.layout == "plain":
            out.append(_Tensor(entry.name, state_dict[entry.keys[0]], None))
            continue
        dim = entry.dim if entry.dim_known else None
        detail = entry.layout + ("" if dim is None else f", dim={dim}")
        layout = f"{entry.kind or 'unknown parametrization'} ({detail})"
        sub: OrderedDict[str, Any] = OrderedDict((k, state_dict[k]) for k in entry.keys)
        if metadata is not None:
            sub._metadata = metadata  # type: ignore[attr-defined]  # legacy spectral-norm version
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CheckpointWarning)
            try:
                value = convert(sub, to="plain")[entry.name]
            except CheckpointError as error:
                out.append(
                    _Tensor(entry.name, None, layout, None, f"effective weight unknown: {error}")
                )
                continue
        for warning in caught:
            if issubclass(warning.category, CheckpointWarning):
                notes.append(str(warning.message))
                found = re.search(
                    r"spectral norm dim (\d+) read from u and v", str(warning.message)
                )
                if found:
                    dim = int(found.group(1))
                    layout = f"{entry.kind} ({entry.layout}, dim={dim} from u, v)"
            else:
                warnings.warn_explicit(
                    warning.message, warning.category, warning.filename, warning.lineno
                )
        out.append(
            _Tensor(entry.name, value, layout, dim if entry.kind == "spectral_norm" else None)
        )
    return out, notes


def state_dict_report(
    state_dict: Mapping[str, Any],
    *,
    source: str = "state_dict",
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> LipschitzReport:
    """Report what the tensors of a checkpoint alone tell about sigma, and say what they cannot.

    Every floating tensor with 2 to 5 axes is read as a weight (its effective value in eval mode
    for weight/spectral norm layouts). A 2-D weight is read as a Linear: all its columns are
    computed. A conv weight's operator sigma needs the stride, padding, dilation, groups and
    input size, which a state_dict does not store, so "power"/"fft"/"svd" are not computed;
    "gram" (and so "bound") is computed as the zero-padding kernel-domain bound of the weight as
    a dense stride-1 conv: that bound holds for any input size, and a stride, dilation, groups,
    zero or circular padding, or reading it as the ConvTranspose that holds it, can only lower
    the true sigma below it. It does not cover reflect or replicate padding. No network bound:
    a state_dict does not say how its layers connect.

    Example:
        >>> import torch, paranorm as pn
        >>> sd = torch.nn.Linear(3, 5).state_dict()
        >>> report = pn.state_dict_report(sd)
        >>> [layer.name for layer in report.layers], report.network.holds
        (['weight'], False)
    """
    methods = _check_methods(methods, "state_dict_report")
    if not isinstance(state_dict, Mapping):
        raise ParanormError(
            f"state_dict_report: expected a mapping of names to tensors, got {type(state_dict).__name__}."
        )
    tensors = {
        k: v for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    weights, notes = _effective_weights(tensors)

    def is_weight(t: _Tensor) -> bool:
        return t.value is None or (t.value.is_floating_point() and 2 <= t.value.ndim <= 5)

    skipped = [t.name for t in weights if not is_weight(t)]
    weights = [t for t in weights if is_weight(t)]
    if skipped:
        notes.append(
            f"{len(skipped)} tensors skipped (biases, scales, statistics: not 2-5 axis floating weights)"
        )
    other = len(state_dict) - len(tensors)
    if other:
        notes.append(f"{other} entries are not tensors and were ignored")
    if any(t.value is not None and t.value.ndim > 2 for t in weights):
        notes.append(
            "conv weights: the operator sigma needs the stride, padding, dilation, groups and input "
            "size, which a state_dict does not store; inspect the model (module:attr with "
            "--input-shape) for those. Their bound holds for zero or circular padding at any stride, "
            "dilation, groups and input size, not for reflect/replicate padding. A plain conv "
            "weight's reshape sigma is taken with dim=0 (torch uses dim=1 for ConvTranspose)"
        )
    layers = []
    with torch.random.fork_rng(devices=_cuda_devices()), torch.no_grad():
        torch.manual_seed(seed)
        for i, t in enumerate(weights):
            w = t.value
            if w is None:
                estimates = {c: Estimate(c, None, None, None, t.error) for c in methods}
                layers.append(LayerReport(t.name, "?", (), None, t.layout, estimates, -1))
                continue
            is_matrix = w.ndim == 2
            kind = "Linear" if is_matrix else f"Conv{w.ndim - 2}d/ConvT{w.ndim - 2}d"
            estimates = {}
            for column in methods:
                method = "gram" if column == "bound" else column
                if not is_matrix and method in ("power", "fft", "svd"):
                    why = "needs the layer's stride, padding, dilation, groups and input size: not in a state_dict"
                    estimates[column] = Estimate(method, None, None, None, why)
                    continue
                options = {"dim": t.dim} if method == "reshape" and t.dim is not None else {}
                estimates[column] = _estimate(w, method, **options)
            layers.append(LayerReport(t.name, kind, tuple(w.shape), None, t.layout, estimates, -1))
            if on_layer is not None:
                on_layer(i + 1, len(weights), t.name)
    network = NetworkBound(
        None,
        False,
        "a state_dict does not say how its layers connect; inspect the model to get one",
    )
    return LipschitzReport(source, methods, tuple(layers), network, tuple(notes))
