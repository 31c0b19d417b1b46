"""Fold normalizations away: plain Parameters holding the effective weights, for inference and export.

Works on paranorm's parametrizations, torch's (``torch.nn.utils.parametrizations``) and torch's
legacy hooks (``torch.nn.utils.weight_norm``/``spectral_norm``), which HiFi-GAN-style vocoders
remove by hand (``remove_weight_norm``) before inference. The folded weight is what the layer
computes in eval mode: w = g v / ||v|| for weight norm, W / sigma with the current u, v for
spectral norm, whatever mode the model is in; no power-iteration step runs while folding.

If a tensor carries a chain of parametrizations that includes a normalization and other
parametrizations, the whole chain is baked into the one tensor, as
``torch.nn.utils.parametrize.remove_parametrizations(..., leave_parametrized=True)`` does: a
parametrized tensor cannot be partly unparametrized. Tensors whose only parametrizations are
not normalizations are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNormLoadStateDictPreHook
from torch.nn.utils.weight_norm import WeightNorm as TorchLegacyWeightNorm

from ._errors import NotNormalizedError, ParanormError, entry_point
from ._normalization import (
    Found,
    Implementation,
    Kind,
    find_normalization,
    legacy_hook,
    normalized_names,
    originals,
)
from ._torch_compat import (
    closure_value,
    drop_load_state_dict_pre_hooks,
    give_private_class,
    own_tensor,
    pop_buffer,
)
from ._validate import RangeLoadCheck, label, tensor_names

__all__ = ["NormalizationInfo", "fold", "is_normalized", "normalizations", "remove"]


@dataclass(frozen=True)
class NormalizationInfo:
    """One normalized tensor: ``<path>.<name>`` carries a ``kind`` from ``implementation``.

    ``dim`` is the kept axis (weight norm; None = whole tensor) or the output-feature axis
    (spectral norm); ``method`` and ``n_power_iterations`` are set for spectral norms.
    """

    path: str
    name: str
    kind: Kind
    implementation: Implementation
    dim: int | None = None
    method: str | None = None
    n_power_iterations: int | None = None


def _check_module(module: object) -> None:
    if not isinstance(module, nn.Module):
        raise ParanormError(
            f"expected an nn.Module, got {type(module).__name__}. Pass the model or layer itself."
        )


def _check_tensor(module: nn.Module, name: str) -> None:
    """Raise unless ``module`` has a tensor ``name``, without computing a parametrized one."""
    has = isinstance(name, str) and (
        own_tensor(module, name) is not None
        or parametrize.is_parametrized(module, name)
        or legacy_hook(module, name) is not None
    )
    if not has:
        found = ", ".join(tensor_names(module)) or "none"
        raise ParanormError(
            f"{parametrize.type_before_parametrizations(module).__name__} has no parameter "
            f"or buffer named {name!r} (found: {found}). Pass name= one of those."
        )


@entry_point("is_normalized")
def is_normalized(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a weight or spectral normalization (any implementation).

    Raises:
        ParanormError: ``module`` is not an nn.Module or has no tensor ``name``.

    Example:
        >>> import torch, paranorm as pn
        >>> layer = pn.weight_norm(torch.nn.Linear(3, 4))
        >>> pn.is_normalized(layer), pn.is_normalized(layer, "bias")
        (True, False)
    """
    _check_module(module)
    _check_tensor(module, name)
    return find_normalization(module, name) is not None


def _torch_dim(dim: int | None) -> int | None:
    """torch stores weight norm's "whole tensor" as dim=-1; report it as None."""
    return None if dim is None or dim == -1 else int(dim)


def _info(path: str, module: nn.Module, name: str, found: Found) -> NormalizationInfo:
    source = (
        found.parametrization if found.parametrization is not None else legacy_hook(module, name)
    )
    dim = getattr(source, "dim", None)
    if found.kind == "weight_norm":
        # paranorm keeps None as None; torch (both APIs) stores it as -1, never a real axis there.
        dim = dim if found.implementation == "paranorm" else _torch_dim(dim)
        return NormalizationInfo(path, name, found.kind, found.implementation, dim)
    method = getattr(source, "method", "reshape")
    n_iterations = getattr(source, "n_power_iterations", None)
    return NormalizationInfo(
        path, name, found.kind, found.implementation, dim, method, n_iterations
    )


