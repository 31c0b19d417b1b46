"""Fused spectral normalization: the same numbers as torch's, fewer weight-sized passes.

torch's ``_SpectralNorm`` computes ``W / vdot(u, W v)`` with autograd recording every op, so
its backward (``DivBackward0`` then ``MvBackward0``) builds several weight-sized temporaries:
G / sigma, G * W, its division by sigma^2, the outer product u v^T and the sums of all of these
(ANCHORS section 8: 60% of a small layer's training step). With u, v held constant, as torch
holds them, the whole derivative of W / sigma, sigma = u^T W v, is

    dL/dW = (G - <G, W> / sigma * u v^T) / sigma,

one dot product over the weight and one fused rank-one update (``torch.addr`` with ``beta``):
two passes instead of about seven. The forward takes sigma from the power iteration's own last
product, sigma = u^T W v' = ||W^T u|| with v' = W^T u / ||W^T u||, so no extra mat-vec either.
The soft variant W / max(1, sigma / c) has the same form with the clamp's derivative.

Only the hard and soft "reshape" spectral norm of a float32/float64 weight of at least
:data:`FUSED_MIN_NUMEL` elements, outside autocast, takes this path; anything else (small or 1-D
weights, half types, double backward) uses the reference autograd graph.

The same switch turns on the activation-scaled forward of :mod:`.scaled` (weight norm and
spectral norm as a scale on a Linear/Conv layer's output or input channels, no normalized
weight at all), where the layer's shapes make it cheaper; this fused W / sigma is what spectral
norm runs elsewhere.

Opt-in, process-wide: ``paranorm.set_fast_paths(True)`` or ``with paranorm.fast_paths():``.
The default path stays bit for bit torch's (its outputs and gradients are tested with
``torch.equal``); the fused path agrees with it to rounding (a dot product sums in another order
than torch's ``sum``), which is why it is not the default.
"""

from __future__ import annotations

from typing import Any

import torch

from .._sigma.matrix import (
    rank_one_shape,
    reshape_sigma,
    soft_scale,
    soft_scale_active,
    weight_to_matrix,
)
from .._torch_compat import reference_graph_needed
from . import switch

__all__ = ["FUSED_MIN_NUMEL", "fused_applies", "fused_divide"]

#: The fused W / sigma path is taken from this many weight elements up; smaller weights keep
#: torch's graph, bit for bit. Below it, the Python autograd Function costs more than the
#: weight-sized passes it saves: measured on CPU (torch 2.13, 2 threads, minimum of 300
#: interleaved steps), Linear 32x32 to 128x128 at batch 1 and Conv1d 32-128ch k3 ran 30-40 us
#: per step slower fused than on torch's graph; Linear 256x256 broke even (319 vs 323 us);
#: Linear 512x512 ran 0.70x torch's step.
FUSED_MIN_NUMEL = 1 << 16


def fused_applies(weight: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether :func:`fused_divide` applies: switched on, no autocast, a float32/64 matrix of at
    least :data:`FUSED_MIN_NUMEL` elements, outside torch.func transforms and tracing."""
    # (reference_graph_needed first: under a trace, numel() is a traced value)
    if not switch.enabled() or reference_graph_needed() or weight.numel() < FUSED_MIN_NUMEL:
        return False
    try:
        autocast = torch.is_autocast_enabled(weight.device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        autocast = True
    return (
        not autocast
        and weight.ndim > 1
        and weight.dtype in (torch.float32, torch.float64)
        and u.dtype == weight.dtype
        and not weight.is_complex()
    )


class _SpectralDivide(torch.autograd.Function):
    """W / s(sigma) with sigma = u^T W v (u, v constant); s = sigma, or max(1, sigma / c)."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: torch.Tensor,
        sigma: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor,
        dim: int,
        coeff: float | None,
    ) -> torch.Tensor:
        scale = soft_scale(sigma, coeff)
        ctx.save_for_backward(weight, sigma, scale, u, v)
        ctx.dim = dim
        ctx.coeff = coeff
        return weight / scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, sigma, scale, u, v = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (e.g. a gradient penalty): differentiate the reference graph,
            # so second derivatives see sigma's dependence on W too.
            return (_reference_grad(weight, u, v, ctx.dim, ctx.coeff, grad), None, None, None, None, None)
        if grad.is_contiguous() and weight.is_contiguous():
            inner = torch.dot(grad.reshape(-1), weight.reshape(-1))
        else:
            inner = (grad * weight).sum()
        # d s / d sigma: 1 for the hard norm; 1/c where the soft clamp is active (torch's clamp
        # passes the gradient at equality too), else 0.
        fuse = ctx.dim == 0 and grad.is_contiguous() and grad.device.type == "cpu"
        if fuse and not torch.compiler.is_compiling():
            # One pass, beta * G + alpha * u v^T, with the scalars read to the host in one go
            # (free on CPU): fewer small ops, whose dispatch dominates for small weights.
            scalars = [inner, scale]
            if ctx.coeff is not None:
                # The clamp's test in the weight's dtype, as the forward made it (in float32,
                # sigma / coeff can be exactly 1 there and below 1 in Python's float64).
                scalars.append(soft_scale_active(sigma, ctx.coeff))
            inner_f, scale_f, *active = torch.stack(scalars).tolist()
            slope_f = 1.0 if ctx.coeff is None else active[0] / ctx.coeff
            out = torch.addr(grad.reshape(grad.shape[0], -1), u, v, beta=1.0 / scale_f,
                             alpha=-inner_f * slope_f / (scale_f * scale_f))
            return out.view(grad.shape), None, None, None, None, None
        slope = 1.0 if ctx.coeff is None else soft_scale_active(sigma, ctx.coeff) / ctx.coeff
        coef = inner * slope / (scale * scale)
        u_w, v_w = rank_one_shape(u * -coef, v, grad.shape, ctx.dim)
        out = grad / scale
        out.addcmul_(u_w, v_w)
        return out, None, None, None, None, None


def _reference_grad(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, coeff: float | None, grad: torch.Tensor
) -> torch.Tensor:
    with torch.enable_grad():
        sigma = reshape_sigma(weight_to_matrix(weight, dim), u, v)
        scale = soft_scale(sigma, coeff)
        (result,) = torch.autograd.grad(weight / scale, weight, grad, create_graph=True)
    return result


def fused_divide(
    weight: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
    *, dim: int, coeff: float | None,
) -> torch.Tensor:
    """W / sigma (or W / max(1, sigma / coeff)) with the two-pass backward; sigma = u^T W v
    with ``u``, ``v`` held constant (this step's, already cloned). Requires
    :func:`fused_applies`."""
    return _SpectralDivide.apply(weight, sigma, u, v, dim, coeff)
