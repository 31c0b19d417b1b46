"""The load_state_dict pre-hooks of a normalized tensor: any of the three layouts loads.

A weight-normed or spectrally normed ``<prefix><name>`` is stored in one of the layouts of
:mod:`.layouts` (legacy, parametrizations, plain). torch calls every load pre-hook with
``strict=True`` whatever the caller passed, and applies ``strict`` itself afterwards to the
missing/unexpected key lists; so the hooks never decide on strictness: an incomplete legacy
group loads what is there and leaves the rest to torch's missing keys (an error with
strict=True, ignored with strict=False; torch's own legacy spectral-norm hook instead raised
KeyError, pytorch#21251).

The hooks are registered by :func:`paranorm.weight_norm` / :func:`paranorm.spectral_norm` as
load_state_dict pre-hooks (``with_module=True``). torch calls them with a private copy of the
state_dict before it copies anything into the module, so renaming keys there is safe.

Failure semantics: torch's ``load_state_dict`` is not transactional. It loads module by module
and raises one RuntimeError at the end listing ``error_msgs`` (and, with ``strict=True``,
missing/unexpected keys), so on failure the modules visited before have been loaded. The hooks
append to ``error_msgs`` (raised with strict=True *and* strict=False: a key of the wrong layout
would otherwise be silently skipped and leave the layer at its initial weights) and drop every
key of the offending tensor, so that tensor is left exactly as it was. (With strict=True and
an incomplete group, the keys that were there are loaded before torch raises: torch's order.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from .._normalization import Kind, find_normalization
from .._validate import label
from .layouts import convert_command, legacy_keys, parametrization_keys, solve_version0_v

__all__ = ["spectral_norm_keys_hook", "weight_norm_keys_hook"]

_ADJECTIVE = {"weight_norm": "weight-normalized", "spectral_norm": "spectrally normalized"}


Hook = Callable[..., None]


def weight_norm_keys_hook(name: str) -> Hook:
    """The load_state_dict pre-hook of a weight-normed ``<name>`` (register with_module=True)."""
    return _keys_hook(name, "weight_norm")


def spectral_norm_keys_hook(name: str) -> Hook:
    """The load_state_dict pre-hook of a spectrally normed ``<name>`` (register with_module=True)."""
    return _keys_hook(name, "spectral_norm")


def _shape_mismatch(
    module: torch.nn.Module,
    name: str,
    kind: Kind,
    keys: dict[str, str],
    state_dict: Mapping[str, Any],
    version0: bool,
) -> str:
    """Why the stored tensors do not fit this layer's normalization ('' when they fit).

    torch would report a bare size mismatch; a different ``dim`` is the usual cause (a
    ConvTranspose normalized over the other axis, Wav2Vec2's dim=2), so say so.
    """
    parametrization: Any = module.parametrizations[name]  # type: ignore[index]
    ours: Any = parametrization[0]
    if kind == "weight_norm":
        expected = {"g": parametrization.original0, "v": parametrization.original1}
    else:
        expected = {"weight": parametrization.original}
        if hasattr(ours, "_u") and not version0:
            expected.update(u=ours._u, v=ours._v)
    for role, tensor in expected.items():
        stored = state_dict.get(keys[role])
        if not isinstance(stored, torch.Tensor) or stored.shape == tensor.shape:
            continue
        dim = getattr(ours, "dim", None)
        hint = (
            f"the layer normalizes with dim={dim}; if the checkpoint was saved with another dim, "
            f"normalize the layer the same way (e.g. paranorm.{kind}(layer, dim=...))"
            if role != "weight" and (role != "v" or kind == "spectral_norm")
            else "build the layer with the checkpoint's shapes"
        )
        return (
            f"state_dict key {keys[role]!r} has shape {tuple(stored.shape)}, the layer expects "
            f"{tuple(tensor.shape)}: {hint}."
        )
    return ""


@dataclass(frozen=True)
class _Keys:
    """The keys the tensor ``base`` may be stored under, in its own layouts and the other norm's."""

    kind: Kind
    base: str

    @property
    def other(self) -> Kind:
        return "spectral_norm" if self.kind == "weight_norm" else "weight_norm"

    @property
    def legacy(self) -> dict[str, str]:
        return legacy_keys(self.kind, self.base)

    @property
    def param(self) -> dict[str, str]:
        return parametrization_keys(self.kind, self.base)

    def every(self) -> set[str]:
        tables = (self.legacy, self.param, legacy_keys(self.other, self.base), parametrization_keys(self.other, self.base))
        return {self.base}.union(*(t.values() for t in tables))

    def version0(self, state_dict: Mapping[str, Any]) -> bool:
        """A version-0 legacy spectral norm: W_orig and the stored W, no v."""
        return self.kind == "spectral_norm" and self.base in state_dict and self.legacy["weight"] in state_dict


def _stored_layouts(keys: _Keys, state_dict: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(layout, its keys present) for each layout the tensor is stored in."""
    plain = [keys.base] if keys.base in state_dict and not keys.version0(state_dict) else []
    present = (
        ("legacy", [k for k in keys.legacy.values() if k in state_dict]),
        ("parametrizations", [k for k in keys.param.values() if k in state_dict]),
        ("plain", plain),
    )
    return [(layout, found) for layout, found in present if found]


def _refusal(module: torch.nn.Module, name: str, keys: _Keys, state_dict: Mapping[str, Any]) -> str:
    """Why the stored keys cannot load into this normalization ('' when they can, or when
    nothing is stored: torch then reports missing keys as ``strict`` says)."""
    kind, base, other = keys.kind, keys.base, keys.other
    where = f"{label(module, name)} at {base!r}"
    # <name>_v is shared by both legacy layouts: the other siblings say which one it is.
    distinctive = [k for r, k in legacy_keys(other, base).items() if r != "v" and k in state_dict]
    distinctive += [k for k in parametrization_keys(other, base).values() if k in state_dict and k not in keys.param.values()]
    if distinctive:
        return (
            f"state_dict key {distinctive[0]!r} belongs to a {other}, but {where} is "
            f"{_ADJECTIVE[kind]}. Normalize that layer with paranorm.{other} to match the "
            f"checkpoint, or convert the checkpoint to plain weights with "
            f"{convert_command('plain')} and load those before applying {kind}."
        )
    layouts = _stored_layouts(keys, state_dict)
    if len(layouts) > 1:
        return (
            f"{where} is stored in two layouts at once ({layouts[0][0]}: {layouts[0][1][0]!r}; "
            f"{layouts[1][0]}: {layouts[1][1][0]!r}); a checkpoint must hold one. Keep one of "
            f"them, e.g. rebuild the checkpoint with {convert_command('parametrizations')} "
            "after deleting the stale keys."
        )
    if not layouts:
        return ""
    layout = layouts[0][0]
    if layout == "plain":
        option = f" --{kind.replace('_', '-')} {base}"
        return (
            f"state_dict key {base!r} is a plain weight, but {where} is {_ADJECTIVE[kind]}, so "
            f"it expects {', '.join(repr(k) for k in keys.param.values())}. Convert the "
            f"checkpoint with {convert_command('parametrizations', option)}, "
            "or load it into the model before normalizing."
        )
    stored = keys.param if layout == "parametrizations" else keys.legacy
    mismatch = _shape_mismatch(module, name, kind, stored, state_dict, keys.version0(state_dict))
    if mismatch:
        return f"{where}: {mismatch}"
    if keys.version0(state_dict) and keys.legacy["u"] not in state_dict:
        return (
            f"{where}: version-0 legacy spectral-norm keys need {keys.legacy['u']!r} to "
            f"recover v, and it is missing. Re-export the checkpoint with its u buffer."
        )
    return ""


def _rename_legacy(module: torch.nn.Module, name: str, dim: int, keys: _Keys, state_dict: MutableMapping[str, Any]) -> None:
    """Move the legacy keys of this tensor to the parametrization's (solving a version-0 v)."""
    legacy, param = keys.legacy, keys.param
    chain: Any = module.parametrizations[name]  # type: ignore[index]
    weight_ndim = chain.original.ndim if keys.kind == "spectral_norm" else 0
    if keys.version0(state_dict):
        stored = state_dict.pop(keys.base)
        if weight_ndim > 1:
            state_dict[legacy["v"]] = solve_version0_v(state_dict[legacy["weight"]], stored, state_dict[legacy["u"]], dim)
    if keys.kind == "spectral_norm" and weight_ndim == 1:
        # A 1-D weight is normalized exactly (w / ||w||): the parametrization keeps no u, v.
        for role in ("u", "v"):
            state_dict.pop(legacy[role], None)
    # An incomplete group loads the keys that are there; the absent ones become torch's
    # missing keys, which load_state_dict raises for strict=True and ignores otherwise
    # (torch hands every hook strict=True, so `strict` here says nothing).
    for role, key in legacy.items():
        if key in state_dict:
            state_dict[param[role]] = state_dict.pop(key)


def _keys_hook(name: str, kind: Kind) -> Hook:
    def hook(
        module: torch.nn.Module,
        state_dict: MutableMapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        found = find_normalization(module, name)
        if found is None or found.kind != kind:
            return  # removed or replaced since registration: nothing of ours to load
        keys = _Keys(kind, f"{prefix}{name}")
        refusal = _refusal(module, name, keys, state_dict)
        if refusal:
            # All or nothing: drop every key of this tensor so that it keeps its current value.
            for key in keys.every():
                state_dict.pop(key, None)
            error_msgs.append(refusal)
        elif any(k in state_dict for k in keys.legacy.values()):
            _rename_legacy(module, name, int(getattr(found.parametrization, "dim", 0) or 0), keys, state_dict)

    return hook
