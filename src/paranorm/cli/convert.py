"""``paranorm convert IN OUT --to LAYOUT``: move a checkpoint's normalized tensors between layouts.

Reads and writes through :mod:`paranorm.checkpoint.io` (weights only; a nested training
checkpoint keeps its other entries; atomic writes). An existing OUT is replaced only with
``--overwrite`` (never a read-only one), IN only with ``--in-place``; a symlink is written
through, its target replaced and the link kept, as ``cp`` does. Every check on OUT runs before
IN is read, and nothing is printed on stdout before the conversion succeeded. Outputs of
``PROGRESS_MIN_BYTES`` or more show a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .._errors import CheckpointError
from .._files import TEMPORARY_PATTERN, check_target
from .._lipschitz.render import fits
from ..checkpoint import LAYOUTS, CheckpointWarning, Entry, convert, detect
from ..checkpoint.convert import kept_as_is
from ..checkpoint.io import checkpoint_format, read_checkpoint, write_checkpoint

__all__ = ["add_parser", "run"]

#: Outputs at least this large get a progress bar (on stderr) while written.
PROGRESS_MIN_BYTES = 64 * 2**20


@contextmanager
def _progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; a rich bar on stderr when the file is large."""
    if total < PROGRESS_MIN_BYTES:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _parse_dim(text: str) -> tuple[str | None, int | None]:
    """``[PATTERN=]DIM`` -> (PATTERN or None for "wherever the shapes cannot say", DIM)."""
    pattern, sep, value = text.rpartition("=")
    if sep and not pattern:
        raise argparse.ArgumentTypeError(f"expected [KEY=]DIM (e.g. conv.weight=0 or 0), got {text!r}")
    if value.lower() == "none":
        return pattern or None, None
    try:
        return pattern or None, int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"DIM must be an int or None, got {value!r} in {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``convert`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint's weight/spectral norm tensors between layouts",
        description=(
            "Rewrite every weight-normed or spectrally normed tensor of a checkpoint in one layout: "
            "legacy (torch.nn.utils.weight_norm/spectral_norm hooks: weight_g/weight_v, "
            "weight_orig/weight_u/weight_v), parametrizations (torch.nn.utils.parametrizations and "
            "paranorm) or plain (the effective weight, as torch computes it in eval mode). Other "
            "keys are copied unchanged. Writes atomically (a temporary file beside OUT, then a "
            "rename); never replaces an existing OUT without --overwrite, nor IN without "
            "--in-place. A symlink OUT is written through: its target is replaced, the link kept."
        ),
        epilog=(
            f"A run killed by SIGKILL or a power loss can leave a hidden temporary "
            f"{TEMPORARY_PATTERN} beside OUT; the next write into that folder removes those of "
            "ended runs, or remove it by hand: rm FOLDER/.*.paranorm-*.tmp"
        ),
    )
    parser.add_argument(
        "input", metavar="IN", type=Path,
        help="checkpoint to read: a torch.save file (any name, e.g. g_02500000) or safetensors",
    )
    parser.add_argument(
        "output", metavar="OUT", type=Path, nargs="?",
        help="where to write: safetensors for a .safetensors suffix, else torch.save's format",
    )
    parser.add_argument("--to", required=True, choices=LAYOUTS, help="the layout to write")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    parser.add_argument("--in-place", action="store_true", help="overwrite IN (atomically); OUT may be omitted")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace OUT if it exists (atomically; never a read-only file: chmod u+w it first)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    parser.add_argument(
        "--dim", action="append", type=_parse_dim, default=[], metavar="[KEY=]DIM",
        help=(
            "the normalization dim of tensor KEY, a glob pattern (e.g. conv.weight=1, "
            "'*.convs.*=0'), or alone the dim of every tensor whose shapes cannot say it (e.g. "
            "0, torch's default for Conv; 1 for ConvTranspose); repeat it, the last match wins"
        ),
    )
    parser.add_argument(
        "--keep-unconverted", action="store_true",
        help=(
            "keep as they are the tensors that carry a parametrization other than weight or "
            "spectral norm alone (e.g. deel-torchlip's spectral norm then Bjorck), convert the "
            "rest, and list them; without it such tensors are an error and nothing is written"
        ),
    )
    parser.add_argument(
        "--key", metavar="NAME",
        help=(
            "convert only the state dict NAME of a training checkpoint (e.g. generator, mpd, "
            "state_dict); every other entry is kept as it is. Default: all of them"
        ),
    )
    parser.add_argument(
        "--weight-norm", action="append", default=[], metavar="KEY",
        help="weight-normalize the plain tensor KEY (g = ||w||, dim from --dim, default 0)",
    )
    parser.add_argument(
        "--spectral-norm", action="append", default=[], metavar="KEY",
        help="spectrally normalize the plain tensor KEY (u, v: its exact top singular vectors)",
    )
    parser.set_defaults(func=run)
    return parser


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _row(before: Entry | None, after: Entry | None, given: int | None, kept: bool) -> dict[str, Any]:
    """One tensor's line of the summary; ``given``: its --dim, where the shapes cannot say it;
    ``kept``: a parametrization kept as it was, not converted."""
    entry = after or before
    assert entry is not None
    dim = after.dim if after and after.kind else before.dim if before else None
    return {
        "tensor": entry.name,
        "kind": "other" if kept else (before.kind if before and before.kind else after.kind if after else None),
        "from": before.layout if before else None,
        "to": "kept" if kept else after.layout if after else None,
        "dim": given if dim is None else dim,
        "converted": not kept,
        "keys_before": list(before.keys) if before else [],
        "keys_after": list(after.keys) if after else [],
    }


