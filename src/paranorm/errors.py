"""The one error family of paranorm.

Every error subclasses :class:`ParanormError`, itself a :class:`ValueError`, so code written
against torch's ``ValueError`` keeps working. A message states the rule, what was expected and
what was found, names the module and the parameter, and says the fix.
"""

from __future__ import annotations

__all__ = ["AlreadyNormalizedError", "CheckpointError", "NotNormalizedError", "ParanormError"]


class ParanormError(ValueError):
    """Base class of every error paranorm raises on bad input."""


class AlreadyNormalizedError(ParanormError):
    """A tensor already carries a weight or spectral normalization."""


class NotNormalizedError(ParanormError):
    """An operation needs a normalized tensor and found a plain one."""


class CheckpointError(ParanormError):
    """A state_dict cannot be read, converted or loaded as asked."""
