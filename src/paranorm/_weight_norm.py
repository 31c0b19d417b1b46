"""Weight normalization as a parametrization: w = g * v / ||v||.

Salimans & Kingma, "Weight Normalization", 2016, https://arxiv.org/abs/1602.07868.
A drop-in for :func:`torch.nn.utils.parametrizations.weight_norm`: same signature, defaults,
numbers (torch's fused ``_weight_norm`` kernel) and state_dict keys
(``parametrizations.<name>.original0`` = g, ``original1`` = v).
"""

from __future__ import annotations

import torch
from torch import nn

from ._errors import ParanormError, entry_point
from ._normalization import Normalization, ScaleForm
from ._register import register
from ._sigma.precision import float32_or_wider
from ._torch_compat import weight_norm_kernel
from ._validate import (
    check_dim,
    check_eps,
    check_normalizable,
    check_plain_range,
    label,
    plain_range_problem,
    refuse_out_of_range_loads,
    slice_max,
    weight_norm_ratio_problem,
)

__all__ = ["RANGE_FIX", "WeightNorm", "weight_norm"]

#: What to do with a weight outside the range torch's kernel normalizes correctly.
RANGE_FIX = (
    "Rescale the weights into that range (weight norm's output does not depend on v's scale), "
    "or keep the layer in float64 (module.double()), whose range is wide."
)


