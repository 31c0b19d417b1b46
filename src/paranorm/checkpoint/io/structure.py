"""What a checkpoint file holds: its state dicts, found wherever a training script nested them,
and checks of every tensor before anything computes with it.

A state dict is a mapping of string keys to tensors (a count or a step may sit beside them, no
nested mapping). A training checkpoint nests them: ``{"state_dict": ...}`` (Lightning, DAC),
``{"model": ...}``, ``{"generator": ...}`` (HiFi-GAN, BigVGAN), ``{"mpd": ..., "msd": ...,
"optim_g": ..., "steps": ...}`` (their discriminator files). Every one is found, named by its
path of keys ("mpd", or "model/generator"); optimizer states (``state`` and ``param_groups``)
are not state dicts of a model and are left alone, as is every other entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..._errors import CheckpointError
from . import limits
from .messages import short, size_text, where

__all__ = [
    "Checkpoint",
    "check_state_dict",
    "check_tensors",
    "find_state_dicts",
    "is_state_dict",
    "tensors_in",
]

#: How deep a state dict is looked for inside a training checkpoint.
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as read: the whole object, where its state dicts are, and metadata.

    Attributes:
        obj: what the file holds (a state_dict, or a dict nesting one or several).
        parts: the key paths of the state dicts inside ``obj``; ``()`` is ``obj`` itself.
        metadata: a safetensors file's ``__metadata__``, else None.
    """

    obj: Any
    parts: tuple[tuple[str, ...], ...] = ((),)
    metadata: dict[str, str] | None = None

    @property
    def names(self) -> list[str]:
        """Each state dict's name: its key path joined by "/" ("" for the file itself)."""
        return ["/".join(part) for part in self.parts]

    @property
    def state_dicts(self) -> dict[str, Mapping[str, Any]]:
        """Name -> state dict (an OrderedDict keeps the ``_metadata`` legacy spectral norm needs)."""
        return {"/".join(part): _at(self.obj, part) for part in self.parts}

    @property
    def nested(self) -> str | None:
        """The entry that holds the only state dict, or None when the file is one."""
        return self.names[0] or None if len(self.parts) == 1 else None

    @property
    def state_dict(self) -> Mapping[str, Any]:
        """The only state dict; several are an error that names them (pick one with ``select``)."""
        if len(self.parts) != 1:
            raise CheckpointError(
                f"the checkpoint holds {len(self.parts)} state dicts ({', '.join(map(repr, self.names))}); "
                "pick one (on the command line: --key NAME)."
            )
        return _at(self.obj, self.parts[0])

    def select(self, name: str) -> Checkpoint:
        """This checkpoint with only the state dict ``name`` (an error names the ones it has)."""
        for part in self.parts:
            if "/".join(part) == name:
                return Checkpoint(self.obj, (part,), self.metadata)
        raise CheckpointError(
            f"the checkpoint has no state dict {name!r}; it has "
            f"{', '.join(repr(n) if n else repr('') + ' (the file itself)' for n in self.names)}."
        )

    def replaced(self, new: Mapping[str, Any]) -> Any:
        """``obj`` with the state dicts named in ``new`` replaced; every other entry is the same
        object as before (containers along the way are shallow copies)."""
        obj = self.obj
        for name, state in new.items():
            part = next(p for p in self.parts if "/".join(p) == name)
            obj = _replace(obj, part, state)
        return obj


def _at(obj: Any, part: tuple[str, ...]) -> Any:
    for key in part:
        obj = obj[key]
    return obj


def _replace(obj: Any, part: tuple[str, ...], value: Any) -> Any:
    if not part:
        return value
    copy = dict(obj)
    copy[part[0]] = _replace(obj[part[0]], part[1:], value)
    return copy


