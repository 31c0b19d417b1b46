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

from .._errors import ParanormError

__all__ = ["SecondBackwardError", "normalize_once"]


class SecondBackwardError(ParanormError, RuntimeError):
    """A second backward through the weights one ``normalize_once`` block computed once.

    A RuntimeError too, as torch's own error was, so ``except RuntimeError`` still catches it.
    """


@contextlib.contextmanager
def normalize_once() -> Iterator[None]:
    """Compute each parametrized weight once inside the block; reuse it for every later call.

    Put every forward of one training step inside the block, and ``optimizer.step()`` after
    it: a parameter changed inside the block would not reach the cached weight. ``backward()``
    may run inside or after. Applies to every parametrized module (paranorm's and torch's).

    Call backward once per block, on the sum of the losses: every forward in the block shares
    one normalized weight, and the first backward frees its graph. DCGAN's
    ``errD_real.backward(); errD_fake.backward()`` becomes ``(errD_real + errD_fake).backward()``
    (or pass ``retain_graph=True`` to the first). A second backward inside the block raises
    :class:`SecondBackwardError` saying so.

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
        try:
            yield
        except RuntimeError as error:
            if "backward through the graph a second time" not in str(error):
                raise
            raise SecondBackwardError(
                "normalize_once: a second backward through the weights this block normalized "
                "once; the first backward freed their graph. Sum the losses and call backward "
                "once, e.g. (loss_real + loss_fake).backward(), or pass retain_graph=True to the "
                "first backward."
            ) from error
