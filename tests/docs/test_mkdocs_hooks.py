"""tools/mkdocs_hooks.py: the pages the docs generate from the code at build time."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from paranorm._bench import markdown_table
from paranorm.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]


def _load_hooks():
    spec = importlib.util.spec_from_file_location("paranorm_mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _result(case: str, norm: str, mode: str, plain: float, torch_s: float, best: float) -> dict:
    """One row of a report as paranorm._bench writes it (times in seconds)."""
    best_key = "paranorm-fast" if mode == "train" else "paranorm-folded"
    times = {
        "plain": plain, "torch-legacy": torch_s, "torch": torch_s, "paranorm": torch_s, best_key: best,
    }
    return {
        "case": case,
        "norm": norm,
        "mode": mode,
        "times_s": {k: {"min": v, "median": v} for k, v in times.items()},
        "ratios": {
            "torch-legacy/plain": torch_s / plain, "torch/plain": torch_s / plain,
            "paranorm/plain": torch_s / plain, f"{best_key}/plain": best / plain,
            f"{best_key}/torch": best / torch_s, "paranorm/torch": 1.0,
        },
        "overheads": {f"{best_key}-overhead/torch-overhead": (best - plain) / (torch_s - plain)}
        if mode == "train" else {},
        "overheads_paired": {best_key: {"share": 0.25, "p10": 0.2, "p90": 0.3}} if mode == "train" else {},
        "peak_bytes": {"torch": 3 * 2**20, best_key: 2**20},
    }


def _report(command: str | None, device: str = "cpu") -> dict:
    meta = {
        "torch": "2.13.0+cpu", "device": device, "threads": 2, "date": "2026-11-29 10:00 UTC",
        "repeats": 30, "warmup": 3, "load_average_1min_before_after": [0.5, 1.25], "cpu_count": 2,
    }
    if command is not None:
        meta["command"] = command
    results = [
        _result("linear-1024-1024-b1", "spectral_norm", "train", 200e-6, 1000e-6, 400e-6),
        _result("linear-1024-1024-b1", "spectral_norm", "eval", 100e-6, 300e-6, 100e-6),
    ]
    summary = {
        "spectral_norm": {
            "median_overhead_share_best": 0.25, "median_paired_share_best": 0.25,
            "default_path_interval_misses_1": "0/1", "peak_memory_not_above_torch": "1/1",
            "paired_share_interval_at_most_half": "1/1", "paired_share_interval_above_half": "0/1",
            "max_fast_over_torch": 0.4, "worst_case": "linear-1024-1024-b1",
        },
        "eval_folded_over_plain": {"min": 1.0, "median": 1.0, "max": 1.0},
    }
    return {"meta": meta, "results": results, "summary": summary}


def test_an_empty_results_folder_says_no_run_is_recorded(tmp_path):
    assert hooks.latest_results(tmp_path) == {}
    for folder in (tmp_path, tmp_path / "missing"):
        text = hooks.performance_tables(folder)
        assert text.startswith("No benchmark run is recorded yet")
        assert "benchmarks/suite.py --json benchmarks/results/" in text
        assert "|" not in text  # no table


def test_the_latest_file_of_each_device_is_rendered_with_its_date_and_command(tmp_path):
    old, new = _report("python benchmarks/suite.py --json old.json"), _report(
        "python benchmarks/suite.py --compile --json benchmarks/results/2026-11-29-cpu.json"
    )
    new["results"][0]["times_s"]["plain"]["min"] = 250e-6  # tells the two apart
    (tmp_path / "2026-11-01-cpu.json").write_text(json.dumps(old))
    (tmp_path / "2026-11-29-cpu.json").write_text(json.dumps(new))
    (tmp_path / "2026-11-15-cuda.json").write_text(json.dumps(_report(None, "cuda:0 (NVIDIA H200)")))
    (tmp_path / "notes.json").write_text("{}")  # not a results file: ignored
    (tmp_path / "2026-11-30-cpu.txt").write_text("x")

    latest = hooks.latest_results(tmp_path)
    assert {device: date for device, (date, _) in latest.items()} == {"cpu": "2026-11-29", "cuda": "2026-11-15"}

    text = hooks.performance_tables(tmp_path)
    cpu, cuda = text.index("### cpu (2026-11-29)"), text.index("### cuda (2026-11-15)")
    assert cpu < cuda  # devices in name order, one section each
    assert text.count("### ") == 2
    assert "`python benchmarks/suite.py --compile --json benchmarks/results/2026-11-29-cpu.json`" in text
    assert "benchmarks/results/2026-11-29-cpu.json" in text and "2026-11-01" not in text
    assert "250 us" in text[cpu:cuda] and "200 us" not in text[cpu:cuda]  # the newest file's
    assert markdown_table(new) in text  # the table is the one the suite prints
    # A report without a recorded command (an older suite) gets one rebuilt from its meta.
    assert "`python benchmarks/suite.py --device cuda:0 --json PATH`" in text
    assert "load average 0.5 before, 1.25 after" in text
    assert "- spectral norm: paranorm's best path leaves 0.25x of torch's overhead" in text
    assert "misses 1 in spectral norm 0/1 cases" in text


def test_the_performance_page_has_the_marker_the_hook_replaces():
    page = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert page.count(hooks.TABLES_MARKER) == 1
    rendered = hooks.on_page_markdown(page, None, None, None)
    assert hooks.TABLES_MARKER not in rendered
    assert hooks.performance_tables() in rendered


def test_the_cli_reference_has_every_command_and_every_option():
    text = hooks.cli_reference()
    subcommands = hooks._subcommands(build_parser())
    assert list(subcommands) == list(COMMANDS)
    for name, sub in subcommands.items():
        assert f"## paranorm {name}\n" in text
        assert f"usage: paranorm {name}" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, (name, flag)
    helps = [block.split("```", 1)[0] for block in text.split("```text\n")[1:]]
    assert len(helps) == 1 + len(COMMANDS)
    assert max(len(line) for help_text in helps for line in help_text.splitlines()) <= hooks.HELP_COLUMNS


@pytest.mark.parametrize("width", [40, 200])
def test_the_cli_reference_does_not_depend_on_the_terminal(monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    text = hooks.cli_reference()
    monkeypatch.delenv("COLUMNS")
    assert text == hooks.cli_reference()
    assert "COLUMNS" not in os.environ


def test_every_results_file_in_the_repository_renders():
    for _device, (_date, path) in hooks.latest_results().items():
        report = json.loads(path.read_text(encoding="utf-8"))
        assert markdown_table(report) in hooks.performance_tables()
