"""``paranorm bench``: time normalized layers against plain ones, torch's APIs and paranorm.

Prints a rich table of ratios and peak memory (or JSON with ``--json``). ``--quick`` runs a
few cases in under a minute; ``benchmarks/suite.py`` runs the full suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._bench import BENCH_THREADS, CASES, FULL, QUICK, markdown_table, run_suite, table_rows
from .._bench.tables import TERMINAL_COLUMNS, summary_lines
from ._args import int_at_least


def _case_list(text: str) -> list[str]:
    ids = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [i for i in ids if i not in CASES]
    if not ids or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or repr(text)}; known: {', '.join(CASES)}"
        )
    return ids


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "bench",
        help="time plain vs torch vs paranorm normalized layers: ratios and peak memory",
        description=(
            "Time a training step (forward + backward) and an eval forward of plain layers, "
            "torch's legacy hooks, torch's parametrizations and paranorm, interleaved and "
            f"repeated in one process on {BENCH_THREADS} threads; report min and median "
            "(warm-up dropped), ratios of minima and peak memory."
        ),
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"a few cases, fewer repeats: under a minute ({', '.join(QUICK)})")
    parser.add_argument("--cases", type=_case_list, metavar="ID[,ID...]",
                        help="run these case ids instead (see --list); with --quick, quickly")
    parser.add_argument("--list", action="store_true", help="list the case ids and exit")
    parser.add_argument("--repeats", type=int_at_least(1, 10_000), default=None,
                        help="timed samples per implementation (default 30, 7 with --quick)")
    parser.add_argument("--mode", choices=("train", "eval", "both"), default="both",
                        help="training step, eval forward or both (default both)")
    parser.add_argument("--threads", type=int_at_least(1, 1024), default=BENCH_THREADS,
                        help=f"torch threads while timing (default {BENCH_THREADS}: fixed, so runs compare)")
    parser.add_argument("--device", default="cpu",
                        help="where the models run: cpu (default) or cuda[:N] (synchronized timing, "
                             "CUDA allocator peaks)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd training steps (inductor, fullgraph; slow to compile)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.list:
        for case_id, case in CASES.items():
            print(f"{case_id:32s} {case.description}")
        return 0
    ids = args.cases or (QUICK if args.quick else FULL)
    repeats = args.repeats or (7 if args.quick else 30)
    modes = ("train", "eval") if args.mode == "both" else (args.mode,)
    quiet = args.json or args.markdown
    progress = None if quiet else (lambda text: print(f"  {text}", file=sys.stderr, flush=True))
    report = run_suite(ids, repeats=repeats, warmup=2 if args.quick else 3,
                       target_s=0.002 if args.quick else 0.004, modes=modes, threads=args.threads,
                       compile_cases=ids if args.compile else (), progress=progress,
                       device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if args.markdown:
        print(markdown_table(report))
        return 0
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report)
    keep = [header.index(name) for name in TERMINAL_COLUMNS]
    meta = report["meta"]
    table = Table(title=f"paranorm bench: {meta['device']}, {meta['threads']} CPU threads, torch {meta['torch']}, "
                        f"{meta['date']}; ratios of minima over {meta['repeats']} samples")
    for i in keep:
        # Names never break: a narrow terminal folds the numeric columns' headers instead.
        table.add_column(header[i], justify="left" if header[i] in ("case", "norm") else "right",
                         no_wrap=header[i] == "case", overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console = Console()
    console.print(table)
    for line in summary_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print("every number, and the columns left out here: paranorm bench --json (or --markdown)",
                  style="dim", markup=False)
    return 0