@entry_point("normalizations")
def normalizations(model: nn.Module) -> list[NormalizationInfo]:
    """List every weight/spectral normalization in ``model``, in ``named_modules`` order.

    Raises:
        ParanormError: ``model`` is not an nn.Module.

    Example:
        >>> import torch, paranorm as pn
        >>> model = torch.nn.Sequential(pn.weight_norm(torch.nn.Linear(3, 4)), torch.nn.ReLU(),
        ...                             torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 2)))
        >>> [(i.path, i.kind, i.implementation) for i in pn.normalizations(model)]
        [('0', 'weight_norm', 'paranorm'), ('2', 'spectral_norm', 'torch')]
    """
    _check_module(model)
    infos = []
    for path, module in model.named_modules():
        for name in dict.fromkeys(normalized_names(module)):
            found = find_normalization(module, name)
            if found is not None:
                infos.append(_info(path, module, name, found))
    return infos


def _drop_load_pre_hooks(module: nn.Module, name: str) -> None:
    """Drop the load_state_dict pre-hooks left for ``name``: paranorm's range check, and
    torch's leftovers.

    torch.nn.utils.parametrizations.weight_norm leaves a local function behind after
    remove_parametrizations (the module then cannot be pickled), and
    torch.nn.utils.remove_spectral_norm misses its own pre-hook (torch wraps it), which then
    makes the plain module ask for ``weight_orig`` when loading a plain state_dict.
    """

    def ours(hook: object) -> bool:
        torch_wn = (
            getattr(hook, "__name__", "") == "_weight_norm_compat_hook"
            and closure_value(hook, "name") == name
        )
        torch_sn = isinstance(hook, SpectralNormLoadStateDictPreHook) and hook.fn.name == name
        return torch_wn or torch_sn or (isinstance(hook, RangeLoadCheck) and hook.name == name)

    drop_load_state_dict_pre_hooks(module, ours)
    checks = module.__dict__.get("_paranorm_load_checks")
    if checks is not None:  # a later registration on ``name`` installs its own check again
        checks.difference_update({c for c in checks if c[0] == name})
        if not checks:
            del module.__dict__["_paranorm_load_checks"]


def _restore_parameter(
    module: nn.Module, name: str, as_parameter: bool, requires_grad: bool
) -> None:
    """Make ``module.<name>`` a Parameter again if its originals were, with their requires_grad."""
    if not as_parameter:
        return
    value = own_tensor(module, name)
    if not isinstance(value, nn.Parameter):  # torch registered the baked tensor as a buffer
        plain = pop_buffer(module, name)
        assert plain is not None  # torch registers a non-Parameter result as a buffer
        module.register_parameter(name, nn.Parameter(plain.detach(), requires_grad=requires_grad))
    elif value.requires_grad != requires_grad:
        value.requires_grad_(requires_grad)


def _bake_parametrized(module: nn.Module, name: str) -> None:
    chain: parametrize.ParametrizationList = module.parametrizations[name]  # type: ignore[index,assignment]
    tensors = originals(chain)
    as_parameter = all(isinstance(t, nn.Parameter) for t in tensors)
    requires_grad = any(t.requires_grad for t in tensors)
    members = list(chain)
    # Eval mode: spectral norm then uses its current u, v without a power step.
    modes = [(m, m.training) for m in chain.modules()]
    chain.eval()
    give_private_class(module)
    try:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    except Exception:
        for m, training in modes:  # leave the module as it was
            m.training = training
        raise
    for member in members:
        handle = getattr(member, "_load_hook", None)
        if handle is not None:  # paranorm's legacy-key renamer
            handle.remove()
            del member._load_hook
    _drop_load_pre_hooks(module, name)
    _restore_parameter(module, name, as_parameter, requires_grad)


