"""Scale a layer's activations instead of materializing its normalized weight (a fast path).

Weight norm with one g per channel, and spectral norm, rescale the raw weight V along one axis
(or as a whole): W = V diag(s), s = g / ||v|| per channel, or s = 1 / sigma. A linear layer or
convolution is linear in its weight, so the normalized layer is the raw layer with its output
(or input) channels rescaled:

    output channels:  y = op(x, V) * s + b        (Linear, Conv: dim=0; ConvTranspose: dim=1)
    input channels:   y = op(x * s, V) + b        (Linear: dim=1; ConvTranspose: dim=0)

(Salimans & Kingma 2016, section 2.1, compute weight norm this way.) No normalized weight is
written, and the backward needs no weight-sized temporaries: with the batch-sized reduction
<dL/dy, op(x, V)> per channel, the whole gradient of V is one GEMM plus one term along V:

    weight norm:   dL/dV = op_V^T(dL/dy * s) + c V,        c = -g <dL/dy, y0> / ||v||^3
    spectral norm: dL/dV = op_V^T(dL/dy / sigma) + c u v^T, c = -<dL/dy, y0> / sigma^2

(for a Linear layer the rank-one term rides in the same GEMM as one extra row). This moves
fewer bytes than materializing W when the scaled activation is much smaller than the weight, so
the side is chosen per call: the smaller of the allowed sides, if it has at most a quarter of
the weight's elements and the weight is large enough (:data:`MIN_WEIGHT_NUMEL`); otherwise the
layer runs its usual forward (and spectral norm its fused W / sigma path).

Taken only with :func:`paranorm.fast_paths` on, for a ``weight`` that carries exactly one
paranorm normalization that is a scale of its raw weight (its
:meth:`~paranorm._normalization.Normalization.scale_form`: weight norm, "reshape" spectral norm), on an exact ``nn.Linear``/``ConvNd``/
``ConvTransposeNd`` (never a subclass with its own forward), float32/float64 outside autocast,
plain tensors (not DTensor), batched input, zero padding mode, outside
:func:`paranorm.normalize_once`, torch.func transforms, forward-mode AD and jit tracing. The module keeps its class, state_dict and ``module.weight``
(still the normalized weight when read); forward hooks run as usual.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .._normalization import Normalization, ScaleForm, originals
from .._sigma.layer import CONV_TRANSPOSE, LINEAR, OPERATOR_LAYERS
from .._sigma.matrix import (
    rank_one_shape,
    reshape_sigma,
    soft_scale,
    soft_scale_active,
    weight_to_matrix,
)
from .._torch_compat import (
    conv_transpose_output_padding,
    parametrize_cache_active,
    reference_graph_needed,
    set_parametrized_forward,
)
from . import switch

__all__ = ["ACTIVATION_RATIO", "MIN_WEIGHT_NUMEL", "install_scaled_forward"]


#: The scaled forward is taken where the scaled activation has at most 1/ACTIVATION_RATIO of
#: the weight's elements (measured, CPU: Conv1d 256ch k5 on 4x256, activation 0.8 of the
#: weight, ran 1.18x slower than torch's path; at 1/8 and below it wins)...
ACTIVATION_RATIO = 4
#: ...and the weight has at least this many elements, per (norm, layer family); inf: never.
#: Measured on CPU (torch 2.13, 2 threads), against torch's materialized path:
#: - weight norm, Linear: from 1024x4096 up, 0.5-0.9x torch's step and half its peak memory;
#:   at 1024x1024 even, within this machine's noise (0.75-1.11x); below, the dozen small ops of
#:   the scaled backward cost more dispatch time than torch's two fused kernels;
#: - weight norm, convolutions: never; the activation-sized ops and their dispatch, run between
#:   two big convolutions, cost more than torch's two fused kernels on a small kernel tensor
#:   (Conv2d 256ch 16x16: 1.05-1.10x torch's step; Conv1d 512ch k7: 0.97-0.99x);
#: - spectral norm: wins from 256x256 up, Linear and convolutions alike.
MIN_WEIGHT_NUMEL: dict[tuple[str, str], float] = {
    ("weight", "linear"): 1 << 21,
    ("weight", "conv"): math.inf,
    ("spectral", "linear"): 1 << 16,
    ("spectral", "conv"): 1 << 16,
}


class _Plan(NamedTuple):
    """Everything static about one scaled forward (Python values only)."""

    conv: bool  # aten.convolution, else F.linear
    transposed: bool
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int
    side: str  # "in" or "out": which activation is scaled
    spectral: bool  # s = 1 / scale(sigma), else weight norm's g / ||v||
    per_channel: bool  # s is one value per channel of the scaled activation, else 0-dim
    dim: int | None  # weight norm's kept axis (None: whole tensor); spectral norm's matrix axis
    norm_dims: tuple[int, ...]  # the axes of V that ||v|| sums over
    act_shape: tuple[int, ...]  # a channel vector reshaped to broadcast over an activation
    eps: float
    coeff: float | None


def _op(plan: _Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if not plan.conv:
        return F.linear(x, weight, bias)
    return torch.ops.aten.convolution(
        x, weight, bias, plan.stride, plan.padding, plan.dilation, plan.transposed,
        plan.output_padding, plan.groups,
    )


def _channel_dot(a: torch.Tensor, b: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """sum(a * b) over every axis but the channel one (over all of them for a 0-dim s)."""
    if not plan.per_channel:
        return torch.vdot(a.reshape(-1), b.reshape(-1))
    if not plan.conv:
        return torch.linalg.vecdot(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=0)
    return (a * b).sum([0, *range(2, a.ndim)])


def _bias_sum(grad_y: torch.Tensor, plan: _Plan) -> torch.Tensor:
    if not plan.conv:
        return grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
    return grad_y.sum([0, *range(2, grad_y.ndim)])


def _weight_norm_scale(plan: _Plan, g: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s = g / max(||v||, eps), ||v||), both shaped like g."""
    norm = torch.linalg.vector_norm(v, dim=plan.norm_dims, keepdim=plan.dim is not None)
    return g / (norm.clamp_min(plan.eps) if plan.eps else norm), norm


