"""The report as a table: rows for the terminal, markdown for the docs."""

from __future__ import annotations

from typing import Any

from .stats import best_train

__all__ = ["markdown_table", "table_rows"]


def _mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.2f}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def _paired_cell(paired: dict[str, float | None] | None) -> str:
    if paired is None:
        return "-"
    low, high = paired["p10"], paired["p90"]
    interval = "[undefined]" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"
    return f"{paired['share']:.2f} {interval}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human table (also used for the README).

    "best" is paranorm-fast for a training step, paranorm-once when the case calls the model
    more than once per step, and paranorm-folded for an eval forward.
    """
    header = ["case", "norm", "mode: best paranorm", "plain min", "legacy/plain", "torch/plain",
              "paranorm/plain", "best/plain", "best/torch", "best overhead / torch's",
              "paired [80% interval]", "peak MiB torch / best"]
    compiled = any("torch-compiled" in r["times_s"] for r in report["results"])
    if compiled:
        header += ["compiled: torch/plain", "compiled: fast/torch"]
    rows = []
    for r in report["results"]:
        ra, ov, pk = r["ratios"], r["overheads"], r["peak_bytes"]
        fast_key = best_train(r) if r["mode"] == "train" else "paranorm-folded"
        share = ov.get(f"{fast_key}-overhead/torch-overhead")
        rows.append([
            r["case"],
            r["norm"].replace("_norm", ""),
            f"{r['mode']}: {fast_key.removeprefix('paranorm-')}",
            _fmt_time(r["times_s"]["plain"]["min"]),
            f"{ra['torch-legacy/plain']:.2f}",
            f"{ra['torch/plain']:.2f}",
            f"{ra['paranorm/plain']:.2f}",
            f"{ra[fast_key + '/plain']:.2f}",
            f"{ra[fast_key + '/torch']:.2f}",
            "-" if share is None else f"{share:.2f}",
            _paired_cell(r["overheads_paired"].get(fast_key)),
            f"{_mib(pk['torch'])} / {_mib(pk[fast_key])}",
        ])
        if compiled:
            rows[-1] += [f"{ra[k]:.2f}" if k in ra else "-" for k in
                         ("torch-compiled/plain-compiled", "paranorm-fast-compiled/torch-compiled")]
    return header, rows


def markdown_table(report: dict[str, Any]) -> str:
    """The table as GitHub markdown."""
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
