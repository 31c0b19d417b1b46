"""The one error family of paranorm, and the decorator that names the public entry point.

Every error subclasses :class:`ParanormError`, itself a :class:`ValueError`, so code written
against torch's ``ValueError`` keeps working. A message states the rule, what was expected and
what was found, names the module and the parameter, and says the fix. Code below the public
functions raises messages without a prefix; :func:`entry_point` adds the public function's
name once (``"spectral_norm: ..."``), however deep the error was raised.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "AlreadyNormalizedError",
    "CheckpointError",
    "NotNormalizedError",
    "ParanormError",
    "entry_point",
]


class ParanormError(ValueError):
    """Base class of every error paranorm raises on bad input.

    ``detail`` is the message without the public function's prefix and ``entry`` that
    function's name (None until an entry point names it): a command-line tool prints its own
    prefix and ``detail``.
    """

    entry: str | None = None

    @property
    def detail(self) -> str:
        """The message without the ``"<entry>: "`` prefix."""
        text = str(self.args[0]) if self.args else ""
        prefix = f"{self.entry}: " if self.entry else ""
        return text[len(prefix) :] if prefix and text.startswith(prefix) else text

    def name_entry(self, entry: str) -> None:
        """Prefix the message with ``entry`` unless an inner entry point already did."""
        if self.entry is None:
            self.entry = entry
            self.args = (f"{entry}: {self.args[0] if self.args else ''}", *self.args[1:])


class AlreadyNormalizedError(ParanormError):
    """A tensor already carries a weight or spectral normalization."""


class NotNormalizedError(ParanormError):
    """An operation needs a normalized tensor and found a plain one."""


class CheckpointError(ParanormError):
    """A state_dict cannot be read, converted or loaded as asked."""


F = TypeVar("F", bound=Callable[..., Any])


def entry_point(name: str) -> Callable[[F], F]:
    """Make ``name`` the prefix of every ParanormError that leaves the decorated function."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ParanormError as error:
                error.name_entry(name)
                raise

        return wrapper  # type: ignore[return-value]

    return decorate