def _spectral_scale(plan: _Plan, sigma: torch.Tensor) -> torch.Tensor:
    """1 / sigma, or 1 / max(1, sigma / coeff)."""
    return soft_scale(sigma, plan.coeff).reciprocal()


def _scaled_values(
    plan: _Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, y0 = op(x, V) where the output is scaled); ``s`` as computed (shaped like g)."""
    s_act = s.reshape(plan.act_shape) if plan.per_channel else s
    if plan.side == "in":
        return _op(plan, x * s_act, weight, bias), None
    y0 = _op(plan, x, weight, None)
    if bias is None:
        return y0 * s_act, y0
    return torch.addcmul(bias.reshape(plan.act_shape) if plan.conv else bias, y0, s_act), y0


def _reference(
    plan: _Plan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    g: torch.Tensor | None, u: torch.Tensor | None, v: torch.Tensor | None,
) -> torch.Tensor:
    """op(x, W(V)) + b with the weight materialized, on autograd (for double backward)."""
    if plan.spectral:
        assert u is not None and v is not None
        matrix = weight_to_matrix(weight, plan.dim or 0)
        normalized = weight * _spectral_scale(plan, reshape_sigma(matrix, u, v))
    else:
        assert g is not None
        normalized = weight * _weight_norm_scale(plan, g, weight)[0]
    return _op(plan, x, normalized, bias)


class _ScaledLayer(torch.autograd.Function):
    """op(x, V) with its input or output channels scaled by s(V, g) (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        g: torch.Tensor | None,
        sigma: torch.Tensor | None,
        u: torch.Tensor | None,
        v: torch.Tensor | None,
        plan: _Plan,
    ) -> torch.Tensor:
        if plan.spectral:
            assert sigma is not None
            s, norm = _spectral_scale(plan, sigma), None
        else:
            assert g is not None
            s, norm = _weight_norm_scale(plan, g, weight)
        y, y0 = _scaled_values(plan, x, weight, bias, s)
        ctx.plan = plan
        ctx.save_for_backward(x, weight, bias, g, sigma, u, v, s, norm, y0)
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: _Plan = ctx.plan
        x, weight, bias, g, sigma, u, v, s, norm, y0 = ctx.saved_tensors
        need_x, need_w, need_b, need_g = ctx.needs_input_grad[:4]
        if torch.is_grad_enabled():
            # create_graph=True (e.g. a gradient penalty): differentiate the materialized graph,
            # so that second derivatives are exact.
            inputs = [t for t, n in zip((x, weight, bias, g), (need_x, need_w, need_b, need_g), strict=True) if n]
            with torch.enable_grad():
                y = _reference(plan, x, weight, bias, g, u, v)
                grads = iter(torch.autograd.grad(y, inputs, grad_y, create_graph=True))
            return tuple(next(grads) if n else None for n in (need_x, need_w, need_b, need_g)) + (None,) * 4
        s_act = s.reshape(plan.act_shape) if plan.per_channel else s
        grad_b = _bias_sum(grad_y, plan) if need_b else None
        if plan.side == "out":
            grad_op, op_input = grad_y * s_act, x
            grad_s = _channel_dot(grad_y, y0, plan)
        else:
            grad_op, op_input = grad_y, x * s_act
        # Linear: dL/dx_op first (for an input-side s), dL/dV last, in one GEMM with the
        # rank-one term; convolution: both from convolution_backward, the s-term added after.
        grad_in: Any = None
        grad_w: Any = None
        if plan.conv:
            grad_in, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_op, op_input, weight, None, plan.stride, plan.padding, plan.dilation,
                plan.transposed, plan.output_padding, plan.groups,
                [need_x or plan.side == "in", True, False],
            )
        elif need_x or plan.side == "in":
            grad_in = grad_op @ weight
        if plan.side == "in":
            grad_s = _channel_dot(grad_in, x, plan)
        grad_x = None
        if need_x:
            grad_x = grad_in if plan.side == "out" else grad_in * s_act
        grad_g = None
        if plan.spectral:
            # s = 1 / scale(sigma), sigma = u^T V v: dL/dsigma = -dL/ds s^2 dscale/dsigma (torch's
            # clamp passes the gradient at equality too).
            grad_sigma = grad_s * s * s
            if plan.coeff is None:
                grad_sigma = -grad_sigma
            else:
                grad_sigma = grad_sigma * (soft_scale_active(sigma, plan.coeff) / -plan.coeff)
            if not plan.conv:  # u v^T laid out like V, as one more row of the GEMM
                a, b = (u * grad_sigma, v) if plan.dim == 0 else (v * grad_sigma, u)
                grad_op2d = grad_op.reshape(-1, grad_op.shape[-1])
                in2d = op_input.reshape(-1, op_input.shape[-1])
                grad_w = torch.cat([grad_op2d, a[None]]).t() @ torch.cat([in2d, b[None]])
            else:
                u_w, v_w = rank_one_shape(u * grad_sigma, v, weight.shape, plan.dim or 0)
                grad_w.addcmul_(u_w, v_w)
        else:
            # s = g / ||v||: ds/dv = -g / ||v||^2 v / ||v||, zero where the eps clamp holds.
            grad_g = grad_s.view_as(s) / (norm.clamp_min(plan.eps) if plan.eps else norm)
            coef = grad_g * s / norm
            if plan.eps:
                coef = torch.where(norm >= plan.eps, coef, torch.zeros_like(coef))
            if not plan.conv:
                grad_op2d = grad_op.reshape(-1, grad_op.shape[-1])
                grad_w = grad_op2d.t() @ op_input.reshape(-1, op_input.shape[-1])
            grad_w.addcmul_(weight, coef, value=-1.0)
        return grad_x, (grad_w if need_w else None), grad_b, (grad_g if need_g else None), None, None, None, None


