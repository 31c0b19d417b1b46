"""``paranorm <command>``: one module per command, one error boundary here.

Each command module ``paranorm.cli.<name>`` defines ``add_parser(subparsers)``, which adds its
sub-parser and sets ``func`` (``args -> exit code``). Exit codes: 0 ok, 1 error, 2 usage.
Set PARANORM_DEBUG=1 to see a traceback instead of the one-line error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .._errors import ParanormError
from .._extras import EXTRAS

COMMANDS = ("demo", "inspect", "convert", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paranorm",
        description="Weight and spectral normalization for PyTorch, with honest Lipschitz bounds.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"paranorm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ParanormError, OSError, RuntimeError) as error:
        if os.environ.get("PARANORM_DEBUG"):
            raise
        message = error.detail if isinstance(error, ParanormError) else str(error)
        print(f"paranorm {args.command}: error: {message}", file=sys.stderr)
        return 1
    except ImportError as error:
        package = (error.name or "").split(".")[0]
        if package not in EXTRAS or os.environ.get("PARANORM_DEBUG"):
            raise
        extra = EXTRAS[package]
        print(
            f"paranorm {args.command}: error: this command needs the {package} package, which "
            f"paranorm's {extra!r} extra installs: pip install 'paranorm[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("paranorm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
