"""Data-dependent initialization of weight-normed layers (Salimans & Kingma 2016, section 3.2).

For each weight-normed layer, in the order a real forward pass reaches them, with
t = (v . x) / ||v|| per output unit over the batch (and every spatial position of a conv):

    g <- 1 / std(t),    b <- -mean(t) / std(t),

so the layer's pre-activations g t + b have mean 0 and standard deviation 1 per unit, and every
later layer is initialized on the outputs of the already-initialized earlier ones.
Salimans & Kingma, "Weight Normalization", 2016, https://arxiv.org/abs/1602.07868. The
statistics use v/||v|| (TensorFlow Addons' WeightNormalization uses the raw v there, which gives
a wrong g whenever ||v|| != 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as TorchLegacyWeightNorm

from ._errors import ParanormError, entry_point
from ._normalization import find_normalization, legacy_hook, normalized_names
from ._sigma.layer import CONV_TRANSPOSE, OPERATOR_LAYERS, default_dim
from ._sigma.precision import float32_or_wider

__all__ = ["InitSummary", "data_dependent_init"]


@dataclass(frozen=True)
class InitSummary:
    """What :func:`data_dependent_init` did to one layer.

    ``mean_*`` and ``std_*`` are averages over the output units of each unit's mean and
    (population) standard deviation of the layer's output over the batch: ``before`` with the
    layer's old g and bias (on inputs from the already-initialized earlier layers), ``after``
    with the new ones.
    """

    path: str
    layer: str
    units: int
    mean_before: float
    std_before: float
    mean_after: float
    std_after: float


@dataclass
class _Target:
    path: str
    module: nn.Module
    g: torch.Tensor
    bias: torch.Tensor
    legacy: TorchLegacyWeightNorm | None


def _find_targets(model: nn.Module) -> list[_Target]:
    targets: list[_Target] = []
    for path, module in model.named_modules():
        found = find_normalization(module, "weight")
        others = [n for n in normalized_names(module, "weight_norm") if n != "weight"]
        where = path or type(model).__name__
        if others:
            raise ParanormError(
                f"{where} has weight norm on {', '.join(others)}; only the "
                "'weight' of Linear, Conv and ConvTranspose layers can be initialized from data. "
                "Initialize that layer by hand, or remove its weight norm first."
            )
        if found is None or found.kind != "weight_norm":
            continue
        kind = parametrize.type_before_parametrizations(module).__name__
        if not isinstance(module, OPERATOR_LAYERS):
            raise ParanormError(
                f"{where} ({kind}) is weight-normed, but only Linear, Conv and "
                "ConvTranspose layers are supported (their output units are known). Initialize it "
                "by hand, or remove its weight norm first."
            )
        if isinstance(module, CONV_TRANSPOSE) and module.groups != 1:
            raise ParanormError(
                f"{where} is a grouped ConvTranspose (groups="
                f"{module.groups}); its weight has no axis indexing the output channels, so g "
                "cannot be set per output unit. Use groups=1, or initialize it by hand."
            )
        if found.implementation == "torch-legacy":
            hook = legacy_hook(module, "weight")
            assert isinstance(hook, TorchLegacyWeightNorm)
            g: torch.Tensor
            dim: int | None
            g, dim, legacy = module.weight_g, hook.dim, hook  # type: ignore[assignment]
        else:
            if len(module.parametrizations["weight"]) != 1:  # type: ignore[index]
                raise ParanormError(
                    f"{where}.weight has other parametrizations stacked with "
                    "its weight norm, so g no longer scales each output unit alone. Initialize "
                    "before adding the others."
                )
            original = module.parametrizations["weight"]  # type: ignore[index]
            g, legacy = original.original0, None  # type: ignore[union-attr]
            dim = getattr(found.parametrization, "dim", None)
        dim = None if dim in (None, -1) else dim
        want = default_dim(module)  # the axis of output units
        if dim != want:
            raise ParanormError(
                f"{where} ({kind}) has weight norm with dim={dim}, but g must "
                f"be one scale per output unit, which is dim={want} for a {kind}; with any other "
                f"dim g scales slices that are not output units and cannot set their statistics. "
                f"Apply weight_norm(layer, dim={want}) instead."
            )
        bias = getattr(module, "bias", None)
        if not isinstance(bias, torch.Tensor):
            raise ParanormError(
                f"{where} ({kind}) has no bias; the init sets "
                "b = -mean(t)/std(t) and cannot zero the mean without one. Build the layer with "
                "bias=True, or leave it out of the init by removing its weight norm."
            )
        targets.append(_Target(path or "<model>", module, g, bias, legacy))
    return targets


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


def _initialize(
    target: _Target, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
) -> tuple[InitSummary, torch.Tensor]:
    """Set g and b of ``target`` from its inputs (its forward with g = 1, b = 0); return what was
    done and the layer's new output."""
    axis = _unit_axis(target, output)
    mean_before, std_before = _unit_stats(output, axis)
    target.g.fill_(1.0)
    target.bias.zero_()
    _refresh(target)
    t_mean, t_std = _unit_stats(module.forward(*inputs), axis)  # w = v/|v|, b = 0
    if bool((t_std == 0).any()) or not bool(torch.isfinite(t_std).all()):
        bad = int((~(t_std > 0) | ~torch.isfinite(t_std)).sum())
        raise ParanormError(
            f"{target.path} has {bad} output unit(s) whose "
            "pre-activations are constant or not finite over the batch, so 1/std is "
            "undefined. Use a larger, more varied batch (check that earlier layers are "
            "not dead, e.g. all-negative inputs to a ReLU)."
        )
    target.g.copy_((1.0 / t_std).reshape(target.g.shape).to(target.g.dtype))
    target.bias.copy_((-t_mean / t_std).to(target.bias.dtype))
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
    )
    return summary, after


