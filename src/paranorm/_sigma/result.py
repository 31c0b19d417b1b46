"""What a sigma estimate is: its value and what that value guarantees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Guarantee", "SigmaResult"]

#: What a number says about the true sigma: a lower estimate (the truth may be larger), the
#: exact value, or a certified upper bound.
Guarantee = Literal["lower", "exact", "upper"]


@dataclass(frozen=True)
class SigmaResult:
    """sigma of a layer: ``value`` (0-dim tensor), what it guarantees (``kind``), how it was found."""

    value: torch.Tensor
    kind: Guarantee
    method: str
    iterations: int | None

    def __float__(self) -> float:
        return float(self.value.detach())

    def __repr__(self) -> str:
        it = "" if self.iterations is None else f", iterations={self.iterations}"
        return f"SigmaResult({float(self):.6g}, kind={self.kind!r}, method={self.method!r}{it})"