def tensors_in(obj: Any) -> Iterator[tuple[tuple[Any, ...] | None, torch.Tensor]]:
    """Every tensor in ``obj`` (dicts, lists, tuples), with its path; each container once.

    Iterative, and the path is a linked (parent, key) node: a pickle may nest a million deep or
    hold itself.
    """
    stack: list[tuple[tuple[Any, ...] | None, Any]] = [(None, obj)]
    seen: set[int] = set()
    while stack:
        node, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield node, item
        elif isinstance(item, (Mapping, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = list(item.items() if isinstance(item, Mapping) else enumerate(item))
            stack.extend(((node, key), value) for key, value in reversed(pairs))


def _tensor_problem(tensor: torch.Tensor, dense: bool) -> str | None:
    """Why ``tensor`` cannot be used as read from a file, or None."""
    if tensor.device.type == "meta":
        return (
            "is on the meta device: the file stores its shape but no values (a model saved "
            "before its weights were loaded). Save the state_dict of a model with its weights"
        )
    if tensor.layout != torch.strided:
        if not dense:
            return None
        return (
            f"is a {str(tensor.layout).removeprefix('torch.')} tensor; paranorm computes with dense "
            "tensors only. Save it dense (tensor.to_dense())"
        )
    if tensor.is_quantized and dense:
        return (
            f"is quantized ({tensor.dtype}); paranorm computes with float weights only. Save the "
            "float weights (tensor.dequantize())"
        )
    size, stored = tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes()
    if size > limits.EXPANDED_RATIO * stored and size > limits.EXPANDED_MIN:
        return (
            f"would take {size_text(size)} in memory from {size_text(stored)} stored in the file (shape "
            f"{tuple(tensor.shape)}, strides {tensor.stride()} repeat the stored values); "
            "paranorm refuses such expanded tensors. Save tensor.clone() instead if it is meant"
        )
    return None


def check_tensors(obj: Any, path: Path, size: int, dense_within: Any) -> None:
    """Refuse a tensor that has no values, would fill the memory, or (in ``dense_within``) is
    not dense; and a file whose tensors together would take absurdly more than it stores."""
    total = 0
    dense_ids = {id(t) for _, t in tensors_in(dense_within)} if dense_within is not None else set()
    for node, tensor in tensors_in(obj):
        problem = _tensor_problem(tensor, id(tensor) in dense_ids)
        if problem is not None:
            raise CheckpointError(f"{str(path)!r}: tensor {where(node)} {problem}.")
        if tensor.layout == torch.strided:
            total += tensor.numel() * tensor.element_size()
    if total > max(limits.EXPANDED_RATIO * size, limits.EXPANDED_MIN):
        raise CheckpointError(
            f"{str(path)!r}: its tensors would take {size_text(total)} in memory from a file of "
            f"{size_text(size)} (many views of the same stored values); paranorm refuses to expand "
            "them. Save each tensor once (tensor.clone()) if that is meant."
        )


def is_state_dict(obj: Any) -> bool:
    """A mapping with tensors of at least one axis and no nested mappings (a count or a step
    may sit beside them)."""
    if not isinstance(obj, Mapping):
        return False
    values = list(obj.values())
    tensors = [t for t in values if isinstance(t, torch.Tensor)]
    return any(t.ndim > 0 for t in tensors) and not any(isinstance(t, Mapping) for t in values)


def _optimizer_state(obj: Mapping[Any, Any]) -> bool:
    return "param_groups" in obj and "state" in obj


def find_state_dicts(obj: Any) -> list[tuple[str, ...]]:
    """The key paths of the state dicts in ``obj``: ``[()]`` when it is one, else every mapping
    under string keys (to a depth of 4) that is one, in key order; optimizer states excluded."""
    if is_state_dict(obj):
        return [()]
    found: list[tuple[str, ...]] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), obj)]
    seen: set[int] = set()
    while stack:
        part, item = stack.pop()
        if not isinstance(item, Mapping) or id(item) in seen or _optimizer_state(item):
            continue
        seen.add(id(item))
        children = [((*part, k), v) for k, v in item.items() if isinstance(k, str) and isinstance(v, Mapping)]
        for child_part, child in children:
            if is_state_dict(child):
                found.append(child_part)
        if len(part) + 1 < _MAX_DEPTH:
            stack.extend((p, c) for p, c in reversed(children) if not is_state_dict(c))
    return sorted(found, key=lambda p: _order(obj, p))


def _order(obj: Any, part: tuple[str, ...]) -> tuple[int, ...]:
    """The position of ``part`` in ``obj``'s key order, level by level."""
    positions = []
    for key in part:
        positions.append(list(obj).index(key))
        obj = obj[key]
    return tuple(positions)


def _metadata_problem(metadata: Any) -> str | None:
    """What is wrong with a state_dict's ``_metadata`` (module -> {"version", ...}), or None."""
    if not isinstance(metadata, Mapping):
        return f"it is a {type(metadata).__name__}, not a dict"
    for module, local in metadata.items():
        if not isinstance(module, str) or not isinstance(local, Mapping):
            return f"its entry {short(module, 60)} is not a module name with a dict"
        versions = local.get("spectral_norm", {})
        if not isinstance(versions, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in versions.values()
        ):
            return f"the spectral_norm versions of {short(module, 60)} are not ints"
    return None


def check_state_dict(state: Mapping[Any, Any], path: Path) -> None:
    odd = next((k for k in state if not isinstance(k, str)), None)
    if odd is not None:
        raise CheckpointError(
            f"{str(path)!r} holds a dict of tensors whose key {short(odd, 60)} is a "
            f"{type(odd).__name__}; a state_dict's keys are strings (module paths such as "
            "'conv.weight'). Save the model's state_dict() instead."
        )
    metadata = getattr(state, "_metadata", None)
    problem = None if metadata is None else _metadata_problem(metadata)
    if problem is not None:
        raise CheckpointError(
            f"{str(path)!r}: the state_dict's _metadata (torch's per-module versions) is "
            f"malformed: {problem}. Save the model's state_dict() again."
        )


