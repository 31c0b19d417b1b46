"""The full benchmark suite: every case of paranorm._bench.FULL, training step and eval forward.

    .venv/bin/python benchmarks/suite.py [--repeats 30] [--compile] [--device cuda] [--json PATH]

Prints the markdown table and the summary over cases; ``--json PATH`` also writes the whole
report (atomically), the command included. A report saved as
``benchmarks/results/<YYYY-MM-DD>-<device>.json`` is the table the docs' Performance page shows
for that device (the latest date wins). torch runs on
paranorm._bench.BENCH_THREADS (2) threads. ``--compile`` adds torch.compile'd training steps
for the cases in COMPILE_CASES (inductor; compilation is excluded from the times).
``--device cuda`` runs the models on a GPU (synchronized timing, CUDA allocator peaks).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile

from paranorm import ParanormError
from paranorm._bench import FULL, markdown_table, run_suite

COMPILE_CASES = ("linear-1024-1024-b1", "sngan-d-b16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help=f"also time compiled steps of {COMPILE_CASES}")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        report = run_suite(
            FULL,
            repeats=args.repeats,
            compile_cases=COMPILE_CASES if args.compile else (),
            progress=lambda text: print(f"  {text}", file=sys.stderr, flush=True),
            device=args.device,
        )
    except ParanormError as error:
        print(f"suite: {error}", file=sys.stderr)
        return 2
    meta = report["meta"]
    # The docs' Performance page shows each recorded table with the command that made it.
    meta["command"] = shlex.join(["python", "benchmarks/suite.py", *argv])
    load = meta["load_average_1min_before_after"]
    print(f"{meta['device']}; CPU: {meta['cpu_count']} cores, load average {load[0]} before, {load[1]} after, "
          f"{meta['threads']} threads; torch {meta['torch']}, {meta['date']}, "
          f"min of {meta['repeats']} interleaved samples\n")
    print(markdown_table(report))
    print()
    print(json.dumps(report["summary"], indent=2))
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as tmp:
            json.dump(report, tmp, indent=2)
        os.replace(tmp.name, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
