"""Rounding a float64 upper bound (or exact value) so that it stays one in the dtype it is
reported in: "exact" and "upper" are both certified upper bounds (a report multiplies them)."""

from __future__ import annotations

import math

import torch

__all__ = ["ROUNDING_MARGIN", "certified"]

#: Relative widening of the float64 bounds: their matrix products round at ~1e-16 per step,
#: and a bound that is tight (matrices, circular convs) would otherwise sit an ulp below.
ROUNDING_MARGIN = 1e-12


def certified(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (float64) widened by ROUNDING_MARGIN for the float64 rounding of the steps
    that computed it, cast to ``dtype`` and rounded up, so that an upper bound stays one."""
    value = value * (1 + ROUNDING_MARGIN)
    cast = value.to(dtype)
    low = cast.detach().to(value.dtype) < value.detach()
    bump = torch.nextafter(cast.detach(), torch.full_like(cast, math.inf)) - cast.detach()
    return cast + torch.where(low, bump, torch.zeros_like(bump))
