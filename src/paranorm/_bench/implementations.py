"""How each implementation of a case is built and stepped: plain, torch (both APIs), paranorm."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations

from .._fast import fast_paths, normalize_once
from .._fold import fold
from .._sigma.layer import OPERATOR_LAYERS
from .._spectral_norm import spectral_norm
from .._weight_norm import weight_norm
from .zoo import Case

__all__ = ["build", "implementations", "normalize_all", "step_fn"]


def normalize_all(model: nn.Module, norm: str, impl: str) -> nn.Module:
    """Apply ``norm`` by implementation ``impl`` to every Linear/Conv weight of ``model``."""
    layers = [m for m in model.modules() if isinstance(m, OPERATOR_LAYERS)]
    for layer in layers:
        if impl == "torch-legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                legacy: Any = torch.nn.utils.weight_norm if norm == "weight_norm" else torch.nn.utils.spectral_norm
                legacy(layer)
        elif impl == "torch":
            param: Any = (torch_parametrizations.weight_norm if norm == "weight_norm"
                          else torch_parametrizations.spectral_norm)
            param(layer)
        else:
            (weight_norm if norm == "weight_norm" else spectral_norm)(layer)
    return model


def implementations(case: Case, norm: str, mode: str, compiled: bool) -> list[str]:
    impls = ["plain", "torch-legacy", "torch", "paranorm", "paranorm-fast"]
    if mode == "train" and case.calls > 1:
        impls.append("paranorm-once")
    if mode == "train" and compiled:
        impls += ["plain-compiled", "torch-compiled", "paranorm-fast-compiled"]
    if mode == "eval":
        impls = [i for i in impls if i != "paranorm-fast"] + ["paranorm-folded"]
    return impls


def build(case: Case, norm: str, impl: str, mode: str, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)  # built on the CPU, then moved: the same weights on every device
    model = case.make()
    base = impl.removesuffix("-compiled")
    if base != "plain":
        torch.manual_seed(seed + 1)
        model = normalize_all(model, norm, "paranorm" if base.startswith("paranorm") else base)
    if impl == "paranorm-folded":
        model.eval()
        model = fold(model)
    return model.to(device).train(mode == "train")


def step_fn(model: nn.Module, impl: str, mode: str, inputs: list[torch.Tensor]) -> Callable[[], None]:
    params = list(model.parameters())
    fast = impl in ("paranorm-fast", "paranorm-once", "paranorm-fast-compiled")
    once = impl == "paranorm-once"
    if impl.endswith("-compiled"):
        # torch.compile's default (inductor) backend, whole graph or an error: no silent breaks.
        model = torch.compile(model, fullgraph=True)  # type: ignore[assignment]

    if mode == "eval":
        def forward() -> None:
            with torch.no_grad():
                for x in inputs:
                    model(x)
        return forward

    def step() -> None:
        for p in params:
            p.grad = None
        with fast_paths(fast), (normalize_once() if once else contextlib.nullcontext()):
            loss = sum(model(x).sum() for x in inputs)
            loss.backward()

    return step
