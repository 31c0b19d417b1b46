"""Checks run before a normalization touches a module, so a failure leaves it as it was.

Messages carry no prefix: the public function that called the check adds its name
(:func:`paranorm._errors.entry_point`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils.parametrize import type_before_parametrizations

from ._errors import AlreadyNormalizedError, ParanormError
from ._normalization import find_normalization

__all__ = [
    "check_dim",
    "check_eps",
    "check_normalizable",
    "check_not_sharded",
    "is_sharded",
    "label",
    "tensor_names",
]


def label(module: nn.Module, name: str) -> str:
    """``Conv1d.weight``: how messages name a module's tensor."""
    return f"{type_before_parametrizations(module).__name__}.{name}"


def tensor_names(module: nn.Module) -> list[str]:
    """The parameters, buffers and parametrized tensors of ``module`` itself, sorted."""
    names = [n for n, _ in module.named_parameters(recurse=False)]
    names += [n for n, _ in module.named_buffers(recurse=False)]
    if hasattr(module, "parametrizations"):
        names += list(module.parametrizations)  # type: ignore[arg-type]
    names = [n for n in names if n != "parametrizations"]
    return sorted(set(names))


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter already sharded by FSDP2 or tensor parallel)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def check_not_sharded(module: nn.Module, name: str, norm: str, tensor: torch.Tensor) -> None:
    """Raise if ``module.<name>`` is sharded: normalizations must be applied before sharding."""
    if is_sharded(tensor):
        raise ParanormError(
            f"{label(module, name)} is already sharded (a DTensor, e.g. by "
            "torch.distributed.fsdp.fully_shard); the normalization needs the whole tensor at "
            f"registration. Apply {norm} first, then shard (paranorm.distributed.fully_shard "
            "does both in that order)."
        )


def check_normalizable(module: nn.Module, name: str, norm: str) -> torch.Tensor:
    """Return ``module.<name>`` after checking that ``norm`` can be applied to it.

    Raises:
        ParanormError: not an nn.Module, no such tensor, not floating point, not initialized.
        AlreadyNormalizedError: the tensor already carries a weight or spectral norm.
    """
    if not isinstance(module, nn.Module):
        raise ParanormError(
            f"expected an nn.Module, got {type(module).__name__}. "
            f"Pass the layer itself, e.g. {norm}(nn.Linear(4, 4))."
        )
    where = label(module, name)
    # Before reading module.<name>: on a spectrally normalized tensor that read runs the
    # parametrization, and in training mode that takes a power step on u and v.
    found_norm = find_normalization(module, name)
    if found_norm is not None:
        raise AlreadyNormalizedError(
            f"{where} already has a {found_norm.kind} ({found_norm.implementation}); "
            f"normalizing one tensor twice is almost always a mistake. Remove it first with "
            f"paranorm.remove(module, {name!r}), then apply {norm}."
        )
    # Only registered tensors can be parametrized; a plain tensor attribute cannot.
    registered = isinstance(name, str) and name in tensor_names(module)
    tensor = getattr(module, name, None) if registered else None
    if not isinstance(tensor, torch.Tensor):
        found = ", ".join(tensor_names(module)) or "none"
        fix = "Pass name= one of those."
        if isinstance(name, str) and isinstance(getattr(module, name, None), torch.Tensor):
            fix = (
                f"{name!r} is a plain tensor attribute: register it first (module.register_buffer "
                "or module.register_parameter), or pass name= one of those."
            )
        raise ParanormError(
            f"{type_before_parametrizations(module).__name__} has no parameter or buffer "
            f"named {name!r} (found: {found}). {fix}"
        )
    if isinstance(tensor, UninitializedParameter):
        raise ParanormError(
            f"{where} is a lazy, uninitialized parameter. Run one forward pass "
            "(or module.initialize_parameters(...)) first, then normalize."
        )
    check_not_sharded(module, name, norm, tensor)
    if not tensor.is_floating_point():
        raise ParanormError(
            f"{where} has dtype {tensor.dtype}; only floating-point tensors can be "
            f"normalized. Convert it first (module.float() skips integer tensors; for a buffer: "
            f"module.{name} = module.{name}.float()), or pass name= of a floating-point tensor."
        )
    if tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ParanormError(
            f"{where} has {bad} non-finite (NaN or inf) entries; its normalized weight "
            "would be NaN (and a spectral norm's u, v would stay NaN for good). Initialize or load "
            "finite values first, then normalize."
        )
    return tensor


def check_dim(module: nn.Module, name: str, dim: int, ndim: int) -> int:
    """Return ``dim`` as a non-negative axis of an ``ndim``-D tensor, or raise."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ParanormError(f"dim must be an int or None, got {dim!r} for {label(module, name)}.")
    if not -ndim <= dim < ndim:
        raise ParanormError(
            f"dim={dim} is out of range for {label(module, name)}, which has {ndim} "
            f"dimension(s); expected a dim in [{-ndim}, {ndim - 1}]."
        )
    return dim % ndim


def check_eps(module: nn.Module, name: str, eps: float) -> float:
    """Return ``eps`` as a float after checking it is a non-negative number."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ParanormError(
            f"eps must be a non-negative number, got eps={eps!r} for "
            f"{label(module, name)}. Use e.g. eps=1e-12."
        )
    return float(eps)
