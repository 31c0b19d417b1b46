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

The same switch turns on the activation-scaled forward of :mod:`paranorm._scaled` (weight norm
and spectral norm as a scale on a Linear/Conv layer's output or input channels, no normalized
weight at all), where the layer's shapes make it cheaper; this fused W / sigma is what spectral
norm runs elsewhere.

Opt-in, process-wide: ``paranorm.set_fast_paths(True)`` or ``with paranorm.fast_paths():``.
The default path stays bit for bit torch's (its outputs and gradients are tested with
``torch.equal``); the fused path agrees with it to rounding (a dot product sums in another order
than torch's ``sum``), which is why it is not the default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

__all__ = [
    "fast_paths",
    "fast_paths_enabled",
    "reference_graph_needed",
    "set_fast_paths",
    "spectral_fast_ok",
    "spectral_normalize",
]

_ENABLED = False

#: The fused W / sigma path is taken from this many weight elements up; smaller weights keep
#: torch's graph, bit for bit. Below it, the Python autograd Function costs more than the
#: weight-sized passes it saves: measured on CPU (torch 2.13, 2 threads, minimum of 300
#: interleaved steps), Linear 32x32 to 128x128 at batch 1 and Conv1d 32-128ch k3 ran 30-40 us
#: per step slower fused than on torch's graph; Linear 256x256 broke even (319 vs 323 us);
#: Linear 512x512 ran 0.70x torch's step.
FUSED_MIN_NUMEL = 1 << 16


def fast_paths_enabled() -> bool:
    """Whether the fast paths are on (False unless switched on)."""
    return _ENABLED


def set_fast_paths(enabled: bool) -> bool:
    """Turn the fast paths on or off for the whole process; return the old setting.

    Read at every forward, so it applies to modules normalized before the call too.
    """
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_paths(enabled: bool = True) -> Iterator[None]:
    """Turn the fast paths (fused spectral norm, scaled activations) on or off in a ``with`` block.

    Process-wide while the block runs.

    Example:
        >>> import torch, paranorm as pn
        >>> layer = pn.spectral_norm(torch.nn.Linear(8, 8))
        >>> with pn.fast_paths():
        ...     layer(torch.randn(2, 8)).sum().backward()  # fused backward, 2 passes over W
        >>> pn.fast_paths_enabled()
        False
    """
    previous = set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(previous)


def reference_graph_needed() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...), forward-mode AD or
    ``torch.jit.trace`` is running.

    The fast paths' autograd Functions define neither ``vmap`` nor ``jvp``, and a trace would
    record them as Python calls that cannot be saved or exported: under these the fast paths
    step aside for the reference graph.
    """
    if torch.compiler.is_compiling():
        return False
    return (
        torch._C._functorch.maybe_current_level() is not None
        or forward_ad._current_level >= 0
        or torch._C._get_tracing_state() is not None
    )


def spectral_fast_ok(weight: torch.Tensor, u: torch.Tensor) -> bool:
    """Whether :func:`spectral_normalize` applies: switched on, no autocast, a float32/64 matrix
    of at least :data:`FUSED_MIN_NUMEL` elements."""
    # (reference_graph_needed first: under a trace, numel() is a traced value)
    if not _ENABLED or reference_graph_needed() or weight.numel() < FUSED_MIN_NUMEL:
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


@torch.no_grad()
def _power_iteration_sigma_(
    matrix: torch.Tensor, u: torch.Tensor, v: torch.Tensor, n_iterations: int, eps: float
) -> torch.Tensor:
    """torch's power steps in place on u, v; return sigma = u^T W v' = ||W^T u|| from the last.

    The same ops as ``F.normalize(..., out=)``, so u and v get torch's values bit for bit; the
    norm of the last W^T u is kept instead of recomputing u^T W v with another pass over W.
    """
    for _ in range(n_iterations):
        F.normalize(torch.mv(matrix, v), dim=0, eps=eps, out=u)
        t = torch.mv(matrix.t(), u)
        norm = torch.linalg.vector_norm(t)
        denominator = norm.clamp_min(eps)
        torch.div(t, denominator.expand_as(t), out=v)
    # u^T W v' = ||t||^2 / max(||t||, eps): equal to ||t|| unless W^T u vanishes.
    return norm * (norm / denominator)


def _rank_one_shape(u: torch.Tensor, v: torch.Tensor, shape: torch.Size, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """u and v reshaped so that ``u * v`` broadcasts to ``shape`` as u v^T laid out like W."""
    rest = [s for d, s in enumerate(shape) if d != dim]
    u_shape = [1] * len(shape)
    u_shape[dim] = shape[dim]
    return u.view(u_shape), v.view(rest).unsqueeze(dim)


class _SpectralDivide(torch.autograd.Function):
    """W / s(sigma) with sigma = u^T W v (u, v constant); s = sigma, or max(1, sigma / c)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,
        sigma: torch.Tensor,
        u: torch.Tensor,
        v: torch.Tensor,
        dim: int,
        coeff: float | None,
    ) -> torch.Tensor:
        scale = sigma if coeff is None else torch.clamp(sigma / coeff, min=1.0)
        ctx.save_for_backward(weight, sigma, scale, u, v)
        ctx.dim = dim
        ctx.coeff = coeff
        return weight / scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
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
                scalars.append((sigma / ctx.coeff >= 1.0).to(sigma.dtype))
            inner_f, scale_f, *active = torch.stack(scalars).tolist()
            slope_f = 1.0 if ctx.coeff is None else active[0] / ctx.coeff
            out = torch.addr(grad.reshape(grad.shape[0], -1), u, v, beta=1.0 / scale_f,
                             alpha=-inner_f * slope_f / (scale_f * scale_f))
            return out.view(grad.shape), None, None, None, None, None
        slope = 1.0 if ctx.coeff is None else ((sigma / ctx.coeff) >= 1.0).to(sigma.dtype) / ctx.coeff
        coef = inner * slope / (scale * scale)
        u_w, v_w = _rank_one_shape(u * -coef, v, grad.shape, ctx.dim)
        out = grad / scale
        out.addcmul_(u_w, v_w)
        return out, None, None, None, None, None