def _target(args: argparse.Namespace) -> Path:
    """Where to write, after every check that needs no reading of IN (also for --dry-run)."""
    source: Path = args.input
    target: Path | None = args.output
    if target is None:
        if not args.in_place and not args.dry_run:
            raise CheckpointError("give OUT, or pass --in-place to overwrite IN.")
        target = source
    elif args.in_place and not _same_file(source, target):
        raise CheckpointError(
            f"--in-place overwrites IN, but OUT {str(target)!r} is another file; drop "
            "OUT or drop --in-place."
        )
    elif _same_file(source, target) and not args.in_place and not args.dry_run:
        raise CheckpointError(
            f"OUT {str(target)!r} is IN; refusing to overwrite the input. Pass --in-place "
            "to overwrite it (atomically), or choose another OUT."
        )
    checkpoint_format(target, "OUT")
    if not args.dry_run:
        if args.in_place:
            check_target(target, overwrite=True, what="IN", flag="--in-place", error=CheckpointError)
        else:
            check_target(target, overwrite=args.overwrite, what="OUT", flag="--overwrite", error=CheckpointError)
    return target


def _value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a normalized tensor's part (g, v, W, u), or None."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided or value.is_quantized:
        kind = "quantized" if value.layout == torch.strided else str(value.layout).removeprefix("torch.")
        return f"is a {kind} tensor; paranorm converts dense floating-point weights only. Save it dense and float first"
    if not value.is_floating_point():
        return (
            f"has dtype {value.dtype}; weight and spectral norm keep floating-point tensors, so "
            "the file is corrupt or these keys are not a normalization's"
        )
    return None


def _check_computable(
    state: Mapping[str, Any], entries: list[Entry], source: Path, normalize: Mapping[str, str]
) -> None:
    """Refuse, naming the key, a normalized tensor's part that paranorm cannot compute with.

    Tensors outside the normalized groups are copied untouched, so a sparse or quantized
    buffer beside the weights passes through.
    """
    named = [(key, f"{e.kind} of {e.name!r}") for e in entries if e.kind is not None for key in e.keys]
    named += [(key, f"--{kind.replace('_', '-')} {key}") for key, kind in normalize.items() if key in state]
    for key, role in named:
        problem = _value_problem(state[key])
        if problem is not None:
            raise CheckpointError(f"IN {str(source)!r}: tensor {key!r} ({role}) {problem}.")