@entry_point("data_dependent_init")
def data_dependent_init(model: nn.Module, batch: Any) -> list[InitSummary]:
    """Set g and bias of every weight-normed layer from one batch, in forward order.

    With t = (v . x) / ||v|| per output unit: g = 1 / std(t), b = -mean(t) / std(t), so the
    layer's outputs on ``batch`` have mean 0 and (population) std 1 per output unit (Salimans &
    Kingma 2016, https://arxiv.org/abs/1602.07868). One forward pass under ``torch.no_grad()``,
    in eval mode (no dropout, no BatchNorm running-stat or spectral-norm u/v updates); every
    module's train/eval mode is restored afterwards. A layer called twice is initialized on its
    first call. Supports paranorm's, torch's and torch's legacy weight norm on the ``weight``
    of Linear, Conv{1,2,3}d (``dim=0``) and ConvTranspose{1,2,3}d with groups=1 (``dim=1``, its
    output-channel axis).

    Args:
        model: the network; its weight-normed layers are found by walking it.
        batch: a tensor (``model(batch)``), a tuple (``model(*batch)``) or a dict
            (``model(**batch)``) of at least two examples.

    Returns:
        One :class:`InitSummary` per layer, in the order the forward pass reached them.

    Raises:
        ParanormError: no weight-normed layer; a layer without bias, with another ``dim``, of
            another type; a batch of one; a unit whose outputs do not vary over the batch; a
            layer the batch never reaches. The model is unchanged when anything is raised.

    Example:
        >>> import torch, paranorm as pn
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(pn.weight_norm(torch.nn.Linear(3, 4)), torch.nn.ReLU(),
        ...                             pn.weight_norm(torch.nn.Linear(4, 2)))
        >>> x = torch.randn(256, 3) * 5 + 2
        >>> [s.path for s in pn.data_dependent_init(model, x)]
        ['0', '2']
        >>> y = model(x)
        >>> bool(y.mean(0).abs().max() < 1e-5), bool((y.std(0, correction=0) - 1).abs().max() < 1e-5)
        (True, True)
    """
    if not isinstance(model, nn.Module):
        raise ParanormError(
            f"expected an nn.Module, got {type(model).__name__}."
        )
    args, kwargs = _call_args(batch)
    size = _batch_size(args, kwargs)
    if size is not None and size < 2:
        raise ParanormError(
            f"the batch has {size} example(s); the init divides by each "
            "unit's standard deviation over the batch, which one example cannot estimate. Pass a "
            "batch of many examples (hundreds are typical)."
        )
    targets = _find_targets(model)
    if not targets:
        raise ParanormError(
            f"{type(model).__name__} has no weight-normed layer; apply "
            "paranorm.weight_norm (dim=0) to its Linear/Conv layers first."
        )
    saved = [(t.g.detach().clone(), t.bias.detach().clone()) for t in targets]
    modes = {m: m.training for m in model.modules()}
    summaries: list[InitSummary] = []
    done: set[int] = set()

    def make_hook(index: int) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if index in done:
                return output
            summary, after = _initialize(targets[index], module, inputs, output)
            done.add(index)
            summaries.append(summary)
            return after

        return hook

    handles = [t.module.register_forward_hook(make_hook(i)) for i, t in enumerate(targets)]
    try:
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
        missed = [t.path for i, t in enumerate(targets) if i not in done]
        if missed:
            raise ParanormError(
                f"the batch never reached {', '.join(missed)} (not called "
                "in the forward pass), so no statistics exist for them. Pass a batch that runs "
                "through every weight-normed layer, or remove the weight norm of unused layers."
            )
    except BaseException:
        with torch.no_grad():
            for target, (g, bias) in zip(targets, saved, strict=True):
                target.g.copy_(g)
                target.bias.copy_(bias)
                _refresh(target)
        raise
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return summaries
