"""One-line messages about files from others: whatever a file or a library below puts in them."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ANSI", "first_line", "reason", "short", "size_text", "where"]

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile key may be a megabyte long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text`` without terminal escapes, cut to ``limit``."""
    lines = (line.strip() for line in ANSI.sub("", text).splitlines())
    line = next((line for line in lines if line), "")
    line = "".join(c if c.isprintable() else " " for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason(error: BaseException) -> str:
    text = first_line(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def where(node: tuple[Any, ...] | None) -> str:
    """A tensor's place in the file, from a linked path node: 'conv.weight' or ['model']['w']."""
    keys = []
    while node is not None:
        node, key = node
        keys.append(key)
    keys.reverse()
    if len(keys) == 1:
        return short(keys[0])
    return "".join(f"[{short(key, 60)}]" for key in keys)
