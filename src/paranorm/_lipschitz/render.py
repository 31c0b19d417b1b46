"""How a Lipschitz report looks: a rich table with a legend, plain text, and a bar chart."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

from .._extras import require
from .._plotting import figure_format, save_figure
from .columns import COLUMN_TITLES, TABLE_TITLES
from .results import LipschitzReport, names_list

__all__ = ["fits", "plain_text", "rich_lines", "save_plot", "table"]

_KIND_STYLE = {"lower": "yellow", "exact": "cyan", "upper": "green"}
_KIND_SIGN = {"lower": "≥", "exact": "=", "upper": "≤"}
_KIND_WORD = {"lower": "lower estimate", "exact": "exact", "upper": "upper bound"}
_KIND_MARKER = {"lower": "^", "exact": "o", "upper": "v"}


def table(report: LipschitzReport) -> Any:
    """The per-layer rich Table."""
    require("rich", "printing a Lipschitz report")
    from rich.table import Table

    table = Table(title=f"Lipschitz report: {report.source}", title_justify="left")
    for title in ("layer", "type", "input", "normalization"):
        table.add_column(title, overflow="fold")
    for column in report.methods:
        table.add_column(TABLE_TITLES[column], justify="right", no_wrap=True)
    for layer in report.layers:
        cells: list[Any] = [
            layer.name,
            layer.type,
            "?" if layer.input_shape is None else "x".join(map(str, layer.input_shape)),
            layer.normalization or "-",
        ]
        cells += [_value(layer, column) for column in report.methods]
        table.add_row(*cells)
    return table


def _value(layer: Any, column: str) -> Any:
    """One estimate as a styled cell: its sign (≥, =, ≤), value, and a bound's method."""
    from rich.text import Text

    estimate = layer.estimates.get(column)
    if estimate is None or estimate.value is None:
        return Text("n/a", style="dim")
    cell = Text(_KIND_SIGN.get(estimate.kind or "", "?"), style=_KIND_STYLE.get(estimate.kind or "", ""))
    cell += Text(f"{estimate.value:.4g}", style="bold")
    if column == "bound":
        cell += Text(f" {estimate.method}", style="dim")
    return cell


def stacked(report: LipschitzReport) -> Iterator[Any]:
    """The table's rows as lines, for a console too narrow for the table: each layer's name on a
    line of its own (a table would fold it mid-name), its values indented below."""
    from rich.text import Text

    yield Text(f"Lipschitz report: {report.source}", style="italic")
    for layer in report.layers:
        yield Text(layer.name, style="bold")
        shape = "?" if layer.input_shape is None else "x".join(map(str, layer.input_shape))
        yield Text(f"    {layer.type}, input {shape}, {layer.normalization or 'no normalization'}")
        values = Text("    ")
        for i, column in enumerate(report.methods):
            values += Text(f"{', ' if i else ''}{TABLE_TITLES[column]} ")
            values += _value(layer, column)
        yield values


def fits(renderable: Any, console: Any, options: Any) -> bool:
    """Whether ``renderable`` fits the console's width with no word folded: its cells may wrap
    between words (its minimum width is that of its longest words), never inside a name."""
    from rich.measure import Measurement

    least = Measurement.get(console, options.update_width(1 << 20), renderable).minimum
    return bool(least <= options.max_width)

def rich_lines(report: LipschitzReport, console: Any = None, options: Any = None) -> Iterator[Any]:
    """What printing ``report`` on a rich console shows: the table (or, where it does not fit the
    width, :func:`stacked` lines), the legend, the bound, notes."""
    from rich.text import Text

    grid = table(report)
    if console is None or fits(grid, console, options):
        yield grid
    else:
        yield from stacked(report)
    yield Text(
        "≥x: a lower estimate (sigma is at least x); =x: exact; ≤x: a certified upper bound. "
        "reshape σ: the reshaped kernel's (Miyato 2018, what torch's spectral_norm divides "
        "by), for a conv not the layer's Lipschitz constant; operator σ: the layer's map at "
        "its input shape, by power iteration; bound: gram, or fft where exact.",
        style="dim",
    )
    if report.network.holds:
        yield Text.assemble(
            ("network Lipschitz bound: ", "bold"),
            (f"≤{report.network.value:.6g}", "bold green"),
            f"  ({report.network.statement})",
        )
    else:
        yield Text.assemble(("no network bound: ", "bold yellow"), report.network.statement)
    missing: dict[tuple[str, str], list[str]] = {}
    for layer in report.layers:
        for column, e in layer.estimates.items():
            if e.error:
                missing.setdefault((column, e.error), []).append(layer.name)
    lines = [*report.notes]
    lines += [
        f"{column} n/a for {names_list(names)}: {error}"
        for (column, error), names in missing.items()
    ]
    for line in lines:
        yield Text(f"note: {line}", style="dim")

def plain_text(report: LipschitzReport, width: int = 140) -> str:
    """The report as plain text (what ``print(report)`` shows)."""
    require("rich", "printing a Lipschitz report")
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(report)
    return console.export_text()

def save_plot(report: LipschitzReport, path: str | os.PathLike[str]) -> None:
    """Draw per layer the reshape sigma, the operator sigma and the bound (markers, log y).

    Written atomically (temp file in the same folder, then os.replace); the format follows
    the suffix (png, pdf, svg, ...). Zero or missing values are left out of the bars.
    """
    figure_format(path, "Lipschitz plot")  # before drawing: a bad path fails fast
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    figure = Figure(figsize=(max(6.0, 0.9 * len(report.layers) + 2.5), 4.5), layout="constrained")
    axes = figure.add_subplot()
    # Markers, not bars: on a log axis a bar's height depends on where its floor is drawn. The
    # marker says what the number guarantees: a bound points down at sigma, a lower estimate up.
    n_columns = max(1, len(report.methods))
    offset = 0.6 / n_columns
    for j, column in enumerate(report.methods):
        shown: dict[str, list[tuple[float, float]]] = {}
        for i, layer in enumerate(report.layers):
            estimate = layer.estimates.get(column)
            if estimate is not None and estimate.value is not None and estimate.value > 0:
                x = i + (j - (n_columns - 1) / 2) * offset
                shown.setdefault(estimate.kind or "", []).append((x, estimate.value))
        color = f"C{j}"
        for kind, points in shown.items():
            xs, ys = zip(*points, strict=True)
            label = f"{COLUMN_TITLES[column]}: {_KIND_WORD.get(kind, kind)}"
            axes.scatter(xs, ys, marker=_KIND_MARKER.get(kind, "o"), color=color, label=label, zorder=3)
            for x, y in points:
                axes.annotate(
                    f"{_KIND_SIGN.get(kind, '')}{y:.3g}", (x, y), xytext=(0, 6 if kind != "lower" else -11),
                    textcoords="offset points", ha="center", fontsize=7, color=color,
                )
    axes.set_yscale("log")
    axes.margins(y=0.12)  # room for the labels above and below the outermost markers
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.grid(axis="y", which="both", color="0.9", linewidth=0.6)
    axes.set_xticks(
        range(len(report.layers)),
        [f"{layer.name}\n{layer.type}" for layer in report.layers],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    axes.set_xlim(-0.6, len(report.layers) - 0.4)
    axes.set_ylabel("σ (log scale)")
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--", label="σ = 1 (1-Lipschitz)")
    title = report.source
    if report.network.holds:
        title += f"   network bound ≤{report.network.value:.4g}"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="best")
    save_figure(figure, path, "Lipschitz plot")
