"""``state_dict_report``: what the tensors of a checkpoint alone tell about sigma."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import CheckpointError, ParanormError, entry_point
from .._sigma.gram import check_tolerance
from ..checkpoint.convert import effective_weight
from ..checkpoint.detect import candidate_dims, groups
from .columns import (
    DEFAULT_METHODS,
    check_methods,
    estimate,
    gram_options,
    unestimated,
    weight_problem,
    withdraw_contradicted,
)
from .model import cuda_devices
from .results import Estimate, LayerReport, LipschitzReport, NetworkBound, names_list

__all__ = ["state_dict_report"]


@dataclass(frozen=True)
class _Weight:
    """A weight of a state_dict: its eval-mode value (None when it cannot be computed), how it
    was stored, and the spectral norm's dim for the reshape sigma."""

    name: str
    value: torch.Tensor | None
    layout: str | None  # e.g. "spectral_norm (legacy, dim=0)"; None when plain
    dim: int | None = None
    error: str | None = None


def _effective_weights(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[_Weight], list[str]]:
    """The eval-mode effective tensors of a state_dict in any layout (:mod:`paranorm.checkpoint`).

    A normalized tensor whose value cannot be computed (an unknown parametrization, an
    ambiguous dim) is reported as such instead of failing the rest; what was derived (a dim
    read from u, v) becomes a note.
    """
    out: list[_Weight] = []
    notes: list[str] = []
    read_from_uv: list[str] = []
    for group in groups(state_dict):
        if group.layout == "plain":
            out.append(_Weight(group.base, state_dict[group.base], None))
            continue
        dims = candidate_dims(group, state_dict)
        dim = dims[0] if len(dims) == 1 else None
        if group.unknown:
            layout = group.describe(short=True)
        else:
            layout = f"{group.kind} ({group.layout}{'' if dim is None else f', dim={dim}'})"
        try:
            effective = effective_weight(group, state_dict, {})
        except CheckpointError as error:
            out.append(_Weight(group.base, None, layout, None, f"effective weight unknown: {error.detail}"))
            continue
        # effective.notes says only how the dim was read: said once for all such tensors
        # (below), and the table marks each "from u, v".
        if effective.dim is not None and effective.dim.source == "u and v":
            read_from_uv.append(group.base)
            dim = effective.dim.dim
            layout = f"{group.kind} ({group.layout}, dim={dim} from u, v)"
        out.append(_Weight(group.base, effective.value, layout, dim if group.kind == "spectral_norm" else None))
    if read_from_uv:
        notes.append(
            f"the spectral norm dim of {names_list(read_from_uv)} (marked \"from u, v\") was read "
            "from the power method's invariant u = W v/|W v|, as the shapes allow more than one; "
            "paranorm convert states a dim with --dim KEY=DIM"
        )
    return out, notes


def _is_weight(t: _Weight) -> bool:
    """A 2-5 axis tensor that holds (or stands for) a layer's weight: floating point (float8 and
    meta too), complex, int8 or quantized; those paranorm cannot compute with are reported as
    such. Other integer and bool tensors (indices, masks, counters) are not weights."""
    if t.value is None:
        return True
    w = t.value
    weight_like = w.is_floating_point() or w.is_complex() or w.is_quantized or w.dtype == torch.int8
    return weight_like and 2 <= w.ndim <= 5


