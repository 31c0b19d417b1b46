"""Read a state_dict's keys as tensors: which are normalized, in which layout, with which dim."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .._errors import CheckpointError, entry_point
from .._normalization import Kind
from .layouts import Layout

__all__ = ["Entry", "Group", "candidate_dims", "detect", "groups", "sn_dims", "wn_dims"]


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
    def unknown(self) -> bool:
        """A parametrization paranorm cannot evaluate from its keys (see :class:`Group`)."""
        return self.kind is None and self.layout == "parametrizations"

    @property
    def dim_known(self) -> bool:
        return len(self.dim_candidates) == 1


@dataclass
class Group:
    """The keys of one tensor: role (g, v, weight, u; "stored" and "stale_v" for a version-0
    legacy spectral norm) -> key."""

    base: str
    layout: Layout
    kind: Kind | None
    roles: dict[str, str] = field(default_factory=dict)
    version: int | None = None
    #: For kind None: a known parametrization chained with others, as its keys say (e.g.
    #: "spectral_norm + 1._w_bjorck"), else "".
    chain: str = ""

    @property
    def unknown(self) -> bool:
        """A parametrization paranorm cannot evaluate from its keys (not one weight or
        spectral norm alone)."""
        return self.kind is None and self.layout == "parametrizations"

    def describe(self, short: bool = False) -> str:
        """What an unknown parametrization holds, for messages (``short``: for a table)."""
        if self.chain:
            return f"chained: {self.chain}" if short else f"a chain of parametrizations ({self.chain})"
        return "other parametrization" if short else "a parametrization that is neither weight nor spectral norm"


def _two_layouts(base: str, first: str, second: str) -> CheckpointError:
    return CheckpointError(
        f"{base!r} is stored in two layouts at once ({first!r} and {second!r}); a checkpoint "
        "holds each tensor once. Delete the stale keys, then convert."
    )


def _looks_like_weight(base: str) -> bool:
    """A lone ``<base>_g``/``_v``/``_u`` is half a normalized group only for weight-like names."""
    return base.rpartition(".")[2].startswith("weight")


def _sn_version(state_dict: Mapping[str, Any], base: str) -> int | None:
    metadata = getattr(state_dict, "_metadata", None) or {}
    prefix, _, name = base.rpartition(".")
    version = metadata.get(prefix, {}).get("spectral_norm", {}).get(f"{name}.version")
    return int(version) if version is not None else None


def _parse_parametrization(key: str) -> tuple[str, str] | None:
    """``a.parametrizations.w.original0`` -> (``a.w``, ``original0``)."""
    head, sep, tail = key.rpartition("parametrizations.")
    if not sep or (head and not head.endswith(".")):
        return None
    name, dot, rest = tail.partition(".")
    if not dot:
        return None
    return f"{head}{name}", rest


#: The keys of the one parametrization paranorm reads, by kind (suffixes after
#: ``parametrizations.<name>.``); any other key of the same tensor belongs to a further,
#: chained parametrization (e.g. deel-torchlip's ``1._w_bjorck``).
_OWN_KEYS = {"weight_norm": {"original0", "original1"}, "spectral_norm": {"original", "0._u", "0._v"}}


def _chained(base: str, kind: str, found: dict[str, str]) -> Group | None:
    """``base``'s group as an unknown parametrization when keys beyond ``kind``'s own show
    that another parametrization is chained after it (its effective weight is not ``kind``'s)."""
    extra = sorted(set(found) - _OWN_KEYS[kind])
    if not extra:
        return None
    return Group(base, "parametrizations", None, dict(found), chain=" + ".join([kind, *extra]))


def _parametrization_group(base: str, found: dict[str, str]) -> Group | None:
    """The group of the parametrizations keys ``found`` (role suffix -> key) of ``base``."""
    if "original0" in found or "original1" in found:
        if "original0" not in found or "original1" not in found:
            have, lack = ("original0", "original1") if "original0" in found else ("original1", "original0")
            raise CheckpointError(
                f"{base!r}: weight-norm key {found[have]!r} has no partner {lack!r}; g and v "
                "come in pairs. Restore the missing key from the original checkpoint."
            )
        return _chained(base, "weight_norm", found) or Group(
            base, "parametrizations", "weight_norm", {"g": found["original0"], "v": found["original1"]}
        )
    if "0._u" in found or "0._v" in found:
        missing = [r for r in ("original", "0._u", "0._v") if r not in found]
        if missing:
            raise CheckpointError(
                f"{base!r}: spectral-norm parametrization keys are incomplete ({missing[0]!r} "
                "is missing); original, 0._u and 0._v come together. Restore it from the "
                "original checkpoint."
            )
        roles = {"weight": found["original"], "u": found["0._u"], "v": found["0._v"]}
        return _chained(base, "spectral_norm", found) or Group(base, "parametrizations", "spectral_norm", roles)
    if "original" in found:
        # Another parametrization (orthogonal, ...) or a 1-D spectral norm: not ours to read.
        return Group(base, "parametrizations", None, dict(found))
    return None


def _legacy_group(state_dict: Mapping[str, Any], keyset: set[str], base: str) -> Group | None:
    """The legacy group of ``base``, None if its suffixed keys are not one (e.g. a bias_v)."""
    has = {s: f"{base}{s}" in keyset for s in ("", "_g", "_v", "_orig", "_u")}
    if has["_g"] and (has["_orig"] or has["_u"]):
        raise _two_layouts(base, f"{base}_g", f"{base}_orig" if has["_orig"] else f"{base}_u")
    if has["_g"]:
        if not has["_v"]:
            if not _looks_like_weight(base):
                return None
            raise CheckpointError(
                f"{base!r}: legacy weight-norm key {base + '_g'!r} has no partner "
                f"{base + '_v'!r}; g and v come in pairs. Restore the missing key from the "
                "original checkpoint."
            )
        if has[""]:
            raise _two_layouts(base, f"{base}_g", base)
        return Group(base, "legacy", "weight_norm", {"g": f"{base}_g", "v": f"{base}_v"})
    if has["_orig"] or (has["_u"] and _looks_like_weight(base)):
        return _legacy_spectral_group(state_dict, base, has)
    if has["_v"] and _looks_like_weight(base) and not has[""]:
        raise CheckpointError(
            f"{base!r}: {base + '_v'!r} has neither {base + '_g'!r} (weight norm) nor "
            f"{base + '_orig'!r} and {base + '_u'!r} (spectral norm) next to it, so half of "
            "its group is missing. Restore the missing keys from the original checkpoint."
        )
    return None


def _legacy_spectral_group(state_dict: Mapping[str, Any], base: str, has: dict[str, bool]) -> Group:
    version = _sn_version(state_dict, base)
    stored = has[""] and (version is None or version < 1)  # version 0 stored W, not v
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
    if stored:
        roles["stored"] = base
        if has["_v"]:  # torch's version-0 hook recomputes v even if one is stored
            roles["stale_v"] = f"{base}_v"
    elif has["_v"]:
        roles["v"] = f"{base}_v"
    return Group(base, "legacy", "spectral_norm", roles, 0 if stored else 1)


def _legacy_bases(keys: Iterable[str], claimed: Mapping[str, str]) -> list[str]:
    """Candidate bases of legacy groups, from the suffixes of unclaimed keys, in key order."""
    bases: dict[str, None] = {}
    for key in keys:
        if key in claimed:
            continue
        for suffix in ("_g", "_orig", "_u", "_v"):
            if key.endswith(suffix):
                bases.setdefault(key[: -len(suffix)])
    return list(bases)


def _string_keys(state_dict: Mapping[str, Any]) -> list[str]:
    keys = list(state_dict)
    odd = next((k for k in keys if not isinstance(k, str)), None)
    if odd is not None:
        raise CheckpointError(
            f"key {odd!r} is a {type(odd).__name__}; a state_dict's keys are strings (module "
            "paths such as 'conv.weight'), so this mapping is not one. Pass the model's "
            "state_dict()."
        )
    return keys


def _claim(found: dict[str, Group], state_dict: Mapping[str, Any], group: Group | None) -> None:
    """Record ``group`` in ``found`` after checking its values are tensors and its base is new."""
    if group is None:
        return
    for key in group.roles.values():
        if not isinstance(state_dict[key], torch.Tensor):
            raise CheckpointError(
                f"{group.base!r}: {key!r} holds a {type(state_dict[key]).__name__}, not a "
                "tensor, so the checkpoint is corrupt. Restore it from the original checkpoint."
            )
    if group.base in found:
        old = found[group.base]
        raise _two_layouts(group.base, next(iter(old.roles.values())), next(iter(group.roles.values())))
    found[group.base] = group


def _parametrization_groups(keys: list[str]) -> Iterator[Group | None]:
    parametrized: dict[str, dict[str, str]] = {}
    for key in keys:
        parsed = _parse_parametrization(key)
        if parsed is not None:
            parametrized.setdefault(parsed[0], {})[parsed[1]] = key
    for base, roles in parametrized.items():
        yield _parametrization_group(base, roles)


def groups(state_dict: Mapping[str, Any]) -> list[Group]:
    """Every tensor of ``state_dict`` as a group of keys, in the order of its first key.

    Raises:
        CheckpointError: a key that is not a string, half of a group, one tensor in two
            layouts, a value that is not a tensor where a group needs one.
    """
    keys = _string_keys(state_dict)
    found: dict[str, Group] = {}
    for group in _parametrization_groups(keys):
        _claim(found, state_dict, group)
    claimed = {key: g.base for g in found.values() for key in g.roles.values()}
    keyset = set(keys)
    for base in _legacy_bases(keys, claimed):
        _claim(found, state_dict, _legacy_group(state_dict, keyset, base))
    # A plain <base> next to a normalized group of the same tensor is a second layout.
    for base, group in found.items():
        if base in keyset and "stored" not in group.roles and group.kind is not None:
            raise _two_layouts(base, next(iter(group.roles.values())), base)
    claimed = {key: g.base for g in found.values() for key in g.roles.values()}
    ordered: dict[str, Group] = {}
    for key in keys:
        owner = claimed.get(key)
        if owner is None:
            ordered[key] = Group(key, "plain", None, {"weight": key})
        else:
            ordered.setdefault(owner, found[owner])
    return list(ordered.values())


def wn_dims(g: torch.Tensor, v: torch.Tensor) -> tuple[int | None, ...]:
    """The dims for which ``g`` has the shape of ``norm_except_dim(v, 2, dim)``."""
    if g.ndim == 0:
        return (None,)
    if g.ndim != v.ndim:
        return ()
    return tuple(
        d for d in range(v.ndim) if all(g.shape[i] == (v.shape[d] if i == d else 1) for i in range(v.ndim))
    )


def sn_dims(weight: torch.Tensor, u: torch.Tensor) -> tuple[int | None, ...]:
    """The dims whose axis of ``weight`` has as many entries as ``u``."""
    if weight.ndim <= 1:
        return (0,)
    return tuple(d for d in range(weight.ndim) if weight.shape[d] == u.numel())


def candidate_dims(group: Group, state_dict: Mapping[str, Any]) -> tuple[int | None, ...]:
    """Every dim the stored shapes of ``group`` allow."""
    if group.kind == "weight_norm":
        return wn_dims(state_dict[group.roles["g"]], state_dict[group.roles["v"]])
    if group.kind == "spectral_norm":
        weight, u = state_dict[group.roles["weight"]], state_dict[group.roles["u"]]
        dims = sn_dims(weight, u)
        if "v" in group.roles:
            v = state_dict[group.roles["v"]]
            dims = tuple(d for d in dims if d is not None and weight.numel() == u.numel() * v.numel())
        return dims
    return ()


@entry_point("detect")
def detect(state_dict: Mapping[str, Any]) -> list[Entry]:
    """Read every tensor of ``state_dict``: its layout, normalization, dim and keys.

    Returns:
        One :class:`Entry` per tensor, normalized or plain, in the order of the keys.

    Raises:
        CheckpointError: half of a group (g without v, ``_orig`` without ``_u``), or one tensor
            stored in two layouts at once.
    """
    entries = []
    for group in groups(state_dict):
        dims = candidate_dims(group, state_dict)
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
