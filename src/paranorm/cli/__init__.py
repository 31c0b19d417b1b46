"""``paranorm <command>``: one module per command, one error boundary here.

Each command module ``paranorm.cli.<name>`` defines ``add_parser(subparsers)``, which adds its
sub-parser and sets ``func`` (``args -> exit code``). Exit codes: 0 ok, 1 error, 2 usage, 130
interrupted. Every failure is one line on stderr, ``paranorm <command>: error: <what and the
fix>``; with ``--json`` it is also one JSON object on stdout (``{"error": {...}, "exit_code":
n}``), so a script can parse every outcome. Set PARANORM_DEBUG=1 to see a traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from .._errors import ParanormError
from .._extras import EXTRAS

COMMANDS = ("demo", "inspect", "convert", "bench")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class _UsageError(Exception):
    """argparse's usage error, raised instead of printed so that ``--json`` can report it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="paranorm",
        description="Weight and spectral normalization for PyTorch, with honest Lipschitz bounds.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"paranorm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def _one_line(text: str) -> str:
    """The message without terminal escape codes, on one line."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return " ".join(lines)


def _report(command: str, kind: str, message: str, code: int, as_json: bool, error: BaseException | None = None) -> int:
    message = _one_line(message)
    print(f"paranorm {command}: error: {message}" if command else f"paranorm: error: {message}", file=sys.stderr)
    if as_json:
        body = {"command": command or None, "kind": kind, "type": type(error).__name__ if error else None, "message": message}
        print(json.dumps({"error": body, "exit_code": code}))
    return code


def _missing_extra(error: ImportError) -> str | None:
    package = (error.name or "").split(".")[0]
    if package not in EXTRAS:
        return None
    extra = EXTRAS[package]
    return (
        f"this command needs the {package} package, which paranorm's {extra!r} extra installs: "
        f"pip install 'paranorm[{extra}]'"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 error, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    command = next((a for a in argv if a in COMMANDS), "")
    debug = bool(os.environ.get("PARANORM_DEBUG"))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except _UsageError as error:
        if not as_json:
            error.parser.print_usage(sys.stderr)
        print(f"{error.parser.prog}: error: {_one_line(str(error))}", file=sys.stderr)
        if as_json:
            body = {"command": command or None, "kind": "usage", "type": None, "message": _one_line(str(error))}
            print(json.dumps({"error": body, "exit_code": 2}))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        return _report(command, "interrupted", "interrupted", 130, as_json)
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): nothing left to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as error:
        if debug:
            raise
        if isinstance(error, ParanormError):
            return _report(command, "error", error.detail, 1, as_json, error)
        if isinstance(error, ImportError) and _missing_extra(error):
            return _report(command, "missing-extra", _missing_extra(error) or "", 1, as_json, error)
        if isinstance(error, (OSError, RuntimeError)):
            return _report(command, "error", str(error), 1, as_json, error)
        message = (
            f"unexpected {type(error).__name__}: {error} (a bug in paranorm or below it: set "
            "PARANORM_DEBUG=1 to see the traceback, and please report it)"
        )
        return _report(command, "bug", message, 1, as_json, error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