@contextmanager
def _about(source: Path) -> Iterator[None]:
    """Name IN in the errors of reading and converting its state_dict, on one line."""
    try:
        yield
    except CheckpointError as error:
        raise CheckpointError(f"IN {str(source)!r}: {error.detail}") from None
    except Exception as error:  # torch's kernels on values no check foresaw
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"converting IN {str(source)!r} failed: {type(error).__name__}: {first}. The "
            "checkpoint holds values paranorm cannot convert; check the tensors it names."
        ) from error


def _named(part: str, key: str) -> tuple[str, ...]:
    """The names a user may give a tensor: its key, and PART/KEY inside a training checkpoint."""
    return (key, f"{part}/{key}") if part else (key,)


def _dims(
    patterns: list[tuple[str | None, int | None]], part: str, entries: list[Entry], normalize: Mapping[str, str],
    used: set[int],
) -> dict[str, int | None]:
    """``--dim`` resolved to tensor names of the state dict ``part``; ``used`` collects the
    indices of the patterns that matched something."""
    dims: dict[str, int | None] = {}
    candidates = [(e.name, len(e.dim_candidates) > 1) for e in entries if e.kind is not None]
    candidates += [(key, True) for key in normalize]
    for index, (pattern, dim) in enumerate(patterns):
        for name, ambiguous in candidates:
            if pattern is None:
                hit = ambiguous  # alone, DIM fills in where the shapes cannot say it
            else:
                hit = any(fnmatch.fnmatchcase(n, pattern) for n in _named(part, name))
            if hit:
                dims[name] = dim
                used.add(index)
    return dims


def _converted(
    args: argparse.Namespace, part: str, state: Mapping[str, Any], normalize: dict[str, str],
    entries: list[Entry], dims: dict[str, int | None],
) -> tuple[Any, list[str], list[dict[str, Any]], int]:
    """The converted state dict ``part``, notes on what was derived, the changed rows, the count."""
    source: Path = args.input
    with _about(source), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        converted = convert(
            state, to=args.to, dims=dims, normalize=normalize, keep_unconverted=args.keep_unconverted  # type: ignore[arg-type]
        )
        after = {e.name: e for e in detect(converted)}
    before = {e.name: e for e in entries}
    notes = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    kept = {e.name for e in entries if kept_as_is(e, args.to)}
    rows = [
        _row(before.get(n), after.get(n), dims.get(n), n in kept)
        for n in after
        if n in kept or before.get(n) is None or before[n].keys != after[n].keys
    ]
    if part and args.several_parts:  # one state dict: its tensors go by their own names
        notes = [f"{part}: {note}" for note in notes]
        for row in rows:
            row["tensor"] = f"{part}/{row['tensor']}"
    return converted, notes, rows, len(after)


