"""The switch of the fast paths: off by default, process-wide, read at every forward.

A module-level flag rather than a ``contextvars.ContextVar``: torch.compile (dynamo, torch
2.13) cannot trace ``ContextVar.get()`` with ``fullgraph=True``, and the switch is read inside
every compiled forward. :func:`fast_paths` restores the previous setting on exit, exceptions
included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["enabled", "fast_paths", "fast_paths_enabled", "set_fast_paths"]

_ENABLED = False


def enabled() -> bool:
    """The switch, for the forward passes (the same as :func:`fast_paths_enabled`)."""
    return _ENABLED


def fast_paths_enabled() -> bool:
    """Whether the fast paths are on (False unless switched on)."""
    return _ENABLED


def set_fast_paths(enabled: bool) -> bool:
    """Turn the fast paths on or off for the whole process; return the old setting.

    Read at every forward, so it applies to modules normalized before the call too.
    """
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


@contextlib.contextmanager
def fast_paths(enabled: bool = True) -> Iterator[None]:
    """Turn the fast paths (fused spectral norm, scaled activations) on or off in a ``with`` block.

    Process-wide while the block runs; the previous setting comes back when it ends.

    Example:
        >>> import torch, paranorm as pn
        >>> layer = pn.spectral_norm(torch.nn.Linear(8, 8))
        >>> with pn.fast_paths():
        ...     layer(torch.randn(2, 8)).sum().backward()
        >>> pn.fast_paths_enabled()
        False
    """
    previous = set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(previous)
