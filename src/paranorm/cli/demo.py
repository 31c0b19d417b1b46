"""``paranorm demo``: rerun the blog post's weight-norm and spectral-norm experiments.

Prints rich tables (or JSON with ``--json``) and writes a PNG of the loss and sigma curves.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._demo import (
    DEFAULT_PLOT,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    MAX_SEED,
    MAX_STEPS,
    plot,
    render,
    run_demo,
    to_dict,
)
from .._plotting import FORMATS, figure_format
from ._args import int_at_least


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="rerun the blog post's Linear(2, 3) weight/spectral norm experiments: tables and a plot",
        description=(
            "Train the blog post's two Linear(2, 3) layers under none, weight_norm and "
            "spectral_norm; print g, v, weights, biases and sigma (largest singular value) "
            "before and after, and plot loss and sigma over the steps. Deterministic per seed."
        ),
    )
    parser.add_argument(
        "--steps",
        type=int_at_least(1, MAX_STEPS, " (every step is kept for the plot; longer runs take hours)"),
        default=DEFAULT_STEPS,
        help=f"Adam steps per run (default {DEFAULT_STEPS}, as in the blog post)",
    )
    parser.add_argument(
        "--seed",
        type=int_at_least(0, MAX_SEED),
        default=DEFAULT_SEED,
        help=f"seed of every random draw (default {DEFAULT_SEED})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--plot",
        metavar="PATH",
        default=DEFAULT_PLOT,
        help=(
            f"where to write the plot (default ./{DEFAULT_PLOT}); its suffix picks the format "
            f"({', '.join('.' + f for f in FORMATS)}); an existing plot there is replaced"
        ),
    )
    where.add_argument("--no-plot", action="store_true", help="do not write the plot")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as JSON (every step's loss and sigma included) instead of tables",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo as ``args`` says; return the exit code."""
    if not args.no_plot:
        figure_format(args.plot, "demo plot")  # a bad path fails now, not after the training
    result = run_demo(steps=args.steps, seed=args.seed)
    path = None if args.no_plot else plot(result, args.plot)
    if args.json:
        data = to_dict(result)
        data["plot"] = None if path is None else str(path)
        json.dump(data, sys.stdout)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console

    console = Console()
    render(result, console)
    if path is not None:
        console.print(f"plot written to {path}", soft_wrap=True, markup=False, highlight=False)
    return 0
