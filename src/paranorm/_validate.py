"""Checks run before a normalization touches a module, so a failure leaves it as it was.

Messages carry no prefix: the public function that called the check adds its name
(:func:`paranorm._errors.entry_point`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize
from torch.nn.utils.parametrize import type_before_parametrizations

from ._errors import AlreadyNormalizedError, ParanormError
from ._normalization import find_normalization
from ._sigma.checks import unsupported_reason
from ._sigma.scale import accumulation_dtype, plain_norm_range

__all__ = [
    "LoadCheck",
    "RangeLoadCheck",
    "check_dim",
    "check_eps",
    "check_normalizable",
    "check_not_sharded",
    "check_plain_range",
    "is_sharded",
    "label",
    "plain_range_problem",
    "refuse_out_of_range_loads",
    "slice_max",
    "tensor_names",
    "weight_norm_ratio_problem",
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
    if not tensor.is_floating_point() and not tensor.is_complex() and not tensor.is_quantized:
        raise ParanormError(
            f"{where} has dtype {tensor.dtype}; only floating-point tensors can be "
            f"normalized. Convert it first (module.float() skips integer tensors; for a buffer: "
            f"module.{name} = module.{name}.float()), or pass name= of a floating-point tensor."
        )
    reason = unsupported_reason(tensor, allow_meta=True)  # float8, complex, sparse, quantized
    if reason is not None:
        raise ParanormError(f"{where} {reason}, then normalize.")
    if tensor.numel() == 0:
        raise ParanormError(
            f"{where} is empty (shape {tuple(tensor.shape)}): there is nothing to normalize, "
            "and torch's norm kernels divide by zero on an empty tensor. Give the layer at "
            f"least one input and one output feature, or leave it without {norm}."
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
    """Return ``eps`` as a float after checking it is a finite, non-negative number."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ParanormError(
            f"eps must be a non-negative number, got eps={eps!r} for "
            f"{label(module, name)}. Use e.g. eps=1e-12."
        )
    if not math.isfinite(eps):
        raise ParanormError(
            f"eps must be a non-negative number, got eps={eps!r} for {label(module, name)}: "
            "it must be finite too (an infinite floor on the norm makes every normalized "
            "weight 0). Use e.g. eps=1e-12."
        )
    return float(eps)


def slice_max(tensor: torch.Tensor, dim: int | None) -> torch.Tensor:
    """max |t| per slice along ``dim`` (over every other axis), or of the whole tensor."""
    magnitude = tensor.detach().abs()
    if dim is None:
        return magnitude.amax().reshape(1)
    others = [d for d in range(tensor.ndim) if d != dim]
    return magnitude.amax(dim=others).reshape(-1) if others else magnitude.reshape(-1)


def plain_range_problem(
    tensor: torch.Tensor, dim: int | None, *, whole: bool = False, floor: float = 0.0
) -> str | None:
    """Why torch's unscaled norm kernels would compute a wrong or non-finite norm of
    ``tensor``'s slices along ``dim`` (all of it for None), or None.

    Each slice's largest entry must lie in :func:`paranorm._sigma.scale.plain_norm_range` for
    the slice's size (``whole``: the whole tensor's size, for the power step of spectral norm,
    whose squared norms reach sigma^2 <= numel max^2), and above ``floor`` (spectral norm's
    eps: F.normalize divides by max(norm, eps)). Zero slices are not judged here. One pass
    over the tensor, one host sync: for registration and loading, not for the forward.
    """
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    top = slice_max(tensor, dim).double()
    if not bool(torch.isfinite(top).all()):
        return "holds NaN or infinite entries"
    n = tensor.numel() if whole or dim is None else tensor.numel() // tensor.shape[dim]
    low, high = plain_norm_range(tensor.dtype, n)
    low = max(low, floor)
    nonzero = top[top > 0]
    smallest = float(nonzero.min()) if nonzero.numel() else None
    largest = float(top.max())
    if largest <= high and (smallest is None or smallest >= low):
        return None
    if largest > high or dim is None:
        found = f"largest entry {largest:.3g}"
    else:
        found = f"a slice along dim={dim} whose largest entry is {smallest:.3g}"
    return f"has {found}, outside [{low:.3g}, {high:.3g}]"


