"""What every normalization shares: the base class and how to recognise one on a module.

paranorm's parametrizations subclass :class:`Normalization`; torch's own (``_WeightNorm``,
``_SpectralNorm``) and torch's legacy forward pre-hooks are recognised too, so that paranorm
can refuse to normalize a tensor twice, fold any of them, and list them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as TorchLegacySpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as TorchLegacyWeightNorm

Kind = Literal["weight_norm", "spectral_norm"]
Implementation = Literal["paranorm", "torch", "torch-legacy"]


class Normalization(nn.Module):
    """Base class of paranorm's parametrizations; ``kind`` says which normalization it is."""

    kind: ClassVar[Kind]

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule before compiling; parametrizations
        # cannot be compiled (torch's own error is cryptic), so say what to do instead.
        from .errors import ParanormError

        raise ParanormError(
            f"torch.jit.script cannot compile a parametrized module ({self.kind}, "
            f"{type(self).__name__}). Fold the normalizations into plain weights first: "
            "paranorm.fold(model), then script; torch.jit.trace and torch.export also work "
            "unfolded."
        )


@dataclass(frozen=True)
class Found:
    """A normalization found on ``module.<name>``."""

    kind: Kind
    implementation: Implementation
    parametrization: nn.Module | None  # the parametrization object, None for a legacy hook


def _classify(p: nn.Module) -> tuple[Kind, Implementation] | None:
    if isinstance(p, Normalization):
        return p.kind, "paranorm"
    if isinstance(p, torch_parametrizations._WeightNorm):
        return "weight_norm", "torch"
    if isinstance(p, torch_parametrizations._SpectralNorm):
        return "spectral_norm", "torch"
    return None


def legacy_hook(
    module: nn.Module, name: str
) -> TorchLegacyWeightNorm | TorchLegacySpectralNorm | None:
    """The legacy torch.nn.utils weight/spectral norm pre-hook on ``module.<name>``, if any."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, (TorchLegacyWeightNorm, TorchLegacySpectralNorm)) and hook.name == name:
            return hook
    return None


def find_normalization(module: nn.Module, name: str) -> Found | None:
    """Return the weight/spectral normalization on ``module.<name>``, or None if it has none."""
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:  # type: ignore[index]
            classified = _classify(p)
            if classified is not None:
                return Found(classified[0], classified[1], p)
    hook = legacy_hook(module, name)
    if isinstance(hook, TorchLegacyWeightNorm):
        return Found("weight_norm", "torch-legacy", None)
    if isinstance(hook, TorchLegacySpectralNorm):
        return Found("spectral_norm", "torch-legacy", None)
    return None


def normalized_names(module: nn.Module) -> list[str]:
    """Names of the tensors of ``module`` (not its children) that carry a normalization."""
    names: list[str] = []
    if parametrize.is_parametrized(module):
        parametrizations: nn.ModuleDict = module.parametrizations  # type: ignore[assignment]
        names.extend(n for n in parametrizations if find_normalization(module, n))
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, (TorchLegacyWeightNorm, TorchLegacySpectralNorm)):
            names.append(hook.name)
    return names


def float32_or_wider(t: torch.Tensor) -> torch.dtype:
    """The dtype to compute norms in: float32 for half types, the tensor's own otherwise."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def autocast_off(t: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Turn autocast off on ``t``'s device, if it is on: norms and sigma stay in float32 or wider.

    Under CUDA autocast torch.mv, linear and conv run in float16, which would put the power
    iteration and the sigma estimators in half precision.
    """
    try:
        enabled = torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        enabled = False
    return torch.autocast(t.device.type, enabled=False) if enabled else contextlib.nullcontext()
