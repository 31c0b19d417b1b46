"""Detect and convert the layout of weight-normed and spectrally normed tensors in a state_dict.

Pure functions over state dicts (no module needed), for loaders that rename keys themselves
(Hugging Face, HiFi-GAN and EnCodec checkpoints) and for ``paranorm convert``. The layouts:

- ``legacy``: torch.nn.utils.weight_norm (``<n>_g``, ``<n>_v``) and spectral_norm
  (``<n>_orig``, ``<n>_u``, ``<n>_v``; version 0 stored ``<n>`` instead of ``<n>_v``);
- ``parametrizations``: torch.nn.utils.parametrizations and paranorm
  (``parametrizations.<n>.original0``/``original1``; ``...original``, ``...0._u``, ``...0._v``);
- ``plain``: the effective weight ``<n>``: g v / ||v|| (Salimans & Kingma 2016) or
  W / (u^T W v) (Miyato et al. 2018), computed as torch computes them in eval mode.

``<n>_v`` is the direction in legacy weight norm but the right singular vector in legacy
spectral norm: its siblings (``<n>_g`` or ``<n>_orig``/``<n>_u``) decide.

Example:
    >>> import torch, paranorm as pn
    >>> from paranorm.checkpoint import convert, detect
    >>> legacy = {"weight_g": torch.ones(2, 1), "weight_v": torch.tensor([[3.0, 4.0], [0.0, 2.0]])}
    >>> [(e.name, e.layout, e.kind, e.dim) for e in detect(legacy)]
    [('weight', 'legacy', 'weight_norm', 0)]
    >>> sorted(convert(legacy, to="parametrizations"))
    ['parametrizations.weight.original0', 'parametrizations.weight.original1']
    >>> convert(legacy, to="plain")["weight"]
    tensor([[0.6000, 0.8000],
            [0.0000, 1.0000]])
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ._base import Kind
from ._load_hooks import legacy_keys, parametrization_keys, solve_version0_v
from .errors import CheckpointError
from .estimators import weight_to_matrix

__all__ = ["LAYOUTS", "CheckpointWarning", "Entry", "convert", "detect"]

Layout = Literal["legacy", "parametrizations", "plain"]
LAYOUTS: tuple[Layout, ...] = ("legacy", "parametrizations", "plain")

#: Cosine above which u = W v / |W v| (or v = W^T u / |W^T u|) counts as holding for a dim,
#: and below which a rival dim must stay, before a spectral norm's dim is read from u and v.
_HOLDS, _RIVAL = 0.9999, 0.999


class CheckpointWarning(UserWarning):
    """A conversion derived something the checkpoint did not store (u, v, g, a dim)."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a state_dict as :func:`detect` reads it.

    Attributes:
        name: the tensor, ``<prefix><name>`` (e.g. ``"conv.weight"``).
        layout: "legacy", "parametrizations" or "plain".
        kind: "weight_norm", "spectral_norm", or None for a plain tensor (or a parametrization
            that is neither, e.g. orthogonal).
        keys: the state_dict keys that hold it.
        dim: the normalization's dim when the shapes say it (None: the whole tensor for weight
            norm, or not readable; see ``dim_candidates``).
        dim_candidates: every dim the shapes allow; one element when ``dim`` is known.
        version: the legacy spectral-norm state-dict version (0 or 1), else None.
    """

    name: str
    layout: Layout
    kind: Kind | None
    keys: tuple[str, ...]
    dim: int | None = None
    dim_candidates: tuple[int | None, ...] = ()
    version: int | None = None

    @property
    def dim_known(self) -> bool:
        return len(self.dim_candidates) == 1


@dataclass
class _Group:
    base: str
    layout: Layout
    kind: Kind | None
    roles: dict[str, str]  # role (g, v, weight, u, stored) -> key
    version: int | None = None


def _meta_prefix(base: str) -> tuple[str, str]:
    prefix, _, name = base.rpartition(".")
    return prefix, name


def _sn_version(state_dict: Mapping[str, Any], base: str) -> int | None:
    metadata = getattr(state_dict, "_metadata", None) or {}
    prefix, name = _meta_prefix(base)
    version = metadata.get(prefix, {}).get("spectral_norm", {}).get(f"{name}.version")
    return int(version) if version is not None else None


def _looks_like_weight(base: str) -> bool:
    """A lone ``<base>_g``/``_v``/``_u`` is half a normalized group only for weight-like names."""
    return base.rpartition(".")[2].startswith("weight")


def _parse_parametrization(key: str) -> tuple[str, str] | None:
    """``a.parametrizations.w.original0`` -> (``a.w``, ``original0``)."""
    head, sep, tail = key.rpartition("parametrizations.")
    if not sep or (head and not head.endswith(".")):
        return None
    name, dot, rest = tail.partition(".")
    if not dot:
        return None
    return f"{head}{name}", rest


def _two_layouts(base: str, first: str, second: str) -> CheckpointError:
    return CheckpointError(
        f"{base!r} is stored in two layouts at once ({first!r} and {second!r}); a checkpoint "
        "holds each tensor once. Delete the stale keys, then convert."
    )


def _groups(state_dict: Mapping[str, Any]) -> list[_Group]:
    """Every tensor of ``state_dict`` as a group of keys, in the order of its first key."""
    keys = list(state_dict)
    keyset = set(keys)
    groups: dict[str, _Group] = {}
    claimed: dict[str, str] = {}  # key -> base

    def claim(group: _Group) -> None:
        for key in group.roles.values():
            if not isinstance(state_dict[key], torch.Tensor):
                raise CheckpointError(
                    f"{group.base!r}: {key!r} holds a {type(state_dict[key]).__name__}, not a "
                    "tensor, so the checkpoint is corrupt. Restore it from the original checkpoint."
                )
        if group.base in groups:
            old = groups[group.base]
            raise _two_layouts(group.base, next(iter(old.roles.values())), next(iter(group.roles.values())))
        for key in group.roles.values():
            claimed[key] = group.base
        groups[group.base] = group

    # Parametrizations keys.
    param: dict[str, dict[str, str]] = {}
    for key in keys:
        parsed = _parse_parametrization(key)
        if parsed is not None:
            param.setdefault(parsed[0], {})[parsed[1]] = key
    for base, found in param.items():
        if "original0" in found or "original1" in found:
            if "original0" not in found or "original1" not in found:
                have, lack = ("original0", "original1") if "original0" in found else ("original1", "original0")
                raise CheckpointError(
                    f"{base!r}: weight-norm key {found[have]!r} has no partner {lack!r}; g and v "
                    "come in pairs. Restore the missing key from the original checkpoint."
                )
            claim(_Group(base, "parametrizations", "weight_norm", {"g": found["original0"], "v": found["original1"]}))
        elif "0._u" in found or "0._v" in found:
            missing = [r for r in ("original", "0._u", "0._v") if r not in found]
            if missing:
                raise CheckpointError(
                    f"{base!r}: spectral-norm parametrization keys are incomplete ({missing[0]!r} "
                    "is missing); original, 0._u and 0._v come together. Restore it from the "
                    "original checkpoint."
                )
            claim(_Group(base, "parametrizations", "spectral_norm", {"weight": found["original"], "u": found["0._u"], "v": found["0._v"]}))
        elif "original" in found:
            # Another parametrization (orthogonal, ...) or a 1-D spectral norm: not ours to read.
            claim(_Group(base, "parametrizations", None, dict(found)))
    # Legacy keys: collect candidate bases from the suffixes.
    bases: list[str] = []
    for key in keys:
        if key in claimed:
            continue
        for suffix in ("_g", "_orig", "_u", "_v"):
            if key.endswith(suffix) and key[: -len(suffix)] not in bases:
                bases.append(key[: -len(suffix)])
    for base in bases:
        has = {s: f"{base}{s}" in keyset for s in ("", "_g", "_v", "_orig", "_u")}
        if has["_g"] and (has["_orig"] or has["_u"]):
            raise _two_layouts(base, f"{base}_g", f"{base}_orig" if has["_orig"] else f"{base}_u")
        if has["_g"]:
            if not has["_v"]:
                if not _looks_like_weight(base):
                    continue
                raise CheckpointError(
                    f"{base!r}: legacy weight-norm key {base + '_g'!r} has no partner "
                    f"{base + '_v'!r}; g and v come in pairs. Restore the missing key from the "
                    "original checkpoint."
                )
            if has[""]:
                raise _two_layouts(base, f"{base}_g", base)
            claim(_Group(base, "legacy", "weight_norm", {"g": f"{base}_g", "v": f"{base}_v"}))
        elif has["_orig"] or (has["_u"] and _looks_like_weight(base)):
            version = _sn_version(state_dict, base)
            stored = has[""] and (version is None or version < 1)
            if has[""] and not stored:
                raise _two_layouts(base, f"{base}_orig", base)
            needed = ("_orig", "_u") if stored else ("_orig", "_u", "_v")
            missing = [f"{base}{s}" for s in needed if not has[s]]
            if missing:
                raise CheckpointError(
                    f"{base!r}: legacy spectral-norm keys are incomplete ({missing[0]!r} is "
                    f"missing); {', '.join(base + s for s in needed)} come together. Restore it "
                    "from the original checkpoint."
                )
            roles = {"weight": f"{base}_orig", "u": f"{base}_u"}
            if has["_v"] and not stored:
                roles["v"] = f"{base}_v"
            if stored:
                roles["stored"] = base
                for extra in ("_v",):  # torch's v0 hook recomputes v even if one is stored
                    if has[extra]:
                        roles["stale_v"] = f"{base}{extra}"
            claim(_Group(base, "legacy", "spectral_norm", roles, 0 if stored else 1))
        elif has["_v"] and _looks_like_weight(base) and not has[""]:
            raise CheckpointError(
                f"{base!r}: {base + '_v'!r} has neither {base + '_g'!r} (weight norm) nor "
                f"{base + '_orig'!r} and {base + '_u'!r} (spectral norm) next to it, so half of "
                "its group is missing. Restore the missing keys from the original checkpoint."
            )
    # A plain <base> next to a normalized group of the same tensor is a second layout.
    for base, group in groups.items():
        if base in keyset and "stored" not in group.roles and group.kind is not None:
            raise _two_layouts(base, next(iter(group.roles.values())), base)
    ordered: list[_Group] = []
    seen: set[str] = set()
    for key in keys:
        owner = claimed.get(key)
        if owner is None:
            ordered.append(_Group(key, "plain", None, {"weight": key}))
        elif owner not in seen:
            seen.add(owner)
            ordered.append(groups[owner])
    return ordered


def _wn_dims(g: torch.Tensor, v: torch.Tensor) -> tuple[int | None, ...]:
    """The dims for which ``g`` has the shape of ``norm_except_dim(v, 2, dim)``."""
    if g.ndim == 0:
        return (None,)
    if g.ndim != v.ndim:
        return ()
    return tuple(
        d for d in range(v.ndim) if all(g.shape[i] == (v.shape[d] if i == d else 1) for i in range(v.ndim))
    )


def _sn_dims(weight: torch.Tensor, u: torch.Tensor) -> tuple[int | None, ...]:
    if weight.ndim <= 1:
        return (0,)
    return tuple(d for d in range(weight.ndim) if weight.shape[d] == u.numel())


def _candidates(group: _Group, state_dict: Mapping[str, Any]) -> tuple[int | None, ...]:
    if group.kind == "weight_norm":
        return _wn_dims(state_dict[group.roles["g"]], state_dict[group.roles["v"]])
    if group.kind == "spectral_norm":
        weight, u = state_dict[group.roles["weight"]], state_dict[group.roles["u"]]
        dims = _sn_dims(weight, u)
        if "v" in group.roles:
            v = state_dict[group.roles["v"]]
            dims = tuple(d for d in dims if d is not None and weight.numel() == u.numel() * v.numel())
        return dims
    return ()


def detect(state_dict: Mapping[str, Any]) -> list[Entry]:
    """Read every tensor of ``state_dict``: its layout, normalization, dim and keys.

    Returns:
        One :class:`Entry` per tensor, normalized or plain, in the order of the keys.

    Raises:
        CheckpointError: half of a group (g without v, ``_orig`` without ``_u``), or one tensor
            stored in two layouts at once.
    """
    entries = []
    for group in _groups(state_dict):
        dims = _candidates(group, state_dict)
        entries.append(
            Entry(
                name=group.base,
                layout=group.layout,
                kind=group.kind,
                keys=tuple(group.roles.values()),
                dim=dims[0] if len(dims) == 1 else None,
                dim_candidates=dims,
                version=group.version if group.layout == "legacy" and group.kind == "spectral_norm" else None,
            )
        )
    return entries


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _sn_dim(group: _Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> int:
    """The spectral norm's dim: given, read from the shapes, or from the power-method invariant."""
    weight, u = state_dict[group.roles["weight"]], state_dict[group.roles["u"]]
    candidates = _candidates(group, state_dict)
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
        return int(dim)  # type: ignore[arg-type]
    if len(candidates) == 1 or u.numel() == 1:
        # With one row, every candidate axis has size 1: moving it first changes no order.
        return int(candidates[0])  # type: ignore[arg-type]
    hint = (
        f"Pass dims={{{group.base!r}: DIM}} (torch's default: 1 for ConvTranspose, 0 otherwise; "
        f"CLI: --dim {group.base}=DIM)."
    )
    if "v" not in group.roles or weight.device.type == "meta":
        raise CheckpointError(
            f"{group.base!r}: the spectral norm's dim is ambiguous from the shapes (any of "
            f"{list(candidates)} for weight {tuple(weight.shape)}). {hint}"
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
            f"{found}). {hint}"
        )
    warnings.warn(
        f"{group.base!r}: spectral norm dim {best} read from u and v (u = W v/|W v| holds to "
        f"cosine {scores[best]:.6f} for dim {best}, {scores[rival]:.4f} for dim {rival}); pass "
        "dims= to state it.",
        CheckpointWarning,
        stacklevel=4,
    )
    return int(best)  # type: ignore[arg-type]