@entry_point("state_dict_report")
def state_dict_report(
    state_dict: Mapping[str, Any],
    *,
    source: str = "state_dict",
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    on_layer: Callable[[int, int, str], None] | None = None,
    allow_large: bool = False,
    tolerance: float | None = None,
) -> LipschitzReport:
    """Report what the tensors of a checkpoint alone tell about sigma, and say what they cannot.

    Every floating tensor with 2 to 5 axes is read as a weight (its effective value in eval mode
    for weight/spectral norm layouts). A 2-D weight is read as a Linear: all its columns are
    computed. A conv weight's operator sigma needs the stride, padding, dilation, groups and
    input size, which a state_dict does not store, so "power"/"fft"/"svd" are not computed;
    "gram" (and so "bound") is computed as the zero-padding bound (over every frequency of the
    kernel's DFT) of the weight as a dense stride-1 conv: that bound holds for any input size,
    and a stride, dilation, groups, zero or circular padding, or reading it as the
    ConvTranspose that holds it, can only lower the true sigma below it. It does not cover reflect or replicate padding. No network bound:
    a state_dict does not say how its layers connect.

    A tensor that cannot be measured is a layer whose estimates are n/a with the reason, not
    a failure of the report: an int8, complex, float8, quantized, sparse or meta weight (the
    reason names it and the conversion to make), an empty one ("empty weight"), one holding
    NaN or inf, or a normalized group whose effective weight cannot be computed (0/0, past its
    dtype's range). A certified value below a lower estimate of the same operator is withdrawn
    (n/a, "not certified"). ``allow_large``: as for :func:`paranorm.sigma`'s cost limits;
    ``tolerance``: the gram bound's stopping tolerance, as for :func:`paranorm.sigma`.

    Example:
        >>> import torch, paranorm as pn
        >>> sd = torch.nn.Linear(3, 5).state_dict()
        >>> report = pn.state_dict_report(sd)
        >>> [layer.name for layer in report.layers], report.network.holds
        (['weight'], False)
    """
    methods = check_methods(methods)
    tolerance = check_tolerance(tolerance)
    if not isinstance(state_dict, Mapping):
        raise ParanormError(
            f"expected a mapping of names to tensors, got {type(state_dict).__name__}."
        )
    tensors = {
        k: v for k, v in state_dict.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    }
    weights, notes = _effective_weights(tensors)

    skipped = [t.name for t in weights if not _is_weight(t)]
    weights = [t for t in weights if _is_weight(t)]
    if skipped:
        notes.append(
            f"{len(skipped)} tensors skipped (biases, scales, statistics, indices: not 2-5 axis "
            "floating, int8, quantized or complex weights)"
        )
    other = len(state_dict) - len(tensors)
    if other:
        notes.append(f"{other} entries are not tensors and were ignored")
    if any(t.value is not None and t.value.ndim > 2 for t in weights):
        notes.append(
            "conv weights: the operator sigma needs the stride, padding, dilation, groups and input "
            "size, which a state_dict does not store; inspect the model (--model with "
            "--input-shape) for those. Their bound holds for zero or circular padding at any stride, "
            "dilation, groups and input size, not for reflect/replicate padding. A plain conv "
            "weight's reshape sigma is taken with dim=0 (torch uses dim=1 for ConvTranspose)"
        )
    layers = []
    with torch.random.fork_rng(devices=cuda_devices()), torch.no_grad():
        torch.manual_seed(seed)
        for i, t in enumerate(weights):
            w = t.value
            if w is None:
                estimates = {c: Estimate(c, None, None, None, t.error) for c in methods}
                layers.append(LayerReport(t.name, "?", (), None, t.layout, estimates, -1))
                continue
            is_matrix = w.ndim == 2
            kind = "Linear" if is_matrix else f"Conv{w.ndim - 2}d/ConvT{w.ndim - 2}d"
            problem = weight_problem(repr(t.name), w)
            if problem is not None:
                estimates = unestimated(methods, None, problem)
                layers.append(LayerReport(t.name, kind, tuple(w.shape), None, t.layout, estimates, -1))
                continue
            estimates = {}
            for column in methods:
                method = "gram" if column == "bound" else column
                if not is_matrix and method in ("power", "fft", "svd"):
                    why = "needs the layer's stride, padding, dilation, groups and input size: not in a state_dict"
                    estimates[column] = Estimate(method, None, None, None, why)
                    continue
                options: dict[str, Any] = {"dim": t.dim} if method == "reshape" and t.dim is not None else {}
                options.update(gram_options(method, tolerance))
                estimates[column] = estimate(w, method, allow_large=allow_large, **options)
            estimates = withdraw_contradicted(estimates, is_matrix, w.dtype)
            layers.append(LayerReport(t.name, kind, tuple(w.shape), None, t.layout, estimates, -1))
            if on_layer is not None:
                on_layer(i + 1, len(weights), t.name)
    network = NetworkBound(
        None,
        False,
        "a state_dict does not say how its layers connect; inspect the model to get one",
    )
    return LipschitzReport(source, methods, tuple(layers), network, tuple(notes))
