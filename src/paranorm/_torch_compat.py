"""Every access to torch's private state, and every patch of a class torch generates.

paranorm is built on public torch APIs (``torch.nn.utils.parametrize``, ``torch.autograd``)
except for what is gathered here: private attributes it reads, private classes it recognises,
and the three patches it makes to the classes ``parametrize`` generates. This is the file to
open when a new torch release lands; ``tests/test_torch_compat.py`` pins each item against the
installed torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn.utils import parametrizations as torch_parametrizations
from torch.nn.utils import parametrize

__all__ = [
    "BatchNormBase",
    "ConvNd",
    "TorchSpectralNorm",
    "TorchWeightNorm",
    "closure_value",
    "conv_transpose_output_padding",
    "drop_load_state_dict_pre_hooks",
    "forward_pre_hooks",
    "give_private_class",
    "key_cache_by_instance",
    "own_tensor",
    "parametrize_cache_active",
    "pop_buffer",
    "reference_graph_needed",
    "set_parametrized_forward",
    "tracing",
    "weight_norm_kernel",
]

#: torch.nn.utils.parametrizations' own parametrization classes.
TorchWeightNorm: type[nn.Module] = torch_parametrizations._WeightNorm
TorchSpectralNorm: type[nn.Module] = torch_parametrizations._SpectralNorm
#: The base classes of torch's convolutions and of its batch norms.
ConvNd = nn.modules.conv._ConvNd
BatchNormBase = nn.modules.batchnorm._NormBase


def weight_norm_kernel(v: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """torch's weight-norm op, g v / ||v|| (fused kernels for dim 0 and last; -1 = whole tensor)."""
    return torch._weight_norm(v, g, dim)


# --- module internals ------------------------------------------------------------------------


def forward_pre_hooks(module: nn.Module) -> list[Any]:
    """The forward pre-hooks of ``module`` (torch's legacy weight/spectral norm live there)."""
    return list(module._forward_pre_hooks.values())


def own_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module``'s own parameter or buffer ``name`` (not a parametrized property), or None."""
    value = module._parameters.get(name)
    return value if value is not None else module._buffers.get(name)


def pop_buffer(module: nn.Module, name: str) -> torch.Tensor | None:
    """Unregister the buffer ``name`` of ``module``; return it."""
    return module._buffers.pop(name, None)


def closure_value(fn: object, var: str) -> object:
    """The value of the free variable ``var`` of the function ``fn``, or None."""
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None) or ()
    if code is None or var not in code.co_freevars:
        return None
    return closure[code.co_freevars.index(var)].cell_contents


def drop_load_state_dict_pre_hooks(module: nn.Module, matches: Callable[[Any], bool]) -> None:
    """Remove the load_state_dict pre-hooks of ``module`` for which ``matches(hook)`` holds.

    torch wraps some hooks (``.hook`` is the function); ``matches`` sees the unwrapped one.
    """
    for key, wrapped in list(module._load_state_dict_pre_hooks.items()):
        if matches(getattr(wrapped, "hook", wrapped)):
            del module._load_state_dict_pre_hooks[key]


def conv_transpose_output_padding(
    module: Any, x: torch.Tensor, output_size: Any, spatial: int
) -> tuple[int, ...]:
    """The output_padding a ConvTranspose uses to reach ``output_size`` (torch's own rule)."""
    return tuple(
        module._output_padding(
            x, output_size, module.stride, module.padding, module.kernel_size, spatial,
            module.dilation,
        )
    )


# --- execution state ------------------------------------------------------------------------


def parametrize_cache_active() -> bool:
    """Whether a ``torch.nn.utils.parametrize.cached()`` block is running."""
    return bool(parametrize._cache_enabled)


def tracing() -> bool:
    """Whether ``torch.jit.trace`` is recording."""
    return torch._C._get_tracing_state() is not None


def reference_graph_needed() -> bool:
    """Whether a torch.func transform (grad, vmap, jacrev, ...), forward-mode AD or
    ``torch.jit.trace`` is running: custom autograd Functions without ``vmap``/``jvp`` must
    step aside for plain autograd ops there (a trace would record them as Python calls)."""
    if torch.compiler.is_compiling():
        return False
    return (
        torch._C._functorch.maybe_current_level() is not None
        or forward_ad._current_level >= 0
        or tracing()
    )


# --- patches of the classes torch.nn.utils.parametrize generates ----------------------------


def set_parametrized_forward(module: nn.Module, forward: Callable[..., torch.Tensor]) -> bool:
    """Set ``forward`` on the class parametrize generated for ``module``; True if set.

    torch restores the original class, and with it the original forward, when the last
    parametrization is removed. Nothing is set on a module that is not parametrized, or whose
    generated class already has a forward of its own.
    """
    cls = type(module)
    if not parametrize.is_parametrized(module) or "forward" in cls.__dict__:
        return False
    cls.forward = forward
    return True


def key_cache_by_instance(module: nn.Module, name: str) -> None:
    """Key the cached ``module.<name>`` by the instance it is read from, deep copies included.

    torch's parametrized property keys ``parametrize.cached()``'s entries by the module its
    generated class was made for (a closure), and ``copy.deepcopy`` shares that class: inside
    the block a copy would read the original's weight, and its own parameters get no gradient.
    This replaces the property on that class (torch's removal deletes it as usual) with one that
    keys torch's cache by ``id(self)``; outside a cached block it is torch's getter.
    """
    cls = type(module)
    torch_property = cls.__dict__.get(name)
    if not isinstance(torch_property, property) or getattr(torch_property.fget, "_per_instance", False):
        return
    torch_get = torch_property.fget
    if torch_get is None:
        return

    def get(self: nn.Module) -> torch.Tensor:
        if not parametrize._cache_enabled or tracing():
            return torch_get(self)  # torch's own path (and its error when tracing while cached)
        key = (id(self), name)
        tensor = parametrize._cache.get(key)
        if tensor is None:
            tensor = self.parametrizations[name]()  # type: ignore[index, operator]
            parametrize._cache[key] = tensor
        return tensor

    get._per_instance = True  # type: ignore[attr-defined]
    setattr(cls, name, property(get, torch_property.fset))


def give_private_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its generated ``Parametrized<Layer>`` class.

    torch's deepcopy of a parametrized module shares that class with the original, and
    remove_parametrizations deletes the tensor's property from the class: folding the copy
    would strip ``weight`` from the original too. A private class keeps the two apart.
    """
    cls = type(module)
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)