def _sn_v(group: _Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> torch.Tensor | None:
    """v of a spectral-norm group: stored, or solved from a version-0 entry as torch does."""
    if "stored" not in group.roles:
        return state_dict[group.roles["v"]] if "v" in group.roles else None
    weight = state_dict[group.roles["weight"]]
    if weight.ndim <= 1:
        return torch.ones(1, dtype=weight.dtype, device=weight.device)
    dim = _sn_dim(group, state_dict, dims)
    warnings.warn(
        f"{group.base!r}: version-0 legacy spectral norm; v derived from the stored W, W_orig "
        "and u as torch's loader does (least squares, rescaled so that u^T W_orig v = sigma).",
        CheckpointWarning,
        stacklevel=4,
    )
    return solve_version0_v(weight, state_dict[group.roles["stored"]], state_dict[group.roles["u"]], dim)


def _effective(group: _Group, state_dict: Mapping[str, Any], dims: Mapping[str, int | None]) -> torch.Tensor:
    """The weight the source framework computes in eval mode."""
    if group.kind == "weight_norm":
        g, v = state_dict[group.roles["g"]], state_dict[group.roles["v"]]
        candidates = _wn_dims(g, v)
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
            return torch._weight_norm(v, g, -1 if dim is None else dim)
    if group.kind != "spectral_norm":
        raise CheckpointError(
            f"{group.base!r} carries a parametrization that is neither weight nor spectral norm "
            f"(keys {', '.join(group.roles.values())}); its effective weight cannot be computed "
            "from the state_dict. Build the model, call paranorm.fold(model) and save its "
            "state_dict instead."
        )
    if "stored" in group.roles:
        return state_dict[group.roles["stored"]]  # version 0 used the stored W in eval mode
    weight, u, v = (state_dict[group.roles[r]] for r in ("weight", "u", "v"))
    dim = _sn_dim(group, state_dict, dims)
    with torch.no_grad():
        if weight.ndim > 1:
            sigma = torch.vdot(u, torch.mv(weight_to_matrix(weight, dim), v))
        else:  # legacy keeps u, v for a 1-D weight too, viewed as a column
            sigma = torch.dot(u, weight * v)
        return weight / sigma


def _normalize_plain(
    base: str, kind: Kind, weight: torch.Tensor, dims: Mapping[str, int | None]
) -> dict[str, torch.Tensor]:
    """Roles of a plain weight newly normalized; warns what was derived."""
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
        warnings.warn(
            f"{base!r}: g = ||w|| derived from the plain weight (dim={dim}{'' if base in dims else ', torch default'}); "
            "g v/|v| reproduces it.",
            CheckpointWarning,
            stacklevel=4,
        )
        return {"g": g, "v": weight}
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
    matrix = weight_to_matrix(weight.detach().double(), dim % max(weight.ndim, 1)) if weight.ndim > 1 else weight.double().reshape(-1, 1)
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    u = F.normalize(left[:, 0], dim=0).to(weight.dtype)
    v = F.normalize(right[0], dim=0).to(weight.dtype)
    warnings.warn(
        f"{base!r}: u, v derived as the exact top singular vectors of the plain weight "
        f"(dim={dim}, sigma={float(values[0]):.6g}); the layer computes W / sigma, which equals "
        f"the plain weight only when sigma is 1.",
        CheckpointWarning,
        stacklevel=4,
    )
    return {"weight": weight, "u": u, "v": v}


def _emit(kind: Kind, base: str, roles: Mapping[str, torch.Tensor], to: Layout) -> list[tuple[str, torch.Tensor]]:
    keys = legacy_keys(kind, base) if to == "legacy" else parametrization_keys(kind, base)
    return [(keys[role], roles[role]) for role in keys if role in roles]


def _set_version(metadata: dict[str, Any], base: str, version: int | None) -> None:
    prefix, name = _meta_prefix(base)
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
    if to not in LAYOUTS:
        raise CheckpointError(f"convert: to={to!r} is not a layout; expected one of {', '.join(LAYOUTS)}.")
    dims = dict(dims or {})
    normalize = dict(normalize or {})
    groups = _groups(state_dict)
    by_base = {g.base: g for g in groups}
    for base, kind in normalize.items():
        group = by_base.get(base)
        if kind not in ("weight_norm", "spectral_norm"):
            raise CheckpointError(f"convert: normalize[{base!r}]={kind!r}; expected 'weight_norm' or 'spectral_norm'.")
        if group is None or group.layout != "plain":
            state = "is not in the state_dict" if group is None else f"is already {group.kind} ({group.layout})"
            raise CheckpointError(f"convert: normalize names {base!r}, which {state}; name plain weights only.")
        if to == "plain":
            raise CheckpointError(f"convert: normalize={{{base!r}: ...}} needs to='legacy' or 'parametrizations', not 'plain'.")
    known = {g.base for g in groups if g.kind is not None} | set(normalize)
    for base in dims:
        if base not in known:
            raise CheckpointError(
                f"convert: dims names {base!r}, which is not a normalized tensor of the state_dict "
                f"(normalized: {', '.join(sorted(known)) or 'none'})."
            )
    metadata = getattr(state_dict, "_metadata", None)
    out_metadata = OrderedDict(metadata) if metadata is not None else None
    out: OrderedDict[str, Any] = OrderedDict()
    for group in groups:
        if group.layout == "plain" and group.base in normalize:
            kind = normalize[group.base]
            roles = _normalize_plain(group.base, kind, state_dict[group.base], dims)
            if kind == "spectral_norm" and roles["weight"].ndim <= 1 and to == "parametrizations":
                roles = {"weight": roles["weight"]}  # a 1-D parametrization keeps no u, v
            out.update(_emit(kind, group.base, roles, to))  # type: ignore[arg-type]
            if out_metadata is not None and kind == "spectral_norm":
                _set_version(out_metadata, group.base, 1 if to == "legacy" else None)
            continue
        # Already in place (a version-0 legacy entry is still rewritten, as version 1).
        if group.kind is None or (group.layout == to and "stored" not in group.roles):
            if group.kind is None and group.layout == "parametrizations" and to == "plain":
                _effective(group, state_dict, dims)  # raises: not ours to evaluate
            out.update((k, state_dict[k]) for k in group.roles.values())
            continue
        if to == "plain":
            out[group.base] = _effective(group, state_dict, dims)
        elif group.kind == "weight_norm":
            roles = {r: state_dict[group.roles[r]] for r in ("g", "v")}
            out.update(_emit("weight_norm", group.base, roles, to))
        else:
            weight = state_dict[group.roles["weight"]]
            roles = {"weight": weight, "u": state_dict[group.roles["u"]]}
            v = _sn_v(group, state_dict, dims)
            if v is not None:
                roles["v"] = v
            if weight.ndim <= 1 and to == "parametrizations":
                warnings.warn(
                    f"{group.base!r}: a 1-D spectral-norm weight has no u, v as a parametrization "
                    "(it is normalized exactly, w/|w|); the stored u, v are dropped.",
                    CheckpointWarning,
                    stacklevel=2,
                )
                roles = {"weight": weight}
            out.update(_emit("spectral_norm", group.base, roles, to))
        if out_metadata is not None and group.kind == "spectral_norm":
            _set_version(out_metadata, group.base, 1 if to == "legacy" else None)
    # A 1-D spectral norm in parametrizations layout stores only `original`, like any other
    # parametrization; it is read as kind None and passes through (plain: an error).
    if out_metadata is not None:
        out._metadata = out_metadata  # type: ignore[attr-defined]
    return out

