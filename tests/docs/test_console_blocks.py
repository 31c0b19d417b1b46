"""The command-line sessions shown in README.md and docs/ are what the commands print.

pytest-markdown-docs runs each python code block on its own; a ``console`` block that starts
with ``$ paranorm`` shows commands and their output, which it does not run. Here each page
runs as a script: its python blocks in order, in one temporary folder (so the files one block
writes are there for the commands after it), and every ``$ paranorm ...`` line of its console
blocks through ``paranorm.cli.main``, its output (stdout, then stderr, the temporary folder
shown as ``$PWD``) compared with the lines the page shows under it. Numbers are compared to
1e-3 relative (another CPU may round the last digit of a float differently), the rest word for
word.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import unittest.mock
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from paranorm.cli import inspect as inspect_cli
from paranorm.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: The width the pages' tables were printed at (rich and argparse read $COLUMNS).
COLUMNS = "100"
NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]\d+)?")


def fences(path: Path) -> list[tuple[str, str, int]]:
    """(info string, content, first line) of every fenced block of a markdown file."""
    tokens = MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))
    return [(t.info.strip(), t.content, t.map[0] + 1 if t.map else 0) for t in tokens if t.type == "fence"]


def is_session(info: str, content: str) -> bool:
    return info.split(" ")[0] == "console" and content.startswith("$ paranorm ")


def sessions(content: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block; ``\\`` continues a command."""
    pairs: list[tuple[str, list[str]]] = []
    lines = iter(content.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            pairs.append((command, []))
        else:
            pairs[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in pairs]


def run(command: str) -> str:
    """What ``command`` prints: stdout, then stderr; the current folder shown as ``$PWD``."""
    argv = shlex.split(command)
    assert argv[0] == "paranorm", command
    out, err = io.StringIO(), io.StringIO()
    # On a terminal, progress is a bar that leaves nothing behind; here stderr is not one, and
    # the plain progress lines a slow (loaded) machine would print are not what a page shows.
    quiet = unittest.mock.patch.object(inspect_cli, "LOG_EVERY_S", math.inf)
    with quiet, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv[1:])
        except SystemExit:  # usage errors exit through argparse
            pass
    return (out.getvalue() + err.getvalue()).replace(os.getcwd(), "$PWD")


def words_and_numbers(text: str) -> tuple[list[str], list[float]]:
    """The lines without their numbers (spaces collapsed: widths follow the digits), and the
    numbers."""
    lines = [" ".join(NUMBER.sub("#", line).split()) for line in text.strip("\n").splitlines()]
    return [line for line in lines if line], [float(x) for x in NUMBER.findall(text)]


CHECKED = [page for page in PAGES if any(is_session(info, body) for info, body, _ in fences(page))]


def test_some_pages_show_sessions():
    assert CHECKED, "no page shows a `$ paranorm` session: is the pattern still right?"


@pytest.mark.parametrize("page", CHECKED, ids=[str(p.relative_to(ROOT)) for p in CHECKED])
def test_the_sessions_a_page_shows_are_what_the_commands_print(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", COLUMNS)
    for info, body, line in fences(page):
        words = info.split(" ")
        if words[0] == "python" and "notest" not in words:
            exec(compile(body, f"{page.name}:{line}", "exec"), {"__name__": "__main__"})
        elif is_session(info, body):
            for command, expected in sessions(body):
                shown, printed = words_and_numbers(expected), words_and_numbers(run(command))
                where = f"{page.name}:{line}: $ {command}"
                assert printed[0] == shown[0], where
                assert printed[1] == pytest.approx(shown[1], rel=1e-3, abs=1e-7), where
