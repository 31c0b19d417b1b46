"""Convert the normalized tensors of a state_dict between layouts, and compute effective weights.

Pure functions over state dicts (no module needed), for loaders that rename keys themselves
(Hugging Face, HiFi-GAN and EnCodec checkpoints) and for ``paranorm convert``. The plain layout
is the effective weight: g v / ||v|| (Salimans & Kingma 2016) or W / (u^T W v) (Miyato et al.
2018), computed as torch computes them in eval mode, bit for bit, wherever torch's float
computation is correct. Where it is not (the squares of ||v|| overflow or underflow, u^T W v
overflows or is lost to underflow, the quotient overflows), the weight is computed in float64
on operands scaled by powers of two (exact) and cast back; a weight that is 0/0 (a zero slice
of v, u^T W v = 0) or past the largest number of the stored dtype is refused, never written
as NaN or inf. Tensors holding NaN or inf are refused where a weight is computed from them;
a change of layout (a renaming) passes them through unchanged, with a CheckpointWarning.
Empty tensors give empty weights of the right shape (torch's kernel would divide by zero).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .._errors import CheckpointError, entry_point
from .._normalization import Kind
from .._sigma.checks import unsupported_reason
from .._sigma.matrix import weight_to_matrix
from .._sigma.scale import accumulation_dtype, plain_norm_range, pow2_floor, pow2_scale
from .._torch_compat import weight_norm_kernel
from .._validate import weight_norm_ratio_problem
from .detect import Entry, Group, candidate_dims, groups, wn_dims
from .layouts import LAYOUTS, Layout, legacy_keys, parametrization_keys, solve_version0_v

__all__ = [
    "CheckpointWarning",
    "Effective",
    "ResolvedDim",
    "convert",
    "effective_weight",
    "kept_as_is",
    "resolve_sn_dim",
]

#: Cosine above which u = W v / |W v| (or v = W^T u / |W^T u|) counts as holding for a dim,
#: and below which a rival dim must stay, before a spectral norm's dim is read from u and v.
_HOLDS, _RIVAL = 0.9999, 0.999


class CheckpointWarning(UserWarning):
    """A conversion derived something the checkpoint did not store (u, v, g, a dim)."""


@dataclass(frozen=True)
class ResolvedDim:
    """A spectral norm's dim and how it was found: "given" (by the caller), "shapes" (the only
    axis that fits), or "u and v" (the power-method invariant singles it out; ``detail`` has
    the evidence)."""

    dim: int
    source: str
    detail: str = ""


@dataclass(frozen=True)
class Effective:
    """The eval-mode weight of a group, the spectral dim it used, and what was derived."""

    value: torch.Tensor
    dim: ResolvedDim | None = None
    notes: list[str] = field(default_factory=list)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) in float64, NaN when a or b holds NaN or inf (no evidence either way)."""
    a, b = a / pow2_scale(a), b / pow2_scale(b)  # exact; no overflow in the norms
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _dim_hint(base: str) -> str:
    return (
        f"Pass dims={{{base!r}: DIM}} (torch's default: 1 for ConvTranspose, 0 otherwise; "
        f"CLI: --dim {base}=DIM)."
    )


