"""What every normalization shares: the base class, and how to recognise one on a module.

paranorm's parametrizations subclass :class:`Normalization`; torch's own (``_WeightNorm``,
``_SpectralNorm``) and torch's legacy forward pre-hooks are recognised too, so that paranorm
can refuse to normalize a tensor twice, fold any of them, and list them.

A normalization whose weight is the raw weight times a scale along one axis (weight norm,
torch's spectral norm) says so through :meth:`Normalization.scale_form`; the fast paths ask
that instead of reading a parametrization's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm as TorchLegacySpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as TorchLegacyWeightNorm

from ._errors import ParanormError
from ._torch_compat import TorchSpectralNorm, TorchWeightNorm, forward_pre_hooks

__all__ = [
    "Found",
    "Implementation",
    "Kind",
    "Normalization",
    "ScaleForm",
    "find_normalization",
    "legacy_hook",
    "normalized_names",
    "originals",
]

Kind = Literal["weight_norm", "spectral_norm"]
Implementation = Literal["paranorm", "torch", "torch-legacy"]


@dataclass(frozen=True)
class ScaleForm:
    """This step's normalized weight as the raw weight times a scale: W = V * s.

    Weight norm: s = g / max(||v||, eps), one per slice along ``dim`` (None: one for the
    whole tensor). Spectral norm: s = 1 / scale(sigma), one for the whole tensor, sigma of
    the matrix with ``dim`` first, scale(sigma) = sigma or max(1, sigma / coeff).

    Attributes:
        kind: which of the two.
        raw: V, the tensor the optimizer updates.
        dim: as above.
        eps: weight norm's floor on ||v|| (0: none); spectral norm's in its power iteration.
        coeff: spectral norm's soft bound, None when hard (and for weight norm).
        g: weight norm's magnitude, None for spectral norm.
        power_step: spectral norm's ``power_step(raw) -> (sigma, u, v)``: this step's power
            iteration (in training mode, in place on its state), without autograd, u and v
            cloned; None for weight norm.
    """

    kind: Kind
    raw: torch.Tensor
    dim: int | None
    eps: float
    coeff: float | None = None
    g: torch.Tensor | None = None
    power_step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None


class Normalization(nn.Module):
    """Base class of paranorm's parametrizations; ``kind`` says which normalization it is."""

    kind: ClassVar[Kind]

    def scale_form(self, *originals: torch.Tensor) -> ScaleForm | None:
        """This step's weight as a scale of the raw one, given the parametrization's original
        tensors; None when it is not one (the default)."""
        return None

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this on every submodule before compiling; parametrizations
        # cannot be compiled (torch's own error is cryptic), so say what to do instead.
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
    if isinstance(p, TorchWeightNorm):
        return "weight_norm", "torch"
    if isinstance(p, TorchSpectralNorm):
        return "spectral_norm", "torch"
    return None


def legacy_hook(
    module: nn.Module, name: str
) -> TorchLegacyWeightNorm | TorchLegacySpectralNorm | None:
    """The legacy torch.nn.utils weight/spectral norm pre-hook on ``module.<name>``, if any."""
    for hook in forward_pre_hooks(module):
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


def normalized_names(module: nn.Module, kind: Kind | None = None) -> list[str]:
    """Names of the tensors of ``module`` (not its children) that carry a normalization
    (of ``kind`` only, if given), parametrized ones first."""
    names: list[str] = []
    if parametrize.is_parametrized(module):
        parametrizations: nn.ModuleDict = module.parametrizations  # type: ignore[assignment]
        for n in parametrizations:
            found = find_normalization(module, n)
            if found is not None and kind in (None, found.kind):
                names.append(n)
    for hook in forward_pre_hooks(module):
        legacy_kind = (
            "weight_norm" if isinstance(hook, TorchLegacyWeightNorm)
            else "spectral_norm" if isinstance(hook, TorchLegacySpectralNorm) else None
        )  # fmt: skip
        if legacy_kind is not None and kind in (None, legacy_kind):
            names.append(hook.name)
    return names


def originals(chain: parametrize.ParametrizationList) -> tuple[torch.Tensor, ...]:
    """The tensors a parametrization list is computed from: ``original``, or ``original0..n``."""
    if chain.is_tensor:
        return (chain.original,)
    return tuple(getattr(chain, f"original{i}") for i in range(chain.ntensors))
