"""Registering a normalization on a module: the steps weight norm and spectral norm share."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from ._fast.scaled import install_scaled_forward
from ._normalization import Normalization
from ._torch_compat import key_cache_by_instance
from .checkpoint.load_hooks import spectral_norm_keys_hook, weight_norm_keys_hook

__all__ = ["register"]


def register(module: nn.Module, name: str, parametrization: Normalization, *, unsafe: bool = False) -> nn.Module:
    """Register ``parametrization`` on ``module.<name>`` with torch's parametrize, and with it:
    the per-instance cache (``normalize_once`` with deep copies), the fast paths' scaled forward
    (for ``weight``) and the load hook that accepts every checkpoint layout."""
    parametrize.register_parametrization(module, name, parametrization, unsafe=unsafe)
    key_cache_by_instance(module, name)  # normalize_once: deep copies get their own weight
    if name == "weight":  # fast_paths(): scale activations instead of materializing W
        install_scaled_forward(module)
    hook = weight_norm_keys_hook if parametrization.kind == "weight_norm" else spectral_norm_keys_hook
    parametrization._load_hook = module._register_load_state_dict_pre_hook(hook(name), with_module=True)
    return module
