"""What a Lipschitz report holds: per-layer sigmas with what each guarantees, and a network bound."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Estimate", "LayerReport", "LipschitzReport", "NetworkBound", "names_list"]


#: A note names at most this many layers, then says how many more.
NOTE_NAMES = 6


def names_list(names: list[str]) -> str:
    """``names`` for a note: all of them up to NOTE_NAMES, else the first ones and a count."""
    if len(names) <= NOTE_NAMES:
        return ", ".join(names)
    return f"{', '.join(names[:NOTE_NAMES - 2])} and {len(names) - NOTE_NAMES + 2} more"


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
        from .render import table

        return table(self)

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from .render import rich_lines

        yield from rich_lines(self, console, options)

    def render(self, width: int = 140) -> str:
        """The report as plain text (what ``print(report)`` shows)."""
        from .render import plain_text

        return plain_text(self, width)

    def __str__(self) -> str:
        return self.render()

    def save_plot(self, path: str | os.PathLike[str]) -> None:
        """Draw per layer the reshape sigma, the operator sigma and the bound (grouped bars, log y).

        Written atomically (temp file in the same folder, then os.replace); the format follows
        the suffix (png, pdf, svg, ...). Zero or missing values are left out of the bars.
        """
        from .render import save_plot

        save_plot(self, path)


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)


