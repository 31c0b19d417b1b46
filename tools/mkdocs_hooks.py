"""mkdocs hooks: the pages whose content comes from the code, generated at build time.

- ``reference/cli.md``: the help of ``paranorm`` and of each sub-command, read from the
  argparse parsers that ``paranorm.cli.build_parser()`` builds (the one source of the CLI's
  options);
- ``changelog.md``: ``CHANGELOG.md`` at the repository root, as it is;
- the benchmark tables of ``performance.md`` (where it says :data:`TABLES_MARKER`): the latest
  ``benchmarks/results/<YYYY-MM-DD>-<device>.json`` per device, the report that
  ``benchmarks/suite.py --json PATH`` writes, rendered by the same code that prints it.

Wired in by ``hooks:`` in mkdocs.yml; the functions below the mkdocs events are plain
functions of their inputs, tested by ``tests/docs/test_mkdocs_hooks.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHANGELOG = ROOT / "CHANGELOG.md"
#: Where performance.md gets its tables.
TABLES_MARKER = "<!-- paranorm: benchmark tables -->"
#: Width the help is wrapped at, so the page does not depend on the terminal that builds it.
HELP_COLUMNS = 100
#: ``2026-11-29-cpu.json``, ``2026-11-29-cuda-h100.json``: the date, then the device.
RESULT_NAME = re.compile(r"\A(?P<date>\d{4}-\d{2}-\d{2})-(?P<device>[A-Za-z0-9][A-Za-z0-9._-]*)\.json\Z")


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help at $COLUMNS: fix it while the help is formatted."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """The CLI reference page: ``paranorm --help`` and each ``paranorm <command> --help``."""
    from paranorm.cli import build_parser

    with _columns(HELP_COLUMNS):
        parser = build_parser()
        sections = [
            "# Command line reference\n",
            "Generated from the command line's own parsers when these docs are built, so it "
            "lists exactly the options of this version. Exit codes: 0 success, 1 error (one "
            "line on stderr, `paranorm <command>: error: ...`; with `--json` also one JSON "
            "object on stdout), 2 usage error, 130 interrupted. Set `PARANORM_DEBUG=1` to see "
            "a traceback instead of the one-line error.\n",
            "## paranorm\n",
            f"```text\n{parser.format_help().rstrip()}\n```\n",
        ]
        for name, sub in _subcommands(parser).items():
            sections += [f"## paranorm {name}\n", f"```text\n{sub.format_help().rstrip()}\n```\n"]
    return "\n".join(sections)


def latest_results(folder: Path = RESULTS) -> dict[str, tuple[str, Path]]:
    """``{device: (date, path)}``: the newest results file of each device in ``folder``."""
    latest: dict[str, tuple[str, Path]] = {}
    if not folder.is_dir():
        return latest
    for path in sorted(folder.iterdir()):
        match = RESULT_NAME.match(path.name)
        if match is None:
            continue
        date, device = match["date"], match["device"]
        if device not in latest or date > latest[device][0]:
            latest[device] = (date, path)
    return dict(sorted(latest.items()))


def _command(meta: dict[str, Any]) -> str:
    """The command that made a report: recorded by benchmarks/suite.py, else rebuilt from meta."""
    if meta.get("command"):
        return str(meta["command"])
    parts = ["python benchmarks/suite.py"]
    if meta.get("repeats") not in (None, 30):
        parts.append(f"--repeats {meta['repeats']}")
    device = str(meta.get("device", "cpu")).split(" ")[0]
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts) + " --json PATH"


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """The report's summary in the sentences ``paranorm bench`` prints, and the A/A check."""
    from paranorm._bench.tables import summary_lines

    lines = [f"- {line}" for line in summary_lines(report)]
    checks = [
        f"{norm.replace('_', ' ')} {s['default_path_interval_misses_1']}"
        for norm, s in report.get("summary", {}).items()
        if isinstance(s, dict) and "default_path_interval_misses_1" in s
    ]
    if checks:
        lines.append(
            "- A/A check: the default path's paired interval (its true share is 1) misses 1 in "
            + " and ".join(checks) + " cases; an 80% interval misses by chance in about 1 case of 5."
        )
    return lines


def render_report(report: dict[str, Any], date: str, device: str, source: str) -> str:
    """One device's section: when, where and how it was measured, a summary, the table."""
    from paranorm._bench import markdown_table

    meta = report.get("meta", {})
    load = meta.get("load_average_1min_before_after") or [None, None]
    where = [f"device {meta.get('device', device)}"]
    if meta.get("cpu_count"):
        where.append(f"{meta['cpu_count']} CPU cores")
    if meta.get("threads"):
        where.append(f"{meta['threads']} torch threads")
    if meta.get("torch"):
        where.append(f"torch {meta['torch']}")
    if None not in load:
        where.append(f"load average {load[0]} before, {load[1]} after")
    lines = [
        f"### {device} ({date})\n",
        f"Recorded {meta.get('date', date)}: {', '.join(where)}; min and median of "
        f"{meta.get('repeats', '?')} interleaved samples after {meta.get('warmup', '?')} warm-up "
        f"rounds. Made by `{_command(meta)}`; the file is `{source}`.\n",
    ]
    summary = _summary_lines(report)
    if summary:
        lines += ["\n".join(summary) + "\n"]
    lines += [markdown_table(report) + "\n"]
    return "\n".join(lines)


def performance_tables(folder: Path = RESULTS) -> str:
    """The markdown that replaces :data:`TABLES_MARKER`: one section per device, or a note."""
    latest = latest_results(folder)
    if not latest:
        return (
            "No benchmark run is recorded yet: `benchmarks/results/` holds no results file. "
            "Run `python benchmarks/suite.py --json benchmarks/results/$(date +%F)-cpu.json` "
            "(add `--device cuda` and name the file `...-cuda.json` on a GPU), commit the file, "
            "and this page shows its table.\n"
        )
    sections = []
    for device, (date, path) in latest.items():
        report = json.loads(path.read_text(encoding="utf-8"))
        sections.append(render_report(report, date, device, f"benchmarks/results/{path.name}"))
    return "\n".join(sections)


# mkdocs events ---------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages: the CLI reference and the changelog."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "changelog.md", content=CHANGELOG.read_text(encoding="utf-8")))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the latest benchmark tables where the performance page asks for them."""
    if TABLES_MARKER in markdown:
        return markdown.replace(TABLES_MARKER, performance_tables())
    return markdown