def _normalize_requests(args: argparse.Namespace, parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``--weight-norm``/``--spectral-norm`` KEYs (or PART/KEYs) by state dict."""
    requests: dict[str, str] = {key: "weight_norm" for key in args.weight_norm}
    for key in args.spectral_norm:
        if key in requests:
            raise CheckpointError(f"{key!r} is named by both --weight-norm and --spectral-norm; pick one.")
        requests[key] = "spectral_norm"
    by_part: dict[str, dict[str, str]] = {part: {} for part in parts}
    for name, kind in requests.items():
        owners = [(part, key) for part, state in parts.items() for key in state if name in _named(part, key)]
        if not owners:
            raise CheckpointError(
                f"--{kind.replace('_', '-')} {name}: the checkpoint has no tensor {name!r}"
                + (f" in its state dicts {', '.join(map(repr, parts))}; name it PART/KEY" if len(parts) > 1 or "" not in parts else "")
                + "."
            )
        for part, key in owners:
            by_part[part][key] = kind
    return by_part


def run(args: argparse.Namespace) -> int:
    """Convert ``args.input`` into ``args.output``; return the exit code."""
    source: Path = args.input
    target = _target(args)
    out_format = checkpoint_format(target, "OUT")
    # Sparse or quantized buffers pass through; the normalized tensors are checked before use.
    checkpoint = read_checkpoint(source, dense=False)
    if args.key is not None:
        with _about(source):
            checkpoint = checkpoint.select(args.key)
    parts = checkpoint.state_dicts
    if out_format == "safetensors" and checkpoint.parts != ((),) and args.key is None:
        raise CheckpointError(
            f"IN {str(source)!r} is a training checkpoint (state dicts "
            f"{', '.join(map(repr, checkpoint.names))} among its entries); a safetensors file "
            "holds one flat dict of tensors. Write a .pt OUT to keep everything, or pick the "
            "state dict to write with --key NAME."
        )
    requests = _normalize_requests(args, parts)
    args.several_parts = len(parts) > 1
    used: set[int] = set()
    plans = {}
    for part, state in parts.items():
        with _about(source):
            entries = detect(state)
        _check_computable(state, entries, source, requests[part])
        plans[part] = (entries, _dims(args.dim, part, entries, requests[part], used))
    unused = [pattern or str(dim) for i, (pattern, dim) in enumerate(args.dim) if i not in used]
    if unused:
        raise CheckpointError(
            f"--dim {unused[0]} matches no normalized tensor of IN {str(source)!r} whose dim it "
            "could give; name tensors as the checkpoint does (paranorm inspect lists them), or "
            "drop it."
        )
    converted: dict[str, Any] = {}
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    tensors = 0
    for part, state in parts.items():
        entries, dims = plans[part]
        converted[part], part_notes, part_rows, count = _converted(args, part, state, requests[part], entries, dims)
        notes += part_notes
        rows += part_rows
        tensors += count
    # A safetensors OUT takes the one state dict (--key), a .pt OUT the whole checkpoint.
    result = converted[args.key] if out_format == "safetensors" and args.key is not None else checkpoint.replaced(converted)
    if not args.dry_run:
        write_checkpoint(target, result, metadata=checkpoint.metadata,
                         progress=None if args.json else _progress, overwrite=args.overwrite or args.in_place)
    summary = {
        "input": str(source), "output": None if args.dry_run else str(target), "to": args.to,
        "dry_run": bool(args.dry_run), "nested": checkpoint.nested,
        "state_dicts": checkpoint.names, "tensors": tensors, "changed": rows, "notes": notes,
        "unconverted": [row["tensor"] for row in rows if not row["converted"]],
    }
    # Only now, with the file written, does stdout get anything (--json readers parse it whole).
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    return 0


def _print_table(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    changed = sum(row["converted"] for row in summary["changed"])
    kept = len(summary["unconverted"])
    title = (f"paranorm convert --to {summary['to']}: {changed} of {summary['tensors']} tensors "
             "change layout" + (f", {kept} kept as they were" if kept else ""))
    table = Table(title=title)
    for column in ("tensor", "kind", "from", "to", "dim"):
        table.add_column(column, no_wrap=True)
    table.add_column("keys after", no_wrap=True)
    rows = []
    for row in summary["changed"]:
        dim = "" if row["kind"] is None or not row["converted"] else str(row["dim"])
        after = row["keys_after"] if row["converted"] else ["(unchanged)"]
        rows.append((row["tensor"], str(row["kind"]), str(row["from"]), str(row["to"]), dim, after))
        table.add_row(*rows[-1][:5], "\n".join(after))
    # The table, if its cells can wrap between words to fit; never folded inside a key.
    if summary["changed"] and fits(table, console, console.options):
        console.print(table)
    elif summary["changed"]:  # too narrow for the table: a table would cut names mid-key
        console.print(title, markup=False, highlight=False)
        for tensor, kind, source, to, dim, after in rows:
            console.print(f"{tensor}: {kind}, {source} -> {to}" + (f", dim {dim}" if dim else ""),
                          markup=False, highlight=False)
            console.print(f"    keys after: {', '.join(after)}", markup=False, highlight=False)
    else:
        console.print(f"every normalized tensor is already in layout {summary['to']!r}", markup=False)
    for note in summary["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    if summary["dry_run"]:
        console.print("dry run: nothing written", markup=False)
    else:
        console.print(f"wrote {summary['output']}", markup=False, highlight=False)
