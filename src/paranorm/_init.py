"""Data-dependent initialization of weight-normed layers (Salimans & Kingma 2016, section 3.2).

For each weight-normed layer, in the order a real forward pass reaches them, with
t = (v . x) / ||v|| per output unit over the batch (and every spatial position of a conv):

    g <- 1 / std(t),    b <- -mean(t) / std(t),

so the layer's pre-activations g t + b have mean 0 and standard deviation 1 per unit, and every
later layer is initialized on the outputs of the already-initialized earlier ones.
Salimans & Kingma, "Weight Normalization", 2016, https://arxiv.org/abs/1602.07868. The
statistics use v/||v|| (TensorFlow Addons' WeightNormalization uses the raw v there, which gives
a wrong g whenever ||v|| != 1).

Real vocoders do not always allow all of it; then what can be set is set, and said:

- g not one per output unit (torch's default dim=0 on a ConvTranspose scales its *input*
  channels; dim=None, one g for the whole tensor): g is set to one common c = 1 / RMS_u std(t_u)
  and b <- -c mean(t): outputs centred per unit, of average variance 1 ("partial");
- no bias (BigVGAN's conv_post): g <- 1 / std(t), the mean is left ("partial");
- units whose t is constant over the batch (a dead input channel, say) keep their g and b
  ("partial"); a layer whose every unit is constant, that the batch never reaches, or that is
  not a Linear/Conv/ConvTranspose, is left alone ("skipped").

``strict=True`` turns every partial or skipped layer into an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as TorchLegacyWeightNorm

from ._errors import ParanormError, entry_point
from ._normalization import find_normalization, legacy_hook, normalized_names
from ._sigma.layer import OPERATOR_LAYERS, default_dim
from ._sigma.precision import float32_or_wider

__all__ = ["InitSummary", "data_dependent_init"]

Status = Literal["initialized", "partial", "skipped"]
Mode = Literal["unit", "common"]


@dataclass(frozen=True)
class InitSummary:
    """What :func:`data_dependent_init` did to one weight-normed layer.

    ``mean_*`` and ``std_*`` are averages over the output units of each unit's mean and
    (population) standard deviation of the layer's output over the batch: ``before`` with the
    layer's old g and bias (on inputs from the already-initialized earlier layers), ``after``
    with the new ones (NaN for a skipped layer). ``status`` is "initialized", "partial" or
    "skipped"; ``detail`` says what was left out, or why the layer was skipped.
    """

    path: str
    layer: str
    units: int
    mean_before: float
    std_before: float
    mean_after: float
    std_after: float
    status: Status = "initialized"
    detail: str = ""

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        stats = "" if self.status == "skipped" else (
            f": mean {self.mean_before:.3g} -> {self.mean_after:.3g}, "
            f"std {self.std_before:.3g} -> {self.std_after:.3g}"
        )  # fmt: skip
        return f"{self.path} ({self.layer}, {self.units} units): {self.status}{detail}{stats}"


@dataclass
class _Target:
    """A weight-normed layer to initialize. ``mode`` "unit": one g per output unit; "common":
    g does not index the output units, so it sets one common scale. ``bias`` None: none."""

    path: str
    module: nn.Module
    g: torch.Tensor
    bias: torch.Tensor | None
    legacy: TorchLegacyWeightNorm | None
    mode: Mode
    dim: int | None


def _skipped(path: str, module: nn.Module, reason: str) -> InitSummary:
    nan = float("nan")
    kind = parametrize.type_before_parametrizations(module).__name__
    units = int(getattr(module, "out_features", getattr(module, "out_channels", 0)) or 0)
    return InitSummary(path, kind, units, nan, nan, nan, nan, "skipped", reason)


def _g_and_dim(module: nn.Module, implementation: str, parametrization: Any) -> tuple[Any, Any, Any]:
    """(g, dim as stored, the legacy hook or None) of the weight norm on ``module.weight``."""
    if implementation == "torch-legacy":
        hook = legacy_hook(module, "weight")
        return module.weight_g, getattr(hook, "dim", None), hook
    chain: Any = module.parametrizations["weight"]  # type: ignore[index]
    return chain.original0, getattr(parametrization, "dim", None), None


def _target(path: str, module: nn.Module) -> _Target | str:
    """The weight-normed layer as a target, or why it cannot be initialized from data."""
    others = [n for n in normalized_names(module, "weight_norm") if n != "weight"]
    kind = parametrize.type_before_parametrizations(module).__name__
    found = find_normalization(module, "weight")
    if others or found is None or found.kind != "weight_norm":
        names = ", ".join(others) or "a tensor other than 'weight'"
        return f"weight norm on {names}: initialize it by hand"
    if not isinstance(module, OPERATOR_LAYERS):
        return f"a {kind}, not a Linear, Conv or ConvTranspose: its output units are not known"
    if found.implementation != "torch-legacy" and len(module.parametrizations["weight"]) != 1:  # type: ignore[index]
        return "other parametrizations are stacked on its weight norm: initialize before adding them"
    g, dim, legacy = _g_and_dim(module, found.implementation, found.parametrization)
    dim = None if dim in (None, -1) else int(dim)
    grouped_transpose = default_dim(module) == 1 and module.groups != 1
    mode: Mode = "unit" if dim == default_dim(module) and not grouped_transpose else "common"
    bias = getattr(module, "bias", None)
    return _Target(path, module, g, bias if isinstance(bias, torch.Tensor) else None, legacy, mode, dim)


def _find_targets(model: nn.Module) -> list[_Target | InitSummary]:
    """Every weight-normed layer of ``model``: a target, or the summary of why it is skipped."""
    found: list[_Target | InitSummary] = []
    for path, module in model.named_modules():
        if normalized_names(module, "weight_norm"):
            target = _target(path or "<model>", module)
            found.append(_skipped(path or "<model>", module, target) if isinstance(target, str) else target)
    return found


def _unit_axis(target: _Target, output: torch.Tensor) -> int:
    """Axis of the layer's output that indexes units: last for Linear, channels for convs."""
    if isinstance(target.module, nn.Linear):
        return output.ndim - 1
    weight: torch.Tensor = target.module.weight  # type: ignore[assignment]
    spatial = weight.ndim - 2
    return output.ndim - spatial - 1  # 1 when batched, 0 for an unbatched input