def weight_norm_ratio_problem(g: torch.Tensor, v: torch.Tensor, dim: int | None) -> str | None:
    """Why torch's weight-norm kernel, which computes v (g / ||v||), would get g / ||v|| wrong
    (under- or overflowing its accumulation dtype while g v / ||v|| itself may be normal: g
    1e-30 and v 1e15 give 0), or None. ||v|| lies between a slice's largest entry m and
    sqrt(n) m, which bounds the ratio without computing the norm. Zero g is exact (0)."""
    if v.device.type == "meta" or g.device.type == "meta" or v.numel() == 0 or g.shape != _kept_shape(v, dim):
        return None
    top = slice_max(v, dim).double().reshape(g.shape)
    gd = g.detach().double().abs()
    n = v.numel() // max(top.numel(), 1)
    info = torch.finfo(accumulation_dtype(v.dtype))
    low = gd / (top * math.sqrt(n))
    high = gd / top
    bad_low = (gd > 0) & (low < info.tiny / info.eps)
    bad_high = high > info.max / 4
    if not bool((bad_low | bad_high).any()):
        return None
    ratio = float(low[bad_low].min()) if bool(bad_low.any()) else float(high[bad_high].max())
    return (
        f"has g / ||v|| reaching {ratio:.3g}, outside [{info.tiny / info.eps:.3g}, "
        f"{info.max / 4:.3g}]"
    )


def _kept_shape(v: torch.Tensor, dim: int | None) -> torch.Size:
    """The shape of g for ``v`` and ``dim``: norm_except_dim's (0-dim for the whole tensor)."""
    if dim is None:
        return torch.Size([])
    return torch.Size([s if d == dim else 1 for d, s in enumerate(v.shape)])


def check_plain_range(
    module: nn.Module, name: str, tensor: torch.Tensor, dim: int | None, what: str, fix: str,
    *, whole: bool = False, floor: float = 0.0,
) -> None:
    """Raise if torch's kernels behind ``what`` compute ``module.<name>``'s norms wrongly
    (:func:`plain_range_problem`); ``fix`` says what to do instead."""
    problem = plain_range_problem(tensor, dim, whole=whole, floor=floor)
    if problem is not None:
        raise ParanormError(_range_message(label(module, name), problem, what, tensor.dtype, fix))


def _range_message(where: str, problem: str, what: str, dtype: torch.dtype, fix: str) -> str:
    return (
        f"{where} {problem}, the range of magnitudes in which {what} computes its norms "
        f"correctly in {dtype} (its kernels square the entries unscaled: beyond it they "
        f"overflow or underflow, and the weight comes out NaN, inf or wrong). {fix}"
    )


LoadCheck = Callable[[Any, dict[str, torch.Tensor]], "tuple[str, str] | None"]


def refuse_out_of_range_loads(
    module: nn.Module, name: str, kind: type[nn.Module], check: LoadCheck, what: str, fix: str,
) -> None:
    """Refuse, at ``load_state_dict``, values that the registration checks would refuse.

    A load_state_dict pre-hook on ``module`` (:class:`RangeLoadCheck`), run after the hook
    that renames other layouts' keys, raises before any tensor of ``module`` is copied. It does
    nothing unless a ``kind`` parametrization is on ``module.<name>`` (it may have been removed
    or replaced since; a deep copy keeps the hook and finds its own), and it pickles with the
    module, so that a folded model still saves whole.
    """
    installed = module.__dict__.setdefault("_paranorm_load_checks", set())
    if (name, kind) not in installed:  # once per tensor and kind, however often re-applied
        installed.add((name, kind))
        module._register_load_state_dict_pre_hook(RangeLoadCheck(name, kind, check, what, fix), with_module=True)


class RangeLoadCheck:
    """The pre-hook of :func:`refuse_out_of_range_loads`: ``check(parametrization, incoming)``,
    ``incoming`` the state_dict's tensors ``parametrizations.<name>.<key>`` by key, returns
    (key, problem) or None (one pass over them, one host sync per load). A class, not a
    closure: a module's hooks are pickled with it."""

    def __init__(self, name: str, kind: type[nn.Module], check: LoadCheck, what: str, fix: str) -> None:
        self.name, self.kind, self.check, self.what, self.fix = name, kind, check, what, fix

    def __call__(self, mod: nn.Module, state_dict: Any, prefix: str, *args: Any) -> None:
        name = self.name
        if not parametrize.is_parametrized(mod, name):
            return
        found = next((p for p in mod.parametrizations[name] if isinstance(p, self.kind)), None)  # type: ignore[index]
        if found is None:
            return
        head = f"{prefix}parametrizations.{name}."
        incoming = {
            k[len(head):]: v for k, v in state_dict.items()
            if k.startswith(head) and isinstance(v, torch.Tensor)
        }  # fmt: skip
        failed = self.check(found, incoming)
        if failed is not None:
            key, problem = failed
            where = f"{label(mod, name)} (state_dict key {head + key!r})"
            raise ParanormError(
                "load_state_dict: "
                + _range_message(where, problem, self.what, incoming[key].dtype, self.fix)
                + " The module is unchanged."
            )
