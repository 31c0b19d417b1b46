"""For the code blocks of README.md and docs/, which pytest-markdown-docs runs as tests.

Each block runs in a fresh temporary folder (a block that writes ``g_02500000`` writes it
there), with the fast paths off, as a new process would have them. A block whose first line is
``# slow: <why>`` is marked slow, so ``make test-fast`` skips it.
"""

from __future__ import annotations

import pytest

import paranorm as pn

MARKDOWN_DOCS = "markdown-docs"
SLOW_BLOCK = "# slow:"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker(MARKDOWN_DOCS) and getattr(item, "code", "").startswith(SLOW_BLOCK):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _code_block_sandbox(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if request.node.get_closest_marker(MARKDOWN_DOCS) is None:
        yield
        return
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    previous = pn.set_fast_paths(False)
    yield
    pn.set_fast_paths(previous)