def _unit_stats(output: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit mean and population std over every other axis, in float32 or wider."""
    flat = output.detach().movedim(axis, 0).flatten(1)
    flat = flat.to(float32_or_wider(flat))
    return flat.mean(dim=1), flat.std(dim=1, correction=0)


def _refresh(target: _Target) -> None:
    """Torch's legacy hook stores the weight as a plain attribute: recompute it after g changes."""
    if target.legacy is not None:
        target.module.weight = target.legacy.compute_weight(target.module)


def _call_args(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return tuple(batch), {}
    raise ParanormError(
        f"batch must be a tensor, a tuple of the model's positional "
        f"arguments or a dict of its keyword arguments, got {type(batch).__name__}."
    )


def _batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return None


def _restore_units(target: _Target, g: torch.Tensor, bias: torch.Tensor | None, units: torch.Tensor | None) -> None:
    """Put back the old g and b of every unit (``units`` None), or the old b (and, one g per
    unit, the old g) of the masked units."""
    if units is None:
        target.g.copy_(g)
        if target.bias is not None and bias is not None:
            target.bias.copy_(bias)
    else:
        if target.mode == "unit":
            target.g.view(-1)[units] = g.view(-1)[units]
        if target.bias is not None and bias is not None:
            target.bias[units] = bias[units]
    _refresh(target)


def _set_scale(target: _Target, t_mean: torch.Tensor, t_std: torch.Tensor, live: torch.Tensor) -> list[str]:
    """Set g (and b) from the statistics of t; return what was left out."""
    notes = []
    if target.mode == "common":
        scale = 1.0 / t_std[live].square().mean().sqrt()
        target.g.fill_(float(scale))
        notes.append(
            f"weight norm dim={target.dim} does not index the output units, so g sets one "
            "common scale: outputs centred per unit, average variance 1"
        )
        if target.bias is not None:
            target.bias.copy_((-t_mean * scale).to(target.bias.dtype))
    else:
        safe = torch.where(live, t_std, torch.ones_like(t_std))
        target.g.copy_((1.0 / safe).reshape(target.g.shape).to(target.g.dtype))
        if target.bias is not None:
            target.bias.copy_((-t_mean / safe).to(target.bias.dtype))
    if target.bias is None:
        notes.append("no bias: the mean is left as it is")
    return notes


def _initialize(
    target: _Target, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
) -> tuple[InitSummary, torch.Tensor]:
    """Set g and b of ``target`` from its inputs (its forward with w = v/|v|, b = 0); return
    what was done and the layer's new output."""
    axis = _unit_axis(target, output)
    mean_before, std_before = _unit_stats(output, axis)
    old_g = target.g.detach().clone()
    old_b = None if target.bias is None else target.bias.detach().clone()
    target.g.fill_(1.0)
    if target.bias is not None:
        target.bias.zero_()
    _refresh(target)
    t_mean, t_std = _unit_stats(module.forward(*inputs), axis)  # w = v/|v|, b = 0
    live = (t_std > 0) & torch.isfinite(t_std) & torch.isfinite(t_mean)
    if not bool(live.any()):
        _restore_units(target, old_g, old_b, None)
        reason = "its pre-activations are constant (or not finite) over the batch for every unit"
        return _skipped(target.path, module, reason), output
    notes = _set_scale(target, t_mean, t_std, live)
    if not bool(live.all()):
        _restore_units(target, old_g, old_b, ~live)
        notes.append(f"{int((~live).sum())} of {live.numel()} units are constant over the batch and kept their g, b")
    _refresh(target)
    after = module.forward(*inputs)
    mean_after, std_after = _unit_stats(after, axis)
    summary = InitSummary(
        path=target.path,
        layer=parametrize.type_before_parametrizations(module).__name__,
        units=int(t_mean.numel()),
        mean_before=float(mean_before.mean()),
        std_before=float(std_before.mean()),
        mean_after=float(mean_after.mean()),
        std_after=float(std_after.mean()),
        status="partial" if notes else "initialized",
        detail="; ".join(notes),
    )
    return summary, after


@entry_point("data_dependent_init")
def data_dependent_init(model: nn.Module, batch: Any, *, strict: bool = False) -> list[InitSummary]:
    """Set g and bias of every weight-normed layer from one batch, in forward order.

    With t = (v . x) / ||v|| per output unit: g = 1 / std(t), b = -mean(t) / std(t), so the
    layer's outputs on ``batch`` have mean 0 and (population) std 1 per output unit (Salimans &
    Kingma 2016, https://arxiv.org/abs/1602.07868). One forward pass under ``torch.no_grad()``,
    in eval mode (no dropout, no BatchNorm running-stat or spectral-norm u/v updates); every
    module's train/eval mode is restored afterwards. A layer called twice is initialized on its
    first call. paranorm's, torch's and torch's legacy weight norm on the ``weight`` of Linear,
    Conv{1,2,3}d and ConvTranspose{1,2,3}d. Where only part can be set (g not one per output
    unit, no bias, constant units) it is, and the summary says so (see the module docstring).

    Args:
        model: the network; its weight-normed layers are found by walking it.
        batch: a tensor (``model(batch)``), a tuple (``model(*batch)``) or a dict
            (``model(**batch)``) of at least two examples.
        strict: raise instead of initializing a layer partly or skipping it.

    Returns:
        One :class:`InitSummary` per weight-normed layer, in the order the forward reached them,
        then the skipped ones; ``print(*summaries, sep="\\n")`` shows them.

    Raises:
        ParanormError: no weight-normed layer, a batch of one, a model that fails on the batch;
            with ``strict``, any partial or skipped layer. The model is unchanged when anything
            is raised.

    Example:
        >>> import torch, paranorm as pn
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(pn.weight_norm(torch.nn.Linear(3, 4)), torch.nn.ReLU(),
        ...                             pn.weight_norm(torch.nn.Linear(4, 2)))
        >>> x = torch.randn(256, 3) * 5 + 2
        >>> [(s.path, s.status) for s in pn.data_dependent_init(model, x)]
        [('0', 'initialized'), ('2', 'initialized')]
        >>> y = model(x)
        >>> bool(y.mean(0).abs().max() < 1e-5), bool((y.std(0, correction=0) - 1).abs().max() < 1e-5)
        (True, True)
    """
    if not isinstance(model, nn.Module):
        raise ParanormError(f"expected an nn.Module, got {type(model).__name__}.")
    args, kwargs = _call_args(batch)
    size = _batch_size(args, kwargs)
    if size is not None and size < 2:
        raise ParanormError(
            f"the batch has {size} example(s); the init divides by each "
            "unit's standard deviation over the batch, which one example cannot estimate. Pass a "
            "batch of many examples (hundreds are typical)."
        )
    found = _find_targets(model)
    if not found:
        raise ParanormError(
            f"{type(model).__name__} has no weight-normed layer; apply "
            "paranorm.weight_norm (dim=0) to its Linear/Conv layers first."
        )
    targets = [t for t in found if isinstance(t, _Target)]
    saved = [(t.g.detach().clone(), None if t.bias is None else t.bias.detach().clone()) for t in targets]
    modes = {m: m.training for m in model.modules()}
    summaries: list[InitSummary] = []
    try:
        _run_hooked(model, targets, summaries, args, kwargs)
        reached = {s.path for s in summaries}
        summaries += [s for s in found if isinstance(s, InitSummary)]
        summaries += [
            _skipped(t.path, t.module, "the batch never reached it (not called in the forward pass)")
            for t in targets
            if t.path not in reached
        ]
        if strict:
            _refuse_incomplete(summaries)
    except BaseException:
        with torch.no_grad():
            for target, (g, bias) in zip(targets, saved, strict=True):
                _restore_units(target, g, bias, None)
        raise
    finally:
        for module, training in modes.items():
            module.training = training
    return summaries


def _run_hooked(
    model: nn.Module, targets: list[_Target], summaries: list[InitSummary],
    args: tuple[Any, ...], kwargs: dict[str, Any],
) -> None:
    """One forward of ``model`` in eval mode that initializes each target at its first call."""
    done: set[int] = set()

    def make_hook(index: int) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if index in done:
                return output
            done.add(index)
            summary, after = _initialize(targets[index], module, inputs, output)
            summaries.append(summary)
            return after

        return hook

    handles = [t.module.register_forward_hook(make_hook(i)) for i, t in enumerate(targets)]
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()


def _refuse_incomplete(summaries: list[InitSummary]) -> None:
    incomplete = [s for s in summaries if s.status != "initialized"]
    if incomplete:
        first = incomplete[0]
        raise ParanormError(
            f"{len(incomplete)} weight-normed layer(s) could not be fully initialized from data "
            f"(strict=True), first {first.path} ({first.layer}): {first.status}, {first.detail}. "
            "Drop strict=True to initialize what can be, or give those layers weight norm over "
            "their output units, a bias, and a batch that reaches them and varies them."
        )
