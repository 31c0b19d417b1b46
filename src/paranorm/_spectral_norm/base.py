"""The spectral normalizations' shared division: W / sigma, or softly W / max(1, sigma / c).

Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018,
https://arxiv.org/abs/1802.05957; soft variant: Behrmann et al., "Invertible Residual
Networks", ICML 2019. How sigma is estimated is the subclass's choice (:mod:`.reshape`,
:mod:`.operator`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._normalization import Normalization
from .._sigma.matrix import soft_scale
from .._sigma.precision import autocast_off

__all__ = ["Settings", "SpectralNorm"]


@dataclass(frozen=True)
class Settings:
    """What ``spectral_norm`` was asked for, checked: the arguments every method receives."""

    n_power_iterations: int
    dim: int
    eps: float
    coeff: float | None
    input_shape: Sequence[int] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's own options


class SpectralNorm(Normalization, abc.ABC):
    """Base of the spectral normalizations: ``forward(W) = W / scale(sigma(W))``.

    scale = sigma (hard, ``coeff=None``) or max(1, sigma / coeff) (soft: only shrinks).
    Subclasses implement :meth:`sigma`, which may update their state in training mode, and say
    which of ``spectral_norm``'s options they use (the others are refused, not ignored).
    """

    kind = "spectral_norm"
    method: ClassVar[str]
    #: Extra keyword options of the method (beyond spectral_norm's own arguments).
    options: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``n_power_iterations``, ``eps`` and ``input_shape`` mean anything to it.
    uses_power_iterations: ClassVar[bool] = True
    uses_eps: ClassVar[bool] = True
    uses_input_shape: ClassVar[bool] = False

    def __init__(self, *, dim: int, eps: float, coeff: float | None) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.coeff = coeff

    @classmethod
    @abc.abstractmethod
    def from_module(cls, module: nn.Module, name: str, weight: torch.Tensor, settings: Settings) -> SpectralNorm:
        """Build for ``module.<name>`` (not yet parametrized); ``settings`` already checked."""

    def attach(self, module: nn.Module) -> None:
        """Called once registered on ``module`` (e.g. to watch its inputs); nothing by default."""

    @abc.abstractmethod
    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """sigma(W) (a 0-dim tensor, differentiable in W); may update state in training mode."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with autocast_off(weight):  # sigma in float32 or wider, also under autocast
            return weight / soft_scale(self.sigma(weight), self.coeff)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        soft = "" if self.coeff is None else f", coeff={self.coeff}"
        return f"method={self.method!r}, dim={self.dim}, eps={self.eps}{soft}"