def _reference_grad(
    weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int, coeff: float | None, grad: torch.Tensor
) -> torch.Tensor:
    with torch.enable_grad():
        matrix = weight if dim == 0 else weight.movedim(dim, 0)
        sigma = torch.vdot(u, torch.mv(matrix.flatten(1), v))
        scale = sigma if coeff is None else torch.clamp(sigma / coeff, min=1.0)
        (result,) = torch.autograd.grad(weight / scale, weight, grad, create_graph=True)
    return result


def spectral_normalize(
    weight: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    dim: int,
    eps: float,
    n_power_iterations: int,
    coeff: float | None,
    training: bool,
) -> torch.Tensor:
    """W / sigma (or W / max(1, sigma / coeff)) with the fused backward; u, v updated in place.

    In training mode ``n_power_iterations`` power steps run on the buffers u, v first, as in
    torch; in eval mode sigma = u^T W v from the stored vectors. Requires
    :func:`spectral_fast_ok`.

    Example:
        >>> import torch
        >>> w = torch.randn(6, 4, dtype=torch.float64)
        >>> u = torch.nn.functional.normalize(torch.randn(6, dtype=torch.float64), dim=0)
        >>> v = torch.nn.functional.normalize(torch.randn(4, dtype=torch.float64), dim=0)
        >>> out = spectral_normalize(w, u, v, dim=0, eps=1e-12, n_power_iterations=200,
        ...                          coeff=None, training=True)
        >>> round(torch.linalg.matrix_norm(out, ord=2).item(), 6)
        1.0
    """
    detached = weight.detach()
    matrix = (detached if dim == 0 else detached.movedim(dim, 0)).flatten(1)
    if training:
        sigma = _power_iteration_sigma_(matrix, u, v, n_power_iterations, eps)
    else:
        with torch.no_grad():
            sigma = torch.vdot(u, torch.mv(matrix, v))
    # Clones, as torch makes: a second forward in the same step updates u, v in place, and
    # this forward's backward must still see the vectors it used.
    u_used = u.clone(memory_format=torch.contiguous_format)
    v_used = v.clone(memory_format=torch.contiguous_format)
    return _SpectralDivide.apply(weight, sigma, u_used, v_used, dim, coeff)
