"""The three key layouts of a normalized tensor, and the load hooks that accept any of them.

A weight-normed or spectrally normed ``<prefix><name>`` is stored in one of three layouts:

=================  ===========================================  ==========================================
layout             weight norm (w = g v / ||v||)                spectral norm (w = W / u^T W v)
=================  ===========================================  ==========================================
legacy             ``<name>_g``, ``<name>_v``                   ``<name>_orig``, ``<name>_u``, ``<name>_v``
parametrizations   ``parametrizations.<name>.original0``/``1``  ``parametrizations.<name>.original``,
                                                                ``...0._u``, ``...0._v``
plain              ``<name>`` (the effective weight)            ``<name>``
=================  ===========================================  ==========================================

Legacy is torch.nn.utils.weight_norm/spectral_norm (forward pre-hooks); parametrizations is
torch.nn.utils.parametrizations and paranorm. A version-0 legacy spectral norm (torch < 1.1)
stored ``<name>_orig``, ``<name>`` (W / sigma) and ``<name>_u`` but no ``<name>_v``.

torch calls every load pre-hook with ``strict=True`` whatever the caller passed, and applies
``strict`` itself afterwards to the missing/unexpected key lists; so the hooks never decide
on strictness: an incomplete legacy group loads what is there and leaves the rest to torch's
missing keys (an error with strict=True, ignored with strict=False; torch's own legacy
spectral-norm hook instead raised KeyError, pytorch#21251).

The hooks here are registered by :func:`paranorm.weight_norm` / :func:`paranorm.spectral_norm`
as load_state_dict pre-hooks (``with_module=True``). torch calls them with a private copy of
the state_dict before it copies anything into the module, so renaming keys there is safe.

Failure semantics: torch's ``load_state_dict`` is not transactional. It loads module by module
and raises one RuntimeError at the end listing ``error_msgs`` (and, with ``strict=True``,
missing/unexpected keys), so on failure the modules visited before have been loaded. The hooks
append to ``error_msgs`` (raised with strict=True *and* strict=False: a key of the wrong layout
would otherwise be silently skipped and leave the layer at its initial weights) and drop every
key of the offending tensor, so that tensor is left exactly as it was. (With strict=True and
an incomplete group, the keys that were there are loaded before torch raises: torch's order.)
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import torch

from ._base import Kind, find_normalization
from ._validate import label
from .estimators import weight_to_matrix

__all__ = [
    "convert_command",
    "legacy_keys",
    "parametrization_keys",
    "solve_version0_v",
    "spectral_norm_keys_hook",
    "weight_norm_keys_hook",
]

Role = Literal["g", "v", "weight", "u"]
_ADJECTIVE = {"weight_norm": "weight-normalized", "spectral_norm": "spectrally normalized"}


def legacy_keys(kind: Kind, base: str) -> dict[str, str]:
    """Role -> key of a tensor ``base`` (``prefix + name``) in torch's legacy hook layout."""
    if kind == "weight_norm":
        return {"g": f"{base}_g", "v": f"{base}_v"}
    return {"weight": f"{base}_orig", "u": f"{base}_u", "v": f"{base}_v"}


def parametrization_keys(kind: Kind, base: str) -> dict[str, str]:
    """Role -> key of a tensor ``base`` (``prefix + name``) in the parametrizations layout."""
    prefix, _, name = base.rpartition(".")
    root = f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"
    if kind == "weight_norm":
        return {"g": f"{root}.original0", "v": f"{root}.original1"}
    return {"weight": f"{root}.original", "u": f"{root}.0._u", "v": f"{root}.0._v"}


def convert_command(layout: str, extra: str = "") -> str:
    """The shell command a message points to: ``paranorm convert IN OUT --to <layout>``."""
    return f"`paranorm convert CHECKPOINT OUT --to {layout}{extra}`"


@torch.no_grad()
def solve_version0_v(
    weight_orig: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, dim: int
) -> torch.Tensor:
    """The v a version-0 legacy spectral norm implies, as torch's own load hook computes it.

    Version 0 stored W_orig, W = W_orig / sigma and u = normalize(W_orig v). With
    sigma = mean(W_orig / W), solve W_orig x = u by the pseudo-inverse (least squares) and
    rescale so that u^T W_orig v = sigma. Half precision is solved in float32 (pinverse has no
    half kernels) and cast back.
    """
    work = torch.float32 if weight_orig.dtype in (torch.float16, torch.bfloat16) else weight_orig.dtype
    w_orig, w, u_work = weight_orig.to(work), weight.to(work), u.to(work)
    sigma = (w_orig / w).mean()
    matrix = weight_to_matrix(w_orig, dim)
    v = torch.linalg.multi_dot([matrix.t().mm(matrix).pinverse(), matrix.t(), u_work.unsqueeze(1)]).squeeze(1)
    v = v * (sigma / torch.dot(u_work, torch.mv(matrix, v)))
    return v.to(u.dtype)


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
    state_dict: MutableMapping[str, Any],
    version0: bool,
) -> str:
    """Why the stored tensors do not fit this layer's normalization ('' when they fit).

    torch would report a bare size mismatch; a different ``dim`` is the usual cause (a
    ConvTranspose normalized over the other axis, Wav2Vec2's dim=2), so say so.
    """
    parametrization: Any = module.parametrizations[name]  # type: ignore[union-attr,index]
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


