"""Rewrite the output under every ``$ paranorm ...`` line of a markdown page with what it prints.

    .venv/bin/python tools/update_doc_sessions.py docs/guides/checkpoints.md [more pages]

Runs the page as tests/docs/test_console_blocks.py does (its python blocks in order, in a
temporary folder, the commands through paranorm.cli.main at the same width) and replaces each
command's shown output. Review the diff: the test then checks that the page stays true.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "docs"))

import test_console_blocks as sessions  # noqa: E402


def update(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    os.environ["COLUMNS"] = sessions.COLUMNS
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            for info, body, line in sessions.fences(page):
                words = info.split(" ")
                if words[0] == "python" and "notest" not in words:
                    exec(compile(body, f"{page.name}:{line}", "exec"), {"__name__": "__main__"})
                elif sessions.is_session(info, body):
                    new = "".join(
                        f"$ {command}\n" + sessions.run(command).rstrip("\n").replace(" \n", "\n") + "\n"
                        for command, _ in sessions.sessions(body)
                    )
                    new = "\n".join(line.rstrip() for line in new.splitlines()) + "\n"
                    text = text.replace(body, new, 1)
        finally:
            os.chdir(here)
    page.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        update(Path(name).resolve())
