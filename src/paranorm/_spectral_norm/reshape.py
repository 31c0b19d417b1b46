"""torch's spectral norm: sigma of the weight viewed as a matrix, by persistent power iteration."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._fast.fused import fused_applies, fused_divide
from .._normalization import ScaleForm
from .._sigma.matrix import power_iteration_, power_step_sigma_, reshape_sigma, weight_to_matrix
from .._sigma.precision import float32_or_wider
from .base import Settings, SpectralNorm

__all__ = ["WARMUP_ITERATIONS", "ReshapeSpectralNorm"]

#: Power iterations run at registration, as torch does, so the first forward's sigma is
#: already close to the truth instead of a random vector's Rayleigh quotient.
WARMUP_ITERATIONS = 15


class ReshapeSpectralNorm(SpectralNorm):
    """sigma of the weight reshaped to a matrix (``dim`` first), by persistent power iteration.

    Exactly torch's ``_SpectralNorm``: u, v drawn from the same RNG calls, 15 warm-up steps,
    ``n_power_iterations`` steps per training forward (none in eval), u and v cloned before use
    so two forwards in one step can both backpropagate. A 1-D weight is normalized exactly:
    sigma = ||w||. Half-precision weights iterate in float32.
    """

    method = "reshape"
    _u: torch.Tensor
    _v: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        n_power_iterations: int = 1,
        dim: int = 0,
        eps: float = 1e-12,
        *,
        coeff: float | None = None,
    ) -> None:
        super().__init__(dim=dim, eps=eps, coeff=coeff)
        self.n_power_iterations = n_power_iterations
        self._warm_up_pending = False  # set when a checkpoint without u, v is loaded
        if weight.ndim > 1:
            matrix = weight_to_matrix(weight, dim)
            h, w = matrix.shape
            u = matrix.new_empty(h).normal_(0, 1)
            v = matrix.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
            self._power_method(matrix, WARMUP_ITERATIONS)

    @classmethod
    def from_module(cls, module: nn.Module, name: str, weight: torch.Tensor, settings: Settings) -> ReshapeSpectralNorm:
        return cls(weight, settings.n_power_iterations, settings.dim, settings.eps, coeff=settings.coeff)

    def scale_form(self, *originals: torch.Tensor) -> ScaleForm | None:
        (weight,) = originals
        if weight.ndim < 2 or self._warm_up_pending or self._u.dtype != weight.dtype:
            return None  # exact 1-D path; a warm-up the module's own forward runs; a cast
        return ScaleForm("spectral_norm", weight, self.dim, self.eps, self.coeff, power_step=self.power_step)

    def power_step(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma, u, v) of this step, without autograd: ``n_power_iterations`` steps on u, v
        in training mode (sigma from the last one, :func:`power_step_sigma_`), sigma = u^T W v
        in eval mode; u and v cloned, as torch clones them."""
        matrix = weight_to_matrix(weight.detach(), self.dim)
        if self.training:
            sigma = power_step_sigma_(matrix, self._u, self._v, self.n_power_iterations, self.eps)
        else:
            with torch.no_grad():
                sigma = reshape_sigma(matrix, self._u, self._v)
        # Clones: a second forward in the same step updates u, v in place, and this forward's
        # backward must still see the vectors it used.
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        return sigma, u, v

    def _power_method(self, matrix: torch.Tensor, n_iterations: int) -> None:
        if matrix.dtype == self._u.dtype == float32_or_wider(matrix):
            power_iteration_(matrix, self._u, self._v, n_iterations, self.eps)
            return
        work = float32_or_wider(matrix)
        u, v = self._u.to(work), self._v.to(work)
        power_iteration_(matrix.detach().to(work), u, v, n_iterations, self.eps)
        with torch.no_grad():
            self._u.copy_(u)
            self._v.copy_(v)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return torch.linalg.vector_norm(weight).clamp_min(self.eps)
        matrix = weight_to_matrix(weight, self.dim)
        if self.training:
            self._power_method(matrix, self.n_power_iterations)
        # Clones: the in-place power step of a second forward in the same step must not
        # change the u, v that the first forward's graph saved.
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        work = float32_or_wider(matrix)
        if work != matrix.dtype:
            return reshape_sigma(matrix.to(work), u.to(work), v.to(work))
        return reshape_sigma(matrix, u, v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1 and self.coeff is None:
            return F.normalize(weight, dim=0, eps=self.eps)  # torch's exact 1-D path
        if self._warm_up_pending:
            self._power_method(weight_to_matrix(weight, self.dim), WARMUP_ITERATIONS)
            self._warm_up_pending = False
        # A 1-D weight has no _u, _v buffers (its sigma is ||w||, exact): test ndim first.
        if weight.ndim > 1 and fused_applies(weight, self._u):  # opt-in: paranorm.fast_paths()
            sigma, u, v = self.power_step(weight)
            return fused_divide(weight, sigma, u, v, dim=self.dim, coeff=self.coeff)
        return super().forward(weight)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # "power" checkpoints carry input-shaped vectors of the true operator: they mean nothing
        # for the reshaped matrix, so they are refused by name (torch hands submodules
        # strict=True whatever the caller asked, so this holds under strict=False too).
        foreign = [k for k in state_dict if k.startswith(prefix + "_x_")]
        if foreign:
            error_msgs.append(
                f"state_dict has {', '.join(repr(k) for k in foreign)}: the power method's "
                f"vectors of the true operator, but this tensor is spectrally normalized with "
                f"method='reshape', for which they mean nothing. Drop those keys (the weight "
                f"'{prefix[:-2]}original' loads as is), or normalize with method='power'."
            )
            for key in foreign:
                state_dict.pop(key)
        u_key, v_key = prefix + "_u", prefix + "_v"
        if hasattr(self, "_u") and u_key not in state_dict and v_key not in state_dict:
            # A stateless method ("fft", "gram") saved no u, v. They are only the power
            # iteration's start: keep ours and warm up on the loaded weight at the next forward
            # (torch hands this module only its own keys, so the weight is not visible here).
            state_dict[u_key], state_dict[v_key] = self._u.clone(), self._v.clone()
            self._warm_up_pending = True
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_power_iterations={self.n_power_iterations}"
