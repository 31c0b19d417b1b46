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


#: The columns the terminal table keeps (the markdown table and the JSON have them all).
TERMINAL_COLUMNS = ("case", "norm", "mode: best paranorm", "plain min", "torch/plain", "best/torch",
                    "best overhead / torch's", "paired [80% interval]", "peak MiB torch / best")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary as sentences a person reads (``--json`` has every number)."""
    lines = []
    summary = report["summary"]
    for norm in ("weight_norm", "spectral_norm"):
        s = summary.get(norm)
        if s is None:
            continue
        name = norm.replace("_", " ")
        median = s["median_overhead_share_best"]
        paired = s["median_paired_share_best"]
        lines.append(
            f"{name}: paranorm's best path leaves {_share(median)} of torch's overhead over plain "
            f"layers (median of minima; paired: {_share(paired)}); its interval is at or under half "
            f"in {s['paired_share_interval_at_most_half']} cases, above in "
            f"{s['paired_share_interval_above_half']}. Slowest against torch: "
            f"{s['max_fast_over_torch']:.2f}x ({s['worst_case']}). Peak memory at or below "
            f"torch's in {s['peak_memory_not_above_torch']} cases."
        )
    noise = summary.get("noise_paranorm_default_over_torch")
    if noise:
        lines.append(
            f"noise: paranorm's default path runs torch's own kernels, and measured "
            f"{noise['min']:.2f}-{noise['max']:.2f}x torch (median {noise['median']:.2f}); "
            "differences inside that range are this machine's noise."
        )
    folded = summary.get("eval_folded_over_plain")
    if folded:
        lines.append(
            f"eval after pn.fold: {folded['min']:.2f}-{folded['max']:.2f}x the plain layers "
            f"(median {folded['median']:.2f})."
        )
    return lines


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
