"""A griffe extension: read paranorm's ``Example:`` docstring sections as Google-style examples.

paranorm's docstrings head their doctests ``Example:``, which Google style (and Sphinx's
napoleon) accept, but griffe's Google parser knows only ``Examples:`` and would render the
doctest as quoted prose. This renames the heading in the text griffe parses; the source, and
the doctests that pytest runs from it, stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` before the docstring is parsed."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _EXAMPLE.sub(r"\1Examples:", docstring.value)