class WeightNorm(Normalization):
    """w = g * v / max(||v||, eps), the norm taken over every axis but ``dim``.

    ``dim=None`` takes the norm over the whole tensor (torch stores that as -1 internally; here
    it stays None, so -1 is never mistaken for "last axis"). With ``eps=0`` (the default) the
    forward is torch's fused kernel, bit for bit.
    """

    kind = "weight_norm"

    def __init__(self, dim: int | None = 0, *, eps: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    @property
    def torch_dim(self) -> int:
        """``dim`` as torch's kernels take it: -1 means the whole tensor."""
        return -1 if self.dim is None else self.dim

    def norm(self, v: torch.Tensor) -> torch.Tensor:
        """||v|| over every axis but ``dim``, kept-dim shaped like g (float32 for half types)."""
        return torch.norm_except_dim(v.to(float32_or_wider(v)), 2, self.torch_dim)

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        if self.eps == 0:
            return weight_norm_kernel(weight_v, weight_g, self.torch_dim)
        norm = self.norm(weight_v).clamp_min(self.eps)
        return (weight_v * (weight_g.to(norm.dtype) / norm)).to(weight_v.dtype)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight_g = torch.norm_except_dim(weight, 2, self.torch_dim)
        return weight_g, weight

    def scale_form(self, *originals: torch.Tensor) -> ScaleForm:
        weight_g, weight_v = originals
        return ScaleForm("weight_norm", weight_v, self.dim, self.eps, g=weight_g)

    def extra_repr(self) -> str:
        return f"dim={self.dim}" + (f", eps={self.eps}" if self.eps else "")


@entry_point("weight_norm")
def weight_norm(
    module: nn.Module, name: str = "weight", dim: int | None = 0, *, eps: float = 0.0
) -> nn.Module:
    """Apply weight normalization to ``module.<name>``: w = g * v / ||v||.

    The norm is taken over every axis except ``dim`` (per output channel for ``dim=0``), or over
    the whole tensor for ``dim=None``. Wrapping preserves the function: g = ||w||, v = w.
    Registered with :func:`torch.nn.utils.parametrize.register_parametrization`; the keys are
    ``parametrizations.<name>.original0`` (g) and ``original1`` (v), and legacy
    ``<name>_g``/``<name>_v`` state dicts load too.

    Args:
        module: the layer holding the tensor.
        name: the tensor to normalize.
        dim: the axis kept (one g per index along it), or None for one g for the whole tensor.
            Negative axes count from the end, except -1, which torch reads as None: pass None
            or ``ndim - 1`` instead.
        eps: floor on ||v||. 0 (default) reproduces torch exactly, fused kernel included; a
            slice of v that is all zeros then gives NaN, so paranorm refuses such a weight at
            registration. With ``eps > 0`` a zero slice gives a zero weight and finite gradients.
            Finite.

    Magnitudes: the forward (torch's kernel, or g v / max(||v||, eps)) squares v's entries
    unscaled, so it is right only while each slice's largest entry stays in a range. Measured
    (``benchmarks/scale_range.py``, a Conv1d(4, 6, 3) weight): float32 and bfloat16 about
    3e-21 .. 9e18, float64 7e-158 .. 7e153, float16 its whole range. Registration, and
    ``load_state_dict`` into the module, refuse a v outside the part of it that is proven,
    [sqrt(n tiny), sqrt(max / 4n)] for n entries per slice (float32, n = 1000: 3.4e-18 ..
    2.9e17; :func:`paranorm._sigma.scale.plain_norm_range`), naming the tensor. Not guarded:
    weights that training moves out of the range (a check on every step would cost a host
    sync), and g.

    Returns:
        ``module``, parametrized.

    Raises:
        ParanormError: missing, lazy, empty, non-floating (or float8, complex, sparse) tensor,
            bad dim or eps (negative, NaN, inf), a zero slice with ``eps=0``, a weight outside
            the range above; AlreadyNormalizedError: the tensor is normalized already. The
            module is unchanged when anything is raised.

    Example:
        >>> import torch, paranorm as pn
        >>> m = pn.weight_norm(torch.nn.Linear(20, 40))
        >>> m.parametrizations.weight.original0.shape, m.parametrizations.weight.original1.shape
        (torch.Size([40, 1]), torch.Size([40, 20]))
        >>> g, v = m.parametrizations.weight.original0, m.parametrizations.weight.original1
        >>> bool(torch.allclose(m.weight.norm(dim=1, keepdim=True), g))
        True
    """
    weight = check_normalizable(module, name, "weight_norm")
    eps = check_eps(module, name, eps)
    if dim is not None:
        if dim == -1 and not isinstance(dim, bool):
            raise ParanormError(
                f"dim=-1 is ambiguous for {label(module, name)}: torch reads it as "
                f"dim=None (one norm for the whole tensor), Python as the last axis. Pass "
                f"dim=None or dim={weight.ndim - 1}."
            )
        dim = check_dim(module, name, dim, weight.ndim)
    parametrization = WeightNorm(dim, eps=eps)
    if eps == 0 and weight.device.type != "meta":
        with torch.no_grad():
            # Exact zeros, not a norm that underflows (1e-30 squared is 0 in float32): that is
            # a range problem, refused below with its own message.
            zero = slice_max(weight, dim) == 0
        if bool(zero.any()):
            where = (
                "the whole tensor"
                if dim is None
                else f"{int(zero.sum())} slice(s) along dim={dim}"
            )
            raise ParanormError(
                f"{label(module, name)} has zero norm over {where}; w = g v/||v|| "
                "would be NaN there. Initialize the weight to non-zero values, or pass eps=1e-12 "
                "to map zero slices to zero."
            )
    # Not on the forward (torch's kernel, bit for bit and no slower): its range, checked here
    # and on load_state_dict, is where its unscaled squares are exact.
    check_plain_range(module, name, weight, dim, "torch's weight_norm kernel", RANGE_FIX)
    register(module, name, parametrization, unsafe=True)
    refuse_out_of_range_loads(module, name, WeightNorm, _load_problem, "torch's weight_norm kernel", RANGE_FIX)
    return module


def _load_problem(parametrization: WeightNorm, incoming: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """(key, why) for an incoming g, v that torch's kernel would normalize wrongly, or None."""
    v, g = incoming.get("original1"), incoming.get("original0")
    if v is None:
        return None
    problem = plain_range_problem(v, parametrization.dim)
    if problem is not None:
        return "original1", problem
    problem = None if g is None else weight_norm_ratio_problem(g, v, parametrization.dim)
    return None if problem is None else ("original0", problem)
