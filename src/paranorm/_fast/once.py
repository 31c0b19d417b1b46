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

from torch.nn.utils import parametrize

__all__ = ["normalize_once"]


@contextlib.contextmanager
def normalize_once() -> Iterator[None]:
    """Compute each parametrized weight once inside the block; reuse it for every later call.

    Put every forward of one training step inside the block, and ``optimizer.step()`` after
    it: a parameter changed inside the block would not reach the cached weight. ``backward()``
    may run inside or after. Applies to every parametrized module (paranorm's and torch's).

    A deep copy of a model normalized by paranorm (an EMA copy of a generator, say) gets its own
    cached weight; one normalized with torch's own parametrizations shares the original's inside
    the block (torch 2.13). Inside the block the fast paths' scaled forward is not used: the
    cached weight is.

    Example:
        >>> import torch, paranorm as pn
        >>> d = pn.spectral_norm(torch.nn.Linear(4, 1))
        >>> with pn.normalize_once():
        ...     loss = d(torch.randn(3, 4)).mean() - d(torch.randn(3, 4)).mean()
        >>> loss.backward()
        >>> d.weight.shape  # outside the block: recomputed on access, as usual
        torch.Size([1, 4])
    """
    with parametrize.cached():
        yield