def _side(module: nn.Module, dim: int | None) -> str | None:
    """Which activation a scale along weight axis ``dim`` applies to ("any": a 0-dim scale)."""
    if dim is None:
        return "any"
    first, second = ("in", "out") if isinstance(module, CONV_TRANSPOSE) else ("out", "in")
    if dim == 0:
        return first
    if dim == 1 and (isinstance(module, LINEAR) or module.groups == 1):
        return second
    return None  # an axis of the kernel, or within a group


def _conv_output(module: Any, x: torch.Tensor, weight: torch.Tensor, output_size: Any) -> tuple[tuple[int, ...], int]:
    """(output_padding, output numel) of the convolution ``module`` on ``x``."""
    spatial = weight.ndim - 2
    transposed = isinstance(module, CONV_TRANSPOSE)
    output_padding: tuple[int, ...] = tuple(module.output_padding) if transposed else (0,) * spatial
    if transposed and output_size is not None:
        output_padding = conv_transpose_output_padding(module, x, output_size, spatial)
    numel = x.shape[0] * (weight.shape[1] * module.groups if transposed else weight.shape[0])
    for i in range(spatial):
        length, k = x.shape[2 + i], weight.shape[2 + i]
        s, p, d = module.stride[i], module.padding[i], module.dilation[i]
        if transposed:
            numel *= (length - 1) * s - 2 * p + d * (k - 1) + output_padding[i] + 1
        else:
            numel *= (length + 2 * p - d * (k - 1) - 1) // s + 1
    return output_padding, numel


