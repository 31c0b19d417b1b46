"""Argument types shared by the commands (argparse turns their errors into exit code 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse ``type`` accepting an int in [``minimum``, ``maximum``]; ``why`` explains the
    maximum in the error."""
    wanted = f"an int >= {minimum}" + ("" if maximum is None else f" and <= {maximum}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}{why}")
        return value

    return parse

