"""Normalize once per optimizer step: one normalized weight for all forwards inside a block.

A GAN discriminator is called on the real and on the fake batch in one step. By default each
call recomputes every normalized weight (and, for spectral norm, runs a power step), and the
backward goes through each normalization once per call. Inside :func:`normalize_once` the
weight is computed at its first use and reused: one power step and one normalization backward
per step, whatever the number of calls. It is torch's :func:`torch.nn.utils.parametrize.cached`,
scoped to a ``with`` block and cleared when the block ends, so it cannot go stale across steps
as long as the optimizer steps outside the block.

The math changes for spectral norm only in that the calls of a step share one u, v (one power
step per step instead of one per call); weight norm computes the same numbers either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["key_cache_by_instance", "normalize_once"]


@contextlib.contextmanager
def normalize_once() -> Iterator[None]:
    """Compute each parametrized weight once inside the block; reuse it for every later call.

    Put every forward of one training step inside the block, and ``optimizer.step()`` after
    it: a parameter changed inside the block would not reach the cached weight. ``backward()``
    may run inside or after. Applies to every parametrized module (paranorm's and torch's).

    A deep copy of a model normalized by paranorm (an EMA copy of a generator, say) gets its own
    cached weight (see :func:`key_cache_by_instance`); one normalized with torch's own
    parametrizations shares the original's inside the block (torch 2.13). Inside the block the
    fast paths' scaled forward is not used: the cached weight is.

    Example:
        >>> import torch, paranorm as pn
        >>> d = pn.spectral_norm(torch.nn.Linear(4, 1))
        >>> u = d.parametrizations.weight[0]._u.clone()
        >>> with pn.normalize_once():
        ...     loss = d(torch.randn(3, 4)).mean() - d(torch.randn(3, 4)).mean()
        >>> loss.backward()
        >>> d.weight.shape  # outside the block: recomputed on access, as usual
        torch.Size([1, 4])
    """
    with parametrize.cached():
        yield


def key_cache_by_instance(module: nn.Module, name: str) -> None:
    """Key the cached ``module.<name>`` by the instance it is read from, deep copies included.

    torch's parametrized property keys ``parametrize.cached()``'s entries by the module its
    parametrized class was made for (a closure), and ``copy.deepcopy`` shares that class: inside
    the block a copy would read the original's weight, and its own parameters get no gradient.
    This replaces the property on that class (torch's removal deletes it as usual) with one that
    keys torch's cache by ``id(self)``; outside a cached block it is torch's getter.
    """
    cls = type(module)
    torch_property = cls.__dict__.get(name)
    if not isinstance(torch_property, property) or getattr(torch_property.fget, "_per_instance", False):
        return
    torch_get = torch_property.fget
    assert torch_get is not None

    def get(self: nn.Module) -> torch.Tensor:
        if not parametrize._cache_enabled or torch._C._get_tracing_state() is not None:
            return torch_get(self)  # torch's own path (and its error when tracing while cached)
        key = (id(self), name)
        tensor = parametrize._cache.get(key)
        if tensor is None:
            tensor = self.parametrizations[name]()  # type: ignore[index, operator]
            parametrize._cache[key] = tensor
        return tensor

    get._per_instance = True  # type: ignore[attr-defined]
    setattr(cls, name, property(get, torch_property.fset))