def _make_plan(module: Any, form: ScaleForm, x: torch.Tensor, output_size: Any) -> _Plan | None:
    """The plan for this call, or None where the scaled forward does not apply or not pay."""
    spectral = form.kind == "spectral_norm"
    weight = form.raw
    if weight.dtype not in (torch.float32, torch.float64) or type(weight) not in (torch.Tensor, nn.Parameter):
        return None
    if type(x) is not torch.Tensor or x.dtype != weight.dtype:
        return None
    side = "any" if spectral else _side(module, form.dim)
    if side is None:
        return None
    conv = not isinstance(module, LINEAR)
    output_padding: tuple[int, ...] = ()
    if conv:
        if module.padding_mode != "zeros" or isinstance(module.padding, str) or x.ndim != weight.ndim:
            return None  # padded by hand in the layer's forward, or an unbatched input
        output_padding, out_numel = _conv_output(module, x, weight, output_size)
    elif x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        return None  # let F.linear raise its own error
    else:
        out_numel = x.numel() // weight.shape[1] * weight.shape[0]
    # Scaling the input needs dL/dx for <dL/dx_s, x>: free when x requires grad, a whole extra
    # backward GEMM or convolution when it does not.
    sizes = {"out": out_numel, "in": x.numel() if x.requires_grad else math.inf}
    if side == "any":
        side = min(sizes, key=sizes.__getitem__)
    if sizes[side] * ACTIVATION_RATIO > weight.numel():
        return None  # materializing W moves fewer bytes (the weight's size is checked before)
    return _Plan(
        conv=conv,
        transposed=isinstance(module, CONV_TRANSPOSE),
        stride=tuple(module.stride) if conv else (),
        padding=tuple(module.padding) if conv else (),
        dilation=tuple(module.dilation) if conv else (),
        output_padding=output_padding,
        groups=module.groups if conv else 1,
        side=side,
        spectral=spectral,
        per_channel=not spectral and form.dim is not None,
        dim=form.dim,
        norm_dims=tuple(d for d in range(weight.ndim) if d != form.dim),
        act_shape=(-1,) + (1,) * (x.ndim - 2) if conv else (-1,),
        eps=form.eps,
        coeff=form.coeff,
    )


