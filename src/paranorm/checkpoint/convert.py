"""Convert the normalized tensors of a state_dict between layouts, and compute effective weights.

Pure functions over state dicts (no module needed), for loaders that rename keys themselves
(Hugging Face, HiFi-GAN and EnCodec checkpoints) and for ``paranorm convert``. The plain layout
is the effective weight: g v / ||v|| (Salimans & Kingma 2016) or W / (u^T W v) (Miyato et al.
2018), computed as torch computes them in eval mode.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .._errors import CheckpointError, entry_point
from .._normalization import Kind
from .._sigma.matrix import weight_to_matrix
from .._torch_compat import weight_norm_kernel
from .detect import Group, candidate_dims, groups, wn_dims
from .layouts import LAYOUTS, Layout, legacy_keys, parametrization_keys, solve_version0_v

__all__ = [
    "CheckpointWarning",
    "Effective",
    "ResolvedDim",
    "convert",
    "effective_weight",
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
    scores = {}
    for dim in candidates:
        matrix = weight_to_matrix(weight.detach().double(), int(dim))  # type: ignore[arg-type]
        scores[dim] = max(_cosine(u.double(), matrix @ v), _cosine(v, matrix.t() @ u.double()))
    ranked = sorted(scores, key=lambda d: -scores[d])
    best, rival = ranked[0], ranked[1]
    if scores[best] < _HOLDS or scores[rival] > _RIVAL:
        found = ", ".join(f"dim {d}: {scores[d]:.4f}" for d in ranked)
        raise CheckpointError(
            f"{group.base!r}: the spectral norm's dim is ambiguous from the shapes (any of "
            f"{list(candidates)}), and u, v do not single one out (cosine of u with W v: "
            f"{found}). {_dim_hint(group.base)}"
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
        "pass dims= to state it."
    ]


def _sn_v(group: Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> tuple[torch.Tensor | None, list[str]]:
    """v of a spectral-norm group (stored, or solved from a version-0 entry as torch does)."""
    if "stored" not in group.roles:
        return (state_dict[group.roles["v"]] if "v" in group.roles else None), []
    weight = state_dict[group.roles["weight"]]
    if weight.ndim <= 1:
        return torch.ones(1, dtype=weight.dtype, device=weight.device), []
    resolved = resolve_sn_dim(group, state_dict, dims)
    note = (
        f"{group.base!r}: version-0 legacy spectral norm; v derived from the stored W, W_orig "
        "and u as torch's loader does (least squares, rescaled so that u^T W_orig v = sigma)."
    )
    v = solve_version0_v(weight, state_dict[group.roles["stored"]], state_dict[group.roles["u"]], resolved.dim)
    return v, [*_dim_note(group, resolved), note]


def effective_weight(group: Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> Effective:
    """The weight the source framework computes in eval mode for a normalized ``group``."""
    if group.kind == "weight_norm":
        g, v = state_dict[group.roles["g"]], state_dict[group.roles["v"]]
        candidates = wn_dims(g, v)
        if not candidates:
            raise CheckpointError(
                f"{group.base!r}: weight-norm g {tuple(g.shape)} does not fit v {tuple(v.shape)}: "
                "g must be a norm over every axis of v but one (or a scalar). The checkpoint is "
                "inconsistent."
            )
        # Every candidate gives the same weight: an ambiguous g is all ones in shape, so each
        # candidate axis has size 1 in v and the norm covers all of v either way.
        dim = candidates[0]
        with torch.no_grad():
            return Effective(weight_norm_kernel(v, g, -1 if dim is None else dim))
    if group.kind != "spectral_norm":
        raise CheckpointError(
            f"{group.base!r} carries a parametrization that is neither weight nor spectral norm "
            f"(keys {', '.join(group.roles.values())}); its effective weight cannot be computed "
            "from the state_dict. Build the model, call paranorm.fold(model) and save its "
            "state_dict instead."
        )
    if "stored" in group.roles:
        return Effective(state_dict[group.roles["stored"]])  # version 0 used the stored W in eval mode
    weight, u, v = (state_dict[group.roles[r]] for r in ("weight", "u", "v"))
    resolved = resolve_sn_dim(group, state_dict, dims)
    with torch.no_grad():
        if weight.ndim > 1:
            sigma = torch.vdot(u, torch.mv(weight_to_matrix(weight, resolved.dim), v))
        else:  # legacy keeps u, v for a 1-D weight too, viewed as a column
            sigma = torch.dot(u, weight * v)
        return Effective(weight / sigma, resolved, _dim_note(group, resolved))


def _normalize_plain(
    base: str, kind: Kind, weight: torch.Tensor, dims: Mapping[str, int | None]
) -> tuple[dict[str, torch.Tensor], str]:
    """Roles of a plain weight newly normalized, and a note on what was derived."""
    if kind == "weight_norm":
        dim = dims.get(base, 0)
        if dim is not None and not -weight.ndim <= dim < max(weight.ndim, 1):
            raise CheckpointError(f"dims[{base!r}]={dim} is out of range for weight {tuple(weight.shape)}.")
        torch_dim = -1 if dim is None else dim % max(weight.ndim, 1)
        g = torch.norm_except_dim(weight, 2, torch_dim)
        if weight.device.type != "meta" and bool((g == 0).any()):
            raise CheckpointError(
                f"{base!r} has a slice of zero norm along dim={dim}; g v/|v| would be NaN there. "
                "Weight-normalize a non-zero weight, or pick another dim."
            )
        note = (
            f"{base!r}: g = ||w|| derived from the plain weight (dim={dim}"
            f"{'' if base in dims else ', torch default'}); g v/|v| reproduces it."
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
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    u = F.normalize(left[:, 0], dim=0).to(weight.dtype)
    v = F.normalize(right[0], dim=0).to(weight.dtype)
    note = (
        f"{base!r}: u, v derived as the exact top singular vectors of the plain weight "
        f"(dim={dim}, sigma={float(values[0]):.6g}); the layer computes W / sigma, which equals "
        f"the plain weight only when sigma is 1."
    )
    return {"weight": weight, "u": u, "v": v}, note


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
    if group.kind is None or (group.layout == to and "stored" not in group.roles):
        if group.kind is None and group.layout == "parametrizations" and to == "plain":
            effective_weight(group, state_dict, dims)  # raises: not ours to evaluate
        return [(k, state_dict[k]) for k in group.roles.values()], []
    if to == "plain":
        effective = effective_weight(group, state_dict, dims)
        return [(group.base, effective.value)], effective.notes
    if group.kind == "weight_norm":
        roles = {r: state_dict[group.roles[r]] for r in ("g", "v")}
        return _emit("weight_norm", group.base, roles, to), []
    weight = state_dict[group.roles["weight"]]
    roles = {"weight": weight, "u": state_dict[group.roles["u"]]}
    v, notes = _sn_v(group, state_dict, dims)
    if v is not None:
        roles["v"] = v
    if weight.ndim <= 1 and to == "parametrizations":
        notes.append(
            f"{group.base!r}: a 1-D spectral-norm weight has no u, v as a parametrization "
            "(it is normalized exactly, w/|w|); the stored u, v are dropped."
        )
        roles = {"weight": weight}
    return _emit("spectral_norm", group.base, roles, to), notes


@entry_point("convert")
def convert(
    state_dict: Mapping[str, Any],
    to: Layout = "parametrizations",
    *,
    dims: Mapping[str, int | None] | None = None,
    normalize: Mapping[str, Kind] | None = None,
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

    Returns:
        A new ``OrderedDict`` (with ``_metadata`` when the input had it).

    Warns:
        CheckpointWarning: whenever something not stored was derived (g, u, v, a dim, a
            version-0 v), saying what and how.

    Raises:
        CheckpointError: unknown ``to``, half of a group, a tensor in two layouts, a dim that
            cannot be read or does not fit, ``normalize`` naming a missing or normalized key.
    """
    dims = dict(dims or {})
    normalize = dict(normalize or {})
    all_groups = groups(state_dict)
    _check_requests(all_groups, to, dims, normalize)
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
    for note in notes:
        warnings.warn(note, CheckpointWarning, stacklevel=3)
    return out