def _keys_hook(name: str, kind: Kind) -> Hook:
    other: Kind = "spectral_norm" if kind == "weight_norm" else "weight_norm"

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
        base = f"{prefix}{name}"
        where = f"{label(module, name)} at {base!r}"
        own_legacy, own_param = legacy_keys(kind, base), parametrization_keys(kind, base)
        other_legacy, other_param = legacy_keys(other, base), parametrization_keys(other, base)
        all_keys = {*own_legacy.values(), *own_param.values(), *other_legacy.values(), *other_param.values()}

        def fail(message: str) -> None:
            # All or nothing: drop every key of this tensor so that it keeps its current value.
            for key in all_keys | {base}:
                state_dict.pop(key, None)
            error_msgs.append(message)

        # <name>_v is shared by both legacy layouts: the other siblings say which one it is.
        distinctive_other = [k for r, k in other_legacy.items() if r != "v" and k in state_dict]
        distinctive_other += [k for k in other_param.values() if k in state_dict and k not in own_param.values()]
        if distinctive_other:
            fail(
                f"state_dict key {distinctive_other[0]!r} belongs to a {other}, but {where} is "
                f"{_ADJECTIVE[kind]}. Normalize that layer with paranorm.{other} to match the "
                f"checkpoint, or convert the checkpoint to plain weights with "
                f"{convert_command('plain')} and load those before applying {kind}."
            )
            return
        legacy_present = [k for k in own_legacy.values() if k in state_dict]
        param_present = [k for k in own_param.values() if k in state_dict]
        version0 = kind == "spectral_norm" and base in state_dict and own_legacy["weight"] in state_dict
        plain_present = base in state_dict and not version0
        layouts = [
            (layout, keys)
            for layout, keys in (("legacy", legacy_present), ("parametrizations", param_present), ("plain", [base] if plain_present else []))
            if keys
        ]
        if len(layouts) > 1:
            fail(
                f"{where} is stored in two layouts at once ({layouts[0][0]}: {layouts[0][1][0]!r}; "
                f"{layouts[1][0]}: {layouts[1][1][0]!r}); a checkpoint must hold one. Keep one of "
                f"them, e.g. rebuild the checkpoint with {convert_command('parametrizations')} "
                "after deleting the stale keys."
            )
            return
        if not layouts:
            return  # nothing stored for this tensor: torch reports missing keys per `strict`
        layout = layouts[0][0]
        if layout == "plain":
            fail(
                f"state_dict key {base!r} is a plain weight, but {where} is {_ADJECTIVE[kind]}, so "
                f"it expects {', '.join(repr(k) for k in own_param.values())}. Convert the "
                f"checkpoint with {convert_command('parametrizations', f' --{kind.replace(chr(95), chr(45))} {base}')}, "
                "or load it into the model before normalizing."
            )
            return
        stored_keys = own_param if layout == "parametrizations" else own_legacy
        mismatch = _shape_mismatch(module, name, kind, stored_keys, state_dict, version0)
        if mismatch:
            fail(f"{where}: {mismatch}")
            return
        if layout == "parametrizations":
            return  # torch's own keys: the parametrization loads them
        if version0:
            if own_legacy["u"] not in state_dict:
                fail(
                    f"{where}: version-0 legacy spectral-norm keys need {own_legacy['u']!r} to "
                    f"recover v, and it is missing. Re-export the checkpoint with its u buffer."
                )
                return
            weight = state_dict.pop(base)
            if module.parametrizations[name].original.ndim > 1:  # type: ignore[union-attr,index]
                state_dict[own_legacy["v"]] = solve_version0_v(
                    state_dict[own_legacy["weight"]], weight, state_dict[own_legacy["u"]], int(found.parametrization.dim)  # type: ignore[union-attr,arg-type]
                )
        if kind == "spectral_norm" and module.parametrizations[name].original.ndim == 1:  # type: ignore[union-attr,index]
            # A 1-D weight is normalized exactly (w / ||w||): the parametrization keeps no u, v.
            for role in ("u", "v"):
                state_dict.pop(own_legacy[role], None)
        # An incomplete group loads the keys that are there; the absent ones become torch's
        # missing keys, which load_state_dict raises for strict=True and ignores otherwise
        # (torch hands every hook strict=True, so `strict` here says nothing).
        for role, key in own_legacy.items():
            if key in state_dict:
                state_dict[own_param[role]] = state_dict.pop(key)

    return hook