#: The last plan of each parametrization, with the key it was made for: the plan depends only
#: on the key (and on the module's fixed geometry).
_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[Any, _Plan | None]] = weakref.WeakKeyDictionary()


def _scale_form(module: nn.Module) -> tuple[Normalization, ScaleForm] | None:
    """The one paranorm normalization of ``module.weight`` and its scale form, if it has one."""
    params: Any = module.parametrizations
    if "weight" not in params:
        return None
    plist = params["weight"]
    if len(plist) != 1 or not isinstance(plist[0], Normalization):
        return None
    form = plist[0].scale_form(*originals(plist))
    return None if form is None else (plist[0], form)


def _plan_for(p: Normalization, module: nn.Module, form: ScaleForm, x: torch.Tensor, output_size: Any) -> _Plan | None:
    weight = form.raw
    key = (
        type(x), x.shape, x.dtype, x.requires_grad, type(weight), weight.dtype, weight.shape,
        output_size, form.dim, form.eps, form.coeff,
    )
    if torch.compiler.is_compiling():
        return _make_plan(module, form, x, output_size)
    cached = _PLANS.get(p)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = _make_plan(module, form, x, output_size)
    _PLANS[p] = (key, plan)
    return plan


def _scaled_call(module: Any, x: torch.Tensor, output_size: Any) -> torch.Tensor | None:
    """The scaled forward of ``module`` on ``x``, or None where it does not apply."""
    found = _scale_form(module)
    if found is None:
        return None
    p, form = found
    if reference_graph_needed():  # (first: under a trace, numel() is a traced value)
        return None
    # Then the test that rejects small layers for good, cheaply: the rest costs microseconds.
    family = "linear" if isinstance(module, LINEAR) else "conv"
    norm = "spectral" if form.kind == "spectral_norm" else "weight"
    if form.raw.numel() < MIN_WEIGHT_NUMEL[norm, family]:
        return None
    try:
        if torch.is_autocast_enabled(x.device.type):
            return None
    except (RuntimeError, AttributeError):  # not a tensor, or a device type autocast does not know
        return None
    plan = _plan_for(p, module, form, x, output_size)
    if plan is None:
        return None
    weight, bias, g = form.raw, module.bias, form.g
    if bias is not None and (type(bias) not in (torch.Tensor, nn.Parameter) or bias.dtype != weight.dtype):
        return None
    sigma = u = v = None
    if form.kind == "spectral_norm":
        assert form.power_step is not None
        sigma, u, v = form.power_step(weight)
    elif g is None or g.dtype != weight.dtype or type(g) not in (torch.Tensor, nn.Parameter):
        return None
    return _ScaledLayer.apply(x, weight, bias, g, sigma, u, v, plan)


def install_scaled_forward(module: nn.Module) -> None:
    """Give a freshly normalized exact Linear/Conv/ConvTranspose layer the scaled forward.

    Set on the class torch's parametrize made for this module (see
    :func:`paranorm._torch_compat.set_parametrized_forward`). Anywhere the scaled forward does
    not apply, it calls the original class's forward.
    """
    base: Any = parametrize.type_before_parametrizations(module)
    if base not in OPERATOR_LAYERS:
        return

    if issubclass(base, CONV_TRANSPOSE):
        def forward(self: nn.Module, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
            if switch.enabled() and not parametrize_cache_active():
                out = _scaled_call(self, input, output_size)
                if out is not None:
                    return out
            return base.forward(self, input, output_size)
    else:
        def forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
            if switch.enabled() and not parametrize_cache_active():
                out = _scaled_call(self, input, None)
                if out is not None:
                    return out
            return base.forward(self, input)

    set_parametrized_forward(module, forward)