def resolve_sn_dim(group: Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> ResolvedDim:
    """The spectral norm's dim: given, read from the shapes, or from the power-method invariant."""
    weight, u = state_dict[group.roles["weight"]], state_dict[group.roles["u"]]
    candidates = candidate_dims(group, state_dict)
    if not candidates:
        raise CheckpointError(
            f"{group.base!r}: spectral-norm u has {u.numel()} entries, which matches no axis of "
            f"the weight {tuple(weight.shape)}. The checkpoint is inconsistent."
        )
    if group.base in dims:
        dim = dims[group.base]
        if dim is not None and dim < 0 and weight.ndim:
            dim %= weight.ndim
        if dim not in candidates:
            raise CheckpointError(
                f"dims[{group.base!r}]={dims[group.base]} does not fit the stored shapes (weight "
                f"{tuple(weight.shape)}, u of {u.numel()}); possible dims: {list(candidates)}."
            )
        return ResolvedDim(int(dim), "given")  # type: ignore[arg-type]
    if len(candidates) == 1 or u.numel() == 1:
        # With one row, every candidate axis has size 1: moving it first changes no order.
        return ResolvedDim(int(candidates[0]), "shapes")  # type: ignore[arg-type]
    if "v" not in group.roles or weight.device.type == "meta":
        raise CheckpointError(
            f"{group.base!r}: the spectral norm's dim is ambiguous from the shapes (any of "
            f"{list(candidates)} for weight {tuple(weight.shape)}). {_dim_hint(group.base)}"
        )
    # The power method leaves u = W v/|W v| (legacy's last step) or v = W^T u/|W^T u|
    # (parametrizations' last step) for the true dim; a wrong reshape breaks both.
    v = state_dict[group.roles["v"]].double()
    unit = weight.detach().double()
    unit = unit / pow2_scale(unit)  # exact, and W v cannot overflow
    scores = {}
    for dim in candidates:
        matrix = weight_to_matrix(unit, int(dim))  # type: ignore[arg-type]
        scores[dim] = max(_cosine(u.double(), matrix @ v), _cosine(v, matrix.t() @ u.double()))
    # A NaN cosine (NaN or inf in W, u or v) is no evidence: it ranks last and blocks a choice.
    ranked = sorted(scores, key=lambda d: -scores[d] if math.isfinite(scores[d]) else math.inf)
    best, rival = ranked[0], ranked[1]
    unreadable = not all(math.isfinite(s) for s in scores.values())
    if unreadable or scores[best] < _HOLDS or scores[rival] > _RIVAL:
        found = ", ".join(f"dim {d}: {scores[d]:.4f}" for d in ranked)
        why = " (W, u or v holds NaN or inf)" if unreadable else ""
        raise CheckpointError(
            f"{group.base!r}: the spectral norm's dim is ambiguous from the shapes (any of "
            f"{list(candidates)}), and u, v do not single one out (cosine of u with W v: "
            f"{found}{why}). {_dim_hint(group.base)}"
        )
    detail = (
        f"u = W v/|W v| holds to cosine {scores[best]:.6f} for dim {best}, {scores[rival]:.4f} "
        f"for dim {rival}"
    )
    return ResolvedDim(int(best), "u and v", detail)  # type: ignore[arg-type]


def _dim_note(group: Group, resolved: ResolvedDim) -> list[str]:
    if resolved.source != "u and v":
        return []
    return [
        f"{group.base!r}: spectral norm dim {resolved.dim} read from u and v ({resolved.detail}); "
        f"pass dims={{{group.base!r}: {resolved.dim}}} (paranorm convert: --dim "
        f"{group.base}={resolved.dim}) to state it."
    ]


def _sn_v(group: Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> tuple[torch.Tensor | None, list[str]]:
    """v of a spectral-norm group (stored, or solved from a version-0 entry as torch does)."""
    if "stored" not in group.roles:
        return (state_dict[group.roles["v"]] if "v" in group.roles else None), []
    weight = state_dict[group.roles["weight"]]
    if weight.ndim <= 1:
        return torch.ones(1, dtype=weight.dtype, device=weight.device), []
    _check_readable(group, state_dict, ("weight", "stored", "u"))
    _check_finite(group, state_dict, ("weight", "stored", "u"))
    if weight.numel() == 0:
        raise CheckpointError(
            f"{group.base!r}: a version-0 legacy spectral norm of an empty weight "
            f"{tuple(weight.shape)} has no v to derive; drop the layer, then convert."
        )
    resolved = resolve_sn_dim(group, state_dict, dims)
    note = (
        f"{group.base!r}: version-0 legacy spectral norm; v derived from the stored W, W_orig "
        "and u as torch's loader does (least squares, rescaled so that u^T W_orig v = sigma)."
    )
    stored, u = state_dict[group.roles["stored"]], state_dict[group.roles["u"]]
    low, high = plain_norm_range(weight.dtype, weight.numel())
    top = float(weight.abs().max()) if weight.device.type != "meta" else 1.0
    v = None
    if low <= top <= high:  # torch's own loader's arithmetic, as it would compute it
        try:
            v = solve_version0_v(weight, stored, u, resolved.dim)
        except torch.linalg.LinAlgError:
            v = None
    if v is None or (v.device.type != "meta" and not _all_finite(v)):
        # On W / c in float64 instead (sigma = mean(W_orig / W) is unchanged, and v scales by
        # c, divided out): exact in c, and nothing overflows.
        scale = pow2_scale(weight.detach().double())
        try:
            v = solve_version0_v(weight.double() / scale, stored.double() / scale, u.double(), resolved.dim)
            v = (v / scale).to(u.dtype)
        except torch.linalg.LinAlgError:
            v = torch.full_like(u, math.nan)
    if v.device.type != "meta" and not _all_finite(v):
        raise CheckpointError(
            f"{group.base!r}: the v implied by this version-0 legacy spectral norm is not finite "
            f"(its stored {group.roles['stored']!r} has zeros where {group.roles['weight']!r} "
            "has not, or u is orthogonal to W). Convert it with torch's own loader instead: load "
            "it into a model with torch.nn.utils.spectral_norm, then save its state_dict."
        )
    return v, [*_dim_note(group, resolved), note]


def _check_readable(group: Group, state_dict: Mapping[str, Any], roles: tuple[str, ...]) -> None:
    """Raise unless the tensors of ``roles`` are dense float16/bfloat16/float32/float64 ones
    (meta passes: the weight's shape is all that is asked of it)."""
    for role in roles:
        key = group.roles[role]
        reason = unsupported_reason(state_dict[key], allow_meta=True)
        if reason is not None:
            raise CheckpointError(f"{group.base!r}: {key!r} {reason}.")


def _non_finite(t: torch.Tensor) -> int:
    """How many entries of ``t`` are NaN or infinite (0 for a meta tensor, which has none)."""
    if t.device.type == "meta" or t.numel() == 0:
        return 0
    return int((~torch.isfinite(t)).sum())


def _check_finite(group: Group, state_dict: Mapping[str, Any], roles: tuple[str, ...]) -> None:
    """Raise if a tensor the plain weight is computed from holds NaN or inf."""
    for role in roles:
        key = group.roles[role]
        bad = _non_finite(state_dict[key])
        if bad:
            raise CheckpointError(
                f"{group.base!r}: {key!r} holds {bad} NaN or infinite entries, so its plain "
                "weight would not be a number there. Restore finite values (e.g. from an "
                "earlier checkpoint), or keep the layer in a normalized layout."
            )


def _slice_max(v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """max |v| over every axis but ``dim`` (kept-dim shape, like g), or over all of v."""
    magnitude = v.abs()
    if dim is None:
        return magnitude.amax().reshape([1] * v.ndim)
    others = [d for d in range(v.ndim) if d != dim]
    return magnitude.amax(dim=others, keepdim=True) if others else magnitude


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _storable(base: str, value: torch.Tensor, dtype: torch.dtype, what: str = "its plain weight") -> torch.Tensor:
    """``value`` (float64) cast to ``dtype``, or an error if that makes it infinite."""
    out = value.to(dtype)
    if not _all_finite(out):
        peak = float(value.abs().amax())
        raise CheckpointError(
            f"{base!r}: {what} reaches {peak:.4g}, past the largest {dtype} "
            f"({torch.finfo(dtype).max:.4g}), so it cannot be stored as {dtype}. Cast the "
            "checkpoint's tensors to float64 first, or keep the layer in a normalized layout."
        )
    return out


def _times_pow2(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """x 2^exponent in float64, in factors a float64 holds (each product exact unless it
    over- or underflows; the factors all scale one way, so none overflows before the last)."""
    while exponent:
        step = max(-1000, min(1000, exponent))
        x = x * 2.0**step
        exponent -= step
    return x


def _exponent(power_of_two: torch.Tensor) -> int:
    """k for a 0-dim tensor holding exactly 2^k."""
    return math.frexp(float(power_of_two))[1] - 1


def _weight_norm_in_torch_range(g: torch.Tensor, v: torch.Tensor, dim: int | None) -> bool:
    """Whether torch's kernel squares v's entries without overflow or significant underflow
    (:func:`paranorm._sigma.scale.plain_norm_range`), so that its weight is correct."""
    if g.dtype != v.dtype:
        return False  # torch's kernel takes one dtype; the module would cast on load
    top = _slice_max(v, dim)
    low, high = plain_norm_range(v.dtype, v.numel() // max(top.numel(), 1))
    if not (bool(top.min() >= low) and bool(top.max() <= high)):
        return False
    # and g / ||v||, which the kernel forms first, neither under- nor overflows
    return weight_norm_ratio_problem(g, v, dim) is None


def _weight_norm_float64(group: Group, g: torch.Tensor, v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """g v / ||v|| in float64 with each slice of v divided by a power of two near its largest
    entry (exact), so that ||v|| neither overflows nor underflows; cast to v's dtype."""
    v64 = v.detach().double()
    top = _slice_max(v64, dim)
    zero = top == 0
    if bool(zero.any()):
        where = "the whole tensor" if dim is None else f"{int(zero.sum())} slice(s) along dim={dim}"
        raise CheckpointError(
            f"{group.base!r}: {group.roles['v']!r} is all zeros over {where}, so g v/||v|| is "
            "0/0 there (torch computes NaN). A zero direction has no weight-normalized value: "
            "restore the layer's weights from an earlier checkpoint, or drop the layer."
        )
    unit = v64 / pow2_floor(top)
    norm = torch.norm_except_dim(unit, 2, -1 if dim is None else dim)
    return _storable(group.base, unit / norm * g.detach().double(), v.dtype)


def weight_norm_plain(group: Group, g: torch.Tensor, v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """g v / ||v||: torch's kernel bit for bit where it is correct (:func:`_weight_norm_in_torch_range`,
    and a finite result), else :func:`_weight_norm_float64`."""
    if v.numel() == 0:
        return v.detach().clone()  # torch._weight_norm divides by zero on an empty tensor
    torch_dim = -1 if dim is None else dim
    if v.device.type == "meta":
        return weight_norm_kernel(v, g, torch_dim)  # shapes only
    if _weight_norm_in_torch_range(g, v, dim):
        out = weight_norm_kernel(v, g, torch_dim)
        if _all_finite(out):
            return out
    return _weight_norm_float64(group, g, v, dim)


def _as_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    # legacy keeps u, v for a 1-D weight too, viewed as a column
    return weight_to_matrix(weight, dim) if weight.ndim > 1 else weight.reshape(-1, 1)


def _spectral_in_torch_range(sigma: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, cols: int) -> bool:
    """Whether torch's u^T W v is correct to rounding: finite (an overflow anywhere makes it
    inf or NaN), and far enough above what underflow can take from it. Each product W_ij v_j
    that underflows is off by at most tiny eps / 2 (tiny of the accumulation dtype), and each
    entry of W v by as much again when rounded to W's dtype, so sigma is off by at most
    ||u||_1 (cols tiny_acc + tiny) eps / 2: it must be at least twice ||u||_1 (cols tiny_acc
    + tiny), for the error to stay within eps of it."""
    if not _all_finite(sigma):
        return False
    tiny = torch.finfo(weight.dtype).tiny
    tiny_acc = torch.finfo(accumulation_dtype(weight.dtype)).tiny
    reach = float(u.detach().double().abs().sum()) * (cols * tiny_acc + tiny)
    return abs(float(sigma)) >= 2.0 * reach


def _spectral_float64(group: Group, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """W / (u^T W v) in float64 on W, u and v each divided by a power of two near its largest
    entry (exact): W / sigma = W_1 / (u_1^T W_1 v_1 c_u c_v), with the powers of two applied
    last as exponents. Refuses sigma = 0 (0/0 or inf)."""
    unit = _as_matrix(weight.detach().double(), dim)
    unit = unit / pow2_scale(unit)
    u64, v64 = u.detach().double(), v.detach().double()
    c_u, c_v = pow2_scale(u64), pow2_scale(v64)
    s = torch.vdot(u64 / c_u, torch.mv(unit, v64 / c_v))
    if float(s) == 0:
        raise CheckpointError(
            f"{group.base!r}: sigma = u^T W v is 0 ({group.roles['u']!r} and "
            f"{group.roles['v']!r} are zero or orthogonal to W), so W / sigma is not a number. "
            "The stored power-iteration vectors are unusable: restore them from an earlier "
            "checkpoint, or load the layer into torch's spectral_norm and run one training "
            "forward to re-estimate them, then save and convert."
        )
    mantissa, exponent = math.frexp(float(s))  # s = 2 mantissa 2^(exponent - 1), exactly
    out = _times_pow2(unit / (2 * mantissa), -(exponent - 1) - _exponent(c_u) - _exponent(c_v))
    return _storable(group.base, out.reshape(weight.shape) if weight.ndim > 1 else out.reshape(-1), weight.dtype)


def spectral_norm_plain(group: Group, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """W / (u^T W v): torch's eval-mode computation bit for bit where it is correct
    (:func:`_spectral_in_torch_range`, and a finite result), else :func:`_spectral_float64`."""
    if weight.numel() == 0:
        return weight.detach().clone()  # W / sigma of an empty weight: empty
    if weight.device.type != "meta" and not weight.dtype == u.dtype == v.dtype:
        return _spectral_float64(group, weight, u, v, dim)
    if weight.ndim > 1:
        sigma = torch.vdot(u, torch.mv(weight_to_matrix(weight, dim), v))
    else:  # legacy keeps u, v for a 1-D weight too, viewed as a column
        sigma = torch.dot(u, weight * v)
    if weight.device.type == "meta":
        return weight / sigma  # shapes only
    cols = weight.numel() // max(weight.shape[dim] if weight.ndim > 1 else weight.numel(), 1)
    if _spectral_in_torch_range(sigma, weight, u, cols):
        out = weight / sigma
        if _all_finite(out):
            return out
    return _spectral_float64(group, weight, u, v, dim)


def effective_weight(group: Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> Effective:
    """The weight the source framework computes in eval mode for a normalized ``group``.

    Bit for bit torch's where its float computation is correct; computed in float64 on
    power-of-two scaled operands where it is not (see the module docstring). Empty tensors
    give an empty weight of the right shape.

    Raises:
        CheckpointError: an inconsistent group, a tensor that is not a dense float tensor
            (int8, complex, float8, sparse), NaN or inf in a tensor the weight is computed
            from, a weight that is 0/0 (a zero slice of v, u^T W v = 0), a weight past the
            largest number of its dtype, or a spectral dim that cannot be read.
    """
    if group.kind == "weight_norm":
        g, v = state_dict[group.roles["g"]], state_dict[group.roles["v"]]
        candidates = wn_dims(g, v)
        if not candidates:
            raise CheckpointError(
                f"{group.base!r}: weight-norm g {tuple(g.shape)} does not fit v {tuple(v.shape)}: "
                "g must be a norm over every axis of v but one (or a scalar). The checkpoint is "
                "inconsistent."
            )
        _check_readable(group, state_dict, ("g", "v"))
        _check_finite(group, state_dict, ("g", "v"))
        # Every candidate gives the same weight: an ambiguous g is all ones in shape, so each
        # candidate axis has size 1 in v and the norm covers all of v either way.
        with torch.no_grad():
            return Effective(weight_norm_plain(group, g, v, candidates[0]))
    if group.kind != "spectral_norm":
        raise CheckpointError(
            f"{group.base!r} carries {group.describe()} (keys {', '.join(group.roles.values())}); "
            "its effective weight needs the parametrization's code, not only the state_dict. "
            "Build the model, call paranorm.fold(model) and save its state_dict instead."
        )
    if "stored" in group.roles:
        _check_readable(group, state_dict, ("stored",))
        _check_finite(group, state_dict, ("stored",))
        return Effective(state_dict[group.roles["stored"]])  # version 0 used the stored W in eval mode
    weight, u, v = (state_dict[group.roles[r]] for r in ("weight", "u", "v"))
    _check_readable(group, state_dict, ("weight", "u", "v"))
    if weight.numel() == 0:
        return Effective(weight.detach().clone())  # empty: every dim gives the same (nothing)
    resolved = resolve_sn_dim(group, state_dict, dims)
    _check_finite(group, state_dict, ("weight", "u", "v"))
    with torch.no_grad():
        value = spectral_norm_plain(group, weight, u, v, resolved.dim)
        return Effective(value, resolved, _dim_note(group, resolved))


def _check_plain_to_normalize(base: str, weight: torch.Tensor) -> None:
    """Raise unless ``weight`` is a dense float tensor with entries, all finite."""
    reason = unsupported_reason(weight, allow_meta=True)
    if reason is not None:
        raise CheckpointError(f"{base!r} {reason}.")
    if weight.numel() == 0:
        raise CheckpointError(
            f"{base!r} is empty (shape {tuple(weight.shape)}): there is nothing to normalize "
            "(and torch's norm kernels divide by zero on it). Leave it plain."
        )
    bad = _non_finite(weight)
    if bad:
        raise CheckpointError(
            f"{base!r} holds {bad} NaN or infinite entries; its norm is not a number. Restore "
            "finite values (e.g. from an earlier checkpoint) before normalizing it."
        )


def _weight_norm_g(base: str, weight: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, bool]:
    """(g = ||w|| over every axis but ``dim``, whether torch's kernel computes it correctly):
    torch's norm_except_dim bit for bit where the squares are in range, else the norm of each
    slice scaled by a power of two in float64, cast back (an error if that overflows)."""
    torch_dim = -1 if dim is None else dim
    if weight.device.type == "meta":
        return torch.norm_except_dim(weight, 2, torch_dim), True
    top = _slice_max(weight, dim)
    low, high = plain_norm_range(weight.dtype, weight.numel() // max(top.numel(), 1))
    nonzero = top[top > 0]
    if nonzero.numel() == 0 or (bool(nonzero.min() >= low) and bool(top.max() <= high)):
        return torch.norm_except_dim(weight, 2, torch_dim), True
    top64 = _slice_max(weight.detach().double(), dim)
    scale = pow2_floor(top64)
    unit_norm = torch.norm_except_dim(weight.detach().double() / scale, 2, torch_dim)
    norm = (unit_norm * scale).reshape(unit_norm.shape)
    return _storable(base, norm, weight.dtype, "its norm g"), False


def _normalize_plain(
    base: str, kind: Kind, weight: torch.Tensor, dims: Mapping[str, int | None]
) -> tuple[dict[str, torch.Tensor], str]:
    """Roles of a plain weight newly normalized, and a note on what was derived."""
    _check_plain_to_normalize(base, weight)
    if kind == "weight_norm":
        dim = dims.get(base, 0)
        if dim is not None and not -weight.ndim <= dim < max(weight.ndim, 1):
            raise CheckpointError(f"dims[{base!r}]={dim} is out of range for weight {tuple(weight.shape)}.")
        torch_dim = -1 if dim is None else dim % max(weight.ndim, 1)
        g, in_range = _weight_norm_g(base, weight, None if dim is None else torch_dim)
        if weight.device.type != "meta" and bool((g == 0).any()):
            raise CheckpointError(
                f"{base!r} has a slice of zero norm along dim={dim}; g v/|v| would be NaN there. "
                "Weight-normalize a non-zero weight, or pick another dim."
            )
        note = (
            f"{base!r}: g = ||w|| derived from the plain weight (dim={dim}"
            f"{'' if base in dims else ', torch default'}); g v/|v| reproduces it."
        )
        if not in_range:
            note += (
                f" Its magnitudes are outside the range in which torch's weight_norm kernel "
                f"squares {weight.dtype} entries correctly: evaluate it in float64."
            )
        return {"g": g, "v": weight}, note
    if weight.ndim > 2 and base not in dims:
        raise CheckpointError(
            f"{base!r}: spectral norm of a {weight.ndim}-D weight needs its dim, which a plain "
            f"tensor does not say (0 for Conv, 1 for ConvTranspose). Pass dims={{{base!r}: DIM}} "
            f"(CLI: --dim {base}=DIM)."
        )
    if weight.device.type == "meta":
        raise CheckpointError(
            f"{base!r}: u and v are derived from the weight's singular vectors, which a meta "
            "tensor does not have. Load the checkpoint to the CPU first."
        )
    dim = dims.get(base, 0) or 0
    if not -max(weight.ndim, 1) <= dim < max(weight.ndim, 1):
        raise CheckpointError(f"dims[{base!r}]={dim} is out of range for weight {tuple(weight.shape)}.")
    if weight.ndim > 1:
        matrix = weight_to_matrix(weight.detach().double(), dim % max(weight.ndim, 1))
    else:
        matrix = weight.double().reshape(-1, 1)
    scale = pow2_scale(matrix)  # the singular vectors of W / 2^k are W's; no overflow in the SVD
    left, values, right = torch.linalg.svd(matrix / scale, full_matrices=False)
    u = F.normalize(left[:, 0], dim=0).to(weight.dtype)
    v = F.normalize(right[0], dim=0).to(weight.dtype)
    note = (
        f"{base!r}: u, v derived as the exact top singular vectors of the plain weight "
        f"(dim={dim}, sigma={float(values[0]) * float(scale):.6g}); the layer computes W / sigma, "
        "which equals the plain weight only when sigma is 1."
    )
    return {"weight": weight, "u": u, "v": v}, note


def _passed_through_notes(group: Group, state_dict: Mapping[str, Any]) -> list[str]:
    """Notes on the tensors of a group kept as they are that hold NaN or inf: a change of
    layout renames keys and computes nothing, so it passes them on, but says so."""
    notes = []
    for key in group.roles.values():
        value = state_dict[key]
        bad = _non_finite(value) if unsupported_reason(value, allow_meta=True) is None else 0
        if bad:
            notes.append(
                f"{group.base!r}: {key!r} holds {bad} NaN or infinite entries, passed through "
                "unchanged (a change of layout only renames keys); a model that loads it computes "
                "a non-finite weight. Restore finite values from an earlier checkpoint."
            )
    return notes


def _emit(kind: Kind, base: str, roles: Mapping[str, torch.Tensor], to: Layout) -> list[tuple[str, torch.Tensor]]:
    keys = legacy_keys(kind, base) if to == "legacy" else parametrization_keys(kind, base)
    return [(keys[role], roles[role]) for role in keys if role in roles]


def _set_version(metadata: dict[str, Any], base: str, version: int | None) -> None:
    prefix, _, name = base.rpartition(".")
    local = metadata.get(prefix)
    if version is None:
        if local and name + ".version" in local.get("spectral_norm", {}):
            local = metadata[prefix] = dict(local)
            local["spectral_norm"] = {k: x for k, x in local["spectral_norm"].items() if k != name + ".version"}
            if not local["spectral_norm"]:
                del local["spectral_norm"]
        return
    local = metadata[prefix] = dict(local or {})
    local["spectral_norm"] = {**local.get("spectral_norm", {}), name + ".version": version}


def _check_requests(
    all_groups: list[Group], to: str, dims: Mapping[str, int | None], normalize: Mapping[str, Kind]
) -> None:
    if to not in LAYOUTS:
        raise CheckpointError(f"to={to!r} is not a layout; expected one of {', '.join(LAYOUTS)}.")
    by_base = {g.base: g for g in all_groups}
    for base, kind in normalize.items():
        group = by_base.get(base)
        if kind not in ("weight_norm", "spectral_norm"):
            raise CheckpointError(f"normalize[{base!r}]={kind!r}; expected 'weight_norm' or 'spectral_norm'.")
        if group is None or group.layout != "plain":
            state = "is not in the state_dict" if group is None else f"is already {group.kind} ({group.layout})"
            raise CheckpointError(f"normalize names {base!r}, which {state}; name plain weights only.")
        if to == "plain":
            raise CheckpointError(f"normalize={{{base!r}: ...}} needs to='legacy' or 'parametrizations', not 'plain'.")
    known = {g.base for g in all_groups if g.kind is not None} | set(normalize)
    for base in dims:
        if base not in known:
            raise CheckpointError(
                f"dims names {base!r}, which is not a normalized tensor of the state_dict "
                f"(normalized: {', '.join(sorted(known)) or 'none'})."
            )


def _converted(
    group: Group, state_dict: Mapping[str, Any], to: Layout, dims: Mapping[str, int | None]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """The (key, value) pairs of ``group`` in layout ``to``, and notes on what was derived."""
    # Already in place (a version-0 legacy entry is still rewritten, as version 1).
    # (An unknown parametrization passes through too: convert() refused it unless asked to.)
    if group.kind is None or (group.layout == to and "stored" not in group.roles):
        notes = _passed_through_notes(group, state_dict) if group.kind is not None else []
        return [(k, state_dict[k]) for k in group.roles.values()], notes
    if to == "plain":
        effective = effective_weight(group, state_dict, dims)
        return [(group.base, effective.value)], effective.notes
    if group.kind == "weight_norm":
        roles = {r: state_dict[group.roles[r]] for r in ("g", "v")}
        return _emit("weight_norm", group.base, roles, to), _passed_through_notes(group, state_dict)
    weight = state_dict[group.roles["weight"]]
    roles = {"weight": weight, "u": state_dict[group.roles["u"]]}
    v, notes = _sn_v(group, state_dict, dims)
    notes = _passed_through_notes(group, state_dict) + notes
    if v is not None:
        roles["v"] = v
    if weight.ndim <= 1 and to == "parametrizations":
        notes.append(
            f"{group.base!r}: a 1-D spectral-norm weight has no u, v as a parametrization "
            "(it is normalized exactly, w/|w|); the stored u, v are dropped."
        )
        roles = {"weight": weight}
    return _emit("spectral_norm", group.base, roles, to), notes


def kept_as_is(tensor: Group | Entry, to: str) -> bool:
    """Whether ``tensor`` carries a parametrization that layout ``to`` cannot hold (another
    one, or a chain), so that :func:`convert` can only keep it as it is (``keep_unconverted``)."""
    return tensor.unknown and to != "parametrizations"


def _unconverted_message(unconverted: list[Group], to: str) -> str:
    """Why the tensors ``unconverted`` cannot be written in layout ``to``, and what to do."""
    shown = "; ".join(f"{g.base!r} ({g.describe()})" for g in unconverted[:5])
    more = f" and {len(unconverted) - 5} more" if len(unconverted) > 5 else ""
    form = (
        "their effective weight needs the parametrization's code, not only the state_dict"
        if to == "plain"
        else "torch's legacy hooks have no form for them"
    )
    return (
        f"{len(unconverted)} tensor(s) cannot be converted to {to!r}: {shown}{more}. paranorm "
        f"reads weight norm and spectral norm alone, and {form}. To get plain weights, build "
        "the model, call paranorm.fold(model) (it evaluates every parametrization) and save its "
        "state_dict; or pass keep_unconverted=True (paranorm convert: --keep-unconverted) to "
        "convert the rest and keep these tensors as they are."
    )


@entry_point("convert")
def convert(
    state_dict: Mapping[str, Any],
    to: Layout = "parametrizations",
    *,
    dims: Mapping[str, int | None] | None = None,
    normalize: Mapping[str, Kind] | None = None,
    keep_unconverted: bool = False,
) -> OrderedDict[str, Any]:
    """Return a new state_dict with every normalized tensor in layout ``to``.

    Keys not involved pass through as the very same objects, in the same order; ``state_dict``
    is never modified. to="plain" computes each effective weight as torch does in eval mode:
    ``torch._weight_norm(v, g, dim)`` (dim read from g's shape) or W / (u^T W v) with the stored
    u, v (a version-0 entry: its stored W). legacy <-> parametrizations only renames keys,
    so the round trip is bit-exact. Legacy spectral-norm metadata (``_metadata``'s
    ``spectral_norm`` version) is written as torch writes it (version 1), and dropped elsewhere.

    Args:
        state_dict: any mapping of keys to tensors (an ``OrderedDict`` with ``_metadata`` too).
        to: "legacy", "parametrizations" or "plain".
        dims: ``{"<prefix><name>": dim}`` where the shapes cannot say it (a spectral norm of a
            square weight, or a plain tensor to normalize).
        normalize: ``{"<prefix><name>": "weight_norm" | "spectral_norm"}``: plain tensors to
            normalize in layout ``to``. g is ||w||; u, v are the exact top singular vectors.
        keep_unconverted: keep, as they are, the tensors that carry a parametrization other
            than weight or spectral norm alone (another one, or a chain such as
            deel-torchlip's spectral norm then Bjorck), which no layout but
            "parametrizations" can hold; off, such a tensor is an error that names them all.

    Returns:
        A new ``OrderedDict`` (with ``_metadata`` when the input had it).

    Warns:
        CheckpointWarning: whenever something not stored was derived (g, u, v, a dim, a
            version-0 v), saying what and how; and for each normalized tensor holding NaN or
            inf that a change of layout passes on unchanged (it renames, computes nothing).

    Raises:
        CheckpointError: a tensor with another parametrization (see ``keep_unconverted``),
            unknown ``to``, half of a group, a tensor in two layouts, a dim that
            cannot be read or does not fit, ``normalize`` naming a missing or normalized key;
            for a computed weight (plain, a version-0 v, a normalized plain tensor): a tensor
            that is not a dense float16/bfloat16/float32/float64 one, NaN or inf in it, a
            value that is 0/0 (a zero slice of v, u^T W v = 0) or past its dtype's largest
            number. Empty tensors give empty plain weights.
    """
    dims = dict(dims or {})
    normalize = dict(normalize or {})
    all_groups = groups(state_dict)
    _check_requests(all_groups, to, dims, normalize)
    unconverted = [g for g in all_groups if kept_as_is(g, to)]
    if unconverted and not keep_unconverted:
        raise CheckpointError(_unconverted_message(unconverted, to))
    metadata = getattr(state_dict, "_metadata", None)
    out_metadata = OrderedDict(metadata) if metadata is not None else None
    out: OrderedDict[str, Any] = OrderedDict()
    notes: list[str] = []
    for group in all_groups:
        if group.layout == "plain" and group.base in normalize:
            kind = normalize[group.base]
            roles, note = _normalize_plain(group.base, kind, state_dict[group.base], dims)
            notes.append(note)
            if kind == "spectral_norm" and roles["weight"].ndim <= 1 and to == "parametrizations":
                roles = {"weight": roles["weight"]}  # a 1-D parametrization keeps no u, v
            out.update(_emit(kind, group.base, roles, to))
        else:
            pairs, derived = _converted(group, state_dict, to, dims)
            out.update(pairs)
            notes.extend(derived)
            in_place = group.kind is None or (group.layout == to and "stored" not in group.roles)
            kind = None if in_place else group.kind  # type: ignore[assignment]
        if out_metadata is not None and kind == "spectral_norm":
            _set_version(out_metadata, group.base, 1 if to == "legacy" else None)
    # A 1-D spectral norm in parametrizations layout stores only `original`, like any other
    # parametrization; it is read as kind None and passes through (plain: an error).
    if out_metadata is not None:
        out._metadata = out_metadata  # type: ignore[attr-defined]
    notes += [
        f"{g.base!r} kept as it was, not converted: it carries {g.describe()}." for g in unconverted
    ]
    for note in notes:
        warnings.warn(note, CheckpointWarning, stacklevel=3)
    return out
