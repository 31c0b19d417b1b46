"""Independent computations the tests of real models compare paranorm with (``from real._checks import ...``).

Each one asks torch, not paranorm: which normalizations torch registered, what torch's own
removal computes, the dense operator's singular values, a layer's outputs seen by a hook.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as LegacySpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as LegacyWeightNorm

#: The layers lipschitz_report estimates (others, Embedding or GroupNorm, are listed without).
WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)
#: Relative slack for comparing two float32 estimates of one sigma.
REL = 1e-4


def torch_norms(model: nn.Module) -> dict[str, tuple[str, str, int | None]]:
    """path -> (kind, layer type, dim) for every normalized ``weight``, read from torch's own
    records: the parametrization objects and the legacy forward pre-hooks."""
    found: dict[str, tuple[str, str, int | None]] = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                name = type(p).__name__
                if name == "_WeightNorm":
                    found[path] = (
                        "weight_norm",
                        type(module).__name__.removeprefix("Parametrized"),
                        p.dim,
                    )
                elif name == "_SpectralNorm":
                    found[path] = (
                        "spectral_norm",
                        type(module).__name__.removeprefix("Parametrized"),
                        p.dim,
                    )
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, LegacyWeightNorm):
                found[path] = ("weight_norm", type(module).__name__, hook.dim)
            elif isinstance(hook, LegacySpectralNorm):
                found[path] = ("spectral_norm", type(module).__name__, hook.dim)
    return found


def torch_removed(model: nn.Module) -> nn.Module:
    """A copy with every normalization removed by torch itself, keeping the effective weights."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            # deepcopy shares torch's generated class with the original, and the removal
            # deletes the property from that class: give the copy a class of its own first.
            cls = type(module)
            namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        for _key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, LegacyWeightNorm):
                nn.utils.remove_weight_norm(module)
            elif isinstance(hook, LegacySpectralNorm):
                nn.utils.remove_spectral_norm(module)
    return model


def legacy_twin(model: nn.Module) -> nn.Module:
    """The same architecture normalized by torch's legacy hooks where ``model`` has torch's
    weight-norm parametrizations (the layout of checkpoints written before torch 2.1)."""
    norms = torch_norms(model)
    twin = torch_removed(model)
    for module in twin.modules():
        # torch's parametrized weight_norm leaves a load pre-hook that renames weight_g/_v to
        # its own keys: a legacy model must not keep it.
        for key, hook in list(module._load_state_dict_pre_hooks.items()):
            if getattr(getattr(hook, "hook", hook), "__name__", "") == "_weight_norm_compat_hook":
                del module._load_state_dict_pre_hooks[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for path, (kind, _, dim) in norms.items():
            assert kind == "weight_norm", "legacy_twin knows weight norm only"
            nn.utils.weight_norm(twin.get_submodule(path), "weight", dim=dim)
    return twin


def dense_sigma(layer: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The largest singular value of ``layer``'s linear part at one sample of ``input_shape``:
    the layer (its effective weight, bias zeroed) applied to every basis vector, then an SVD
    in float64."""
    layer = torch_removed(layer).double()
    if getattr(layer, "bias", None) is not None:
        layer.bias = None
    n = 1
    for size in input_shape:
        n *= size
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *input_shape)
    with torch.no_grad():
        columns = layer(basis).reshape(n, -1)
    return torch.linalg.matrix_norm(columns, ord=2).item()


def check_report(report: Any, model: nn.Module) -> None:
    """Every layer's certified bound is >= its power (lower) estimate, and the dense operator's
    sigma lies between the two."""
    checked = 0
    for layer in report.layers:
        module = model.get_submodule(layer.name)
        if (
            not isinstance(module, WEIGHTED) or layer.input_shape is None
        ):  # no estimate / not reached
            continue
        checked += 1
        power = layer.estimates["power"]
        bound = layer.estimates["bound"]
        assert power.kind == "lower" and bound.kind in ("upper", "exact"), layer
        assert bound.value >= power.value * (1 - REL), layer
        sigma = dense_sigma(module, layer.input_shape)
        assert power.value <= sigma * (1 + REL), (layer.name, power.value, sigma)
        assert bound.value >= sigma * (1 - REL), (layer.name, bound.value, sigma)
    assert checked


def channel_stats(
    model: nn.Module, paths: list[str], run: Callable[[], Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """path -> (mean, population std) per output channel of each layer's output on its first
    call during ``run()``, over the batch and every position (channel: dim 1 of a conv's
    output, the last dim of a Linear's)."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def hook(path: str, module: nn.Module) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, out: torch.Tensor) -> None:
            if path in stats:
                return
            channel = out.ndim - 1 if isinstance(module, nn.Linear) else 1
            flat = out.detach().double().movedim(channel, 0).reshape(out.shape[channel], -1)
            stats[path] = (flat.mean(1), flat.std(1, correction=0))

        return record

    for path in paths:
        module = model.get_submodule(path)
        handles.append(module.register_forward_hook(hook(path, module)))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return stats


def check_standardized(
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]], initialized: list[str], common: list[str]
) -> None:
    """Data-dependent init's promise on a batch: each ``initialized`` layer's output channels
    have mean 0 and std 1; each of ``common`` (one scale for the layer, e.g. a ConvTranspose
    weight-normed with dim=0) is centred per channel, with an RMS of the stds of 1."""
    for path in initialized:
        mean, std = stats[path]
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0, msg=path)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0, msg=path)
    for path in common:
        mean, std = stats[path]
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0, msg=path)
        assert abs(std.square().mean().sqrt().item() - 1) < 1e-4, path
