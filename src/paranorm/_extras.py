"""Optional dependencies: rich (tables, progress) and matplotlib (plots) come with the cli extra.

``import paranorm`` needs neither; what does says so with the install command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import ParanormError

__all__ = ["require"]

#: The pip extra that brings each optional package.
EXTRAS = {"rich": "cli", "matplotlib": "cli", "safetensors": "safetensors"}


def require(package: str, what: str) -> ModuleType:
    """Import ``package`` for ``what`` (e.g. "printing a report as a table"), or say how to get it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        extra = EXTRAS.get(package, "cli")
        raise ParanormError(
            f"{what} needs the {package} package, which paranorm's {extra!r} extra installs: "
            f"pip install 'paranorm[{extra}]' (or pip install {package})."
        ) from None