def _remove_legacy(module: nn.Module, name: str) -> None:
    hook = legacy_hook(module, name)
    if isinstance(hook, TorchLegacyWeightNorm):
        g, v = own_tensor(module, f"{name}_g"), own_tensor(module, f"{name}_v")
        requires_grad = bool(g.requires_grad or v.requires_grad)  # type: ignore[union-attr]
        torch.nn.utils.remove_weight_norm(module, name)
    else:
        requires_grad = bool(own_tensor(module, f"{name}_orig").requires_grad)  # type: ignore[union-attr]
        torch.nn.utils.remove_spectral_norm(module, name)  # no power step: do_power_iteration=False
        _drop_load_pre_hooks(module, name)
    _restore_parameter(module, name, True, requires_grad)


@entry_point("remove")
def remove(module: nn.Module, name: str = "weight") -> nn.Module:
    """Replace the normalization on ``module.<name>`` by a plain tensor holding its eval-mode value.

    Dtype, device, Parameter-ness and requires_grad are kept; paranorm's and torch's
    load_state_dict pre-hooks for the tensor go too, so the module pickles. A chain of
    parametrizations that includes the normalization is baked whole (see the module docstring).

    Returns:
        ``module``, with ``<name>`` a plain Parameter (or buffer, if it was one).

    Raises:
        ParanormError: not an nn.Module, no tensor ``name``.
        NotNormalizedError: ``module.<name>`` carries no weight or spectral normalization.

    Example:
        >>> import torch, paranorm as pn
        >>> layer = pn.spectral_norm(torch.nn.Linear(3, 4)).eval()
        >>> before = layer.weight
        >>> layer = pn.remove(layer)
        >>> type(layer).__name__, sorted(layer.state_dict()), torch.equal(layer.weight, before)
        ('Linear', ['bias', 'weight'], True)
    """
    _check_module(module)
    _check_tensor(module, name)
    found = find_normalization(module, name)
    if found is None:
        other = (
            " Its parametrizations are none of those; use "
            "torch.nn.utils.parametrize.remove_parametrizations for them."
            if parametrize.is_parametrized(module, name)
            else ""
        )
        raise NotNormalizedError(
            f"{label(module, name)} carries no weight or spectral normalization, so there is "
            f"nothing to remove.{other} paranorm.normalizations(model) lists the normalized tensors."
        )
    if found.parametrization is not None:
        _bake_parametrized(module, name)
    else:
        _remove_legacy(module, name)
    return module


@entry_point("fold")
def fold(model: nn.Module) -> nn.Module:
    """Remove every weight/spectral normalization in ``model``; return it, computing the same.

    Each normalized tensor becomes a plain Parameter equal to the value eval mode computes
    (g v / ||v||, or W / sigma with the stored u, v: no power step, in any mode), with its dtype,
    device and requires_grad. The state_dict then has plain keys (``weight``), the model can be
    pickled and exported, and an eval forward gives the same output, bit for bit.

    Raises:
        ParanormError: ``model`` is not an nn.Module.

    Example:
        >>> import torch, paranorm as pn
        >>> model = torch.nn.Sequential(pn.weight_norm(torch.nn.Linear(3, 4)), torch.nn.Tanh(),
        ...                             pn.spectral_norm(torch.nn.Linear(4, 2))).eval()
        >>> x = torch.randn(5, 3)
        >>> before = model(x)
        >>> model = pn.fold(model)
        >>> torch.equal(model(x), before), sorted(model.state_dict()), pn.normalizations(model)
        (True, ['0.bias', '0.weight', '2.bias', '2.weight'], [])
    """
    _check_module(model)
    targets = [
        (module, name)
        for _, module in model.named_modules()
        for name in dict.fromkeys(normalized_names(module))
    ]
    for module, name in targets:
        remove(module, name)
    return model
