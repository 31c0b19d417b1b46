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
#: Warnings torch raises from its own internals (inductor, the ONNX exporter) under the calls a
#: block makes; the tests run with warnings as errors, and a reader's code would not see these.
TORCH_INTERNAL_WARNINGS = (
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker(MARKDOWN_DOCS) is None:
            continue
        for warning in TORCH_INTERNAL_WARNINGS:
            item.add_marker(pytest.mark.filterwarnings(warning))
        if getattr(item, "code", "").lstrip().startswith(SLOW_BLOCK):  # padded to its line
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
