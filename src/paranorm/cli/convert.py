"""``paranorm convert IN OUT --to LAYOUT``: move a checkpoint's normalized tensors between layouts.

Reads ``.pt``/``.pth``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``; a nested
``{"model": sd}`` or ``{"state_dict": sd}`` checkpoint keeps its other entries) and
``.safetensors`` (optional dependency). Writes OUT's format (from its suffix), atomically: a
temporary file in OUT's folder, then ``os.replace``, so an interrupted or failed run never
leaves a partial OUT. IN is never overwritten unless ``--in-place``. Inputs are memory-mapped
where the format allows and outputs streamed, so a large checkpoint is not held twice; outputs of
``PROGRESS_MIN_BYTES`` or more show a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write
from ..checkpoint import LAYOUTS, CheckpointWarning, Entry, convert, detect
from ..errors import CheckpointError

__all__ = ["add_parser", "read_checkpoint", "run", "write_checkpoint"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
#: Outputs at least this large get a progress bar (on stderr) while written.
PROGRESS_MIN_BYTES = 64 * 2**20
_CHUNK = 8 * 2**20
#: The entries of a nested checkpoint that hold the state_dict, in the order tried.
NESTED_KEYS = ("state_dict", "model")


def _format(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    raise CheckpointError(
        f"{role} {str(path)!r} has suffix {suffix or '(none)'!r}; paranorm convert reads and "
        f"writes {', '.join(TORCH_SUFFIXES)} (torch.save) and {SAFETENSORS_SUFFIX}. Rename the file."
    )


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError(
            "reading or writing .safetensors needs the safetensors package: "
            "pip install 'paranorm[safetensors]' (or pip install safetensors)."
        ) from None
    return safetensors.torch


@contextmanager
def _progress(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; a rich bar on stderr when ``enabled`` and the file is large."""
    if not enabled or total < PROGRESS_MIN_BYTES:
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


def _head(path: Path, size: int = 16) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def _looks_like_safetensors(path: Path) -> bool:
    head = _head(path)
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return 0 < header < path.stat().st_size and head[8:9] == b"{"


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True), memory-mapped when the file allows it (zip format)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap can only be used" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # pre-1.6 format


def read_checkpoint(path: Path) -> tuple[Any, str | None, dict[str, str] | None]:
    """Load ``path``: (checkpoint object, the nested entry holding the state_dict or None,
    safetensors metadata or None). Tensors are memory-mapped where the format allows, so a
    large checkpoint is not read into memory twice."""
    kind = _format(path, "IN")
    if not path.is_file():
        raise CheckpointError(f"IN {str(path)!r} does not exist or is not a file.")
    if kind == "safetensors":
        st = _safetensors()
        try:
            state = st.load_file(path)
            head = _head(path, 8)
            with open(path, "rb") as handle:
                handle.seek(8)
                header = json.loads(handle.read(int.from_bytes(head, "little")))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(
                f"cannot read {str(path)!r} as safetensors ({type(error).__name__}: {error}); the file "
                "is truncated or not a safetensors file."
            ) from None
        return state, None, header.get("__metadata__")
    if _looks_like_safetensors(path):
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but its suffix says torch.save; rename it to "
            f"{path.with_suffix(SAFETENSORS_SUFFIX).name!r}."
        )
    try:
        obj = _torch_load(path)
    except Exception as error:  # noqa: BLE001 - RuntimeError, EOFError, UnpicklingError, ...
        raise CheckpointError(
            f"cannot read {str(path)!r} with torch.load(weights_only=True) "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); the "
            "file is truncated, corrupt, or holds objects other than tensors and containers."
        ) from None
    if isinstance(obj, Mapping) and obj and all(isinstance(t, torch.Tensor) for t in obj.values()):
        return obj, None, None
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(t, torch.Tensor) for t in inner.values()):
                return obj, key, None
    found = ", ".join(repr(k) for k in list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{str(path)!r} holds no state_dict: expected a dict of tensors or a dict with a "
        f"'state_dict' or 'model' entry of tensors, found {found}."
    )


def _nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (nested dicts and lists): the size torch.save will write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(x) for x in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(x) for x in obj)
    return 0


class _CountingWriter:
    """A write-only file that reports each write to a progress callback (torch.save streams)."""

    def __init__(self, handle: Any, advance: Callable[[int], None]) -> None:
        self.handle, self.advance = handle, advance

    def write(self, data: Any) -> int:
        written = self.handle.write(data)
        self.advance(len(data))
        return written

    def flush(self) -> None:
        self.handle.flush()


def write_checkpoint(
    path: Path, obj: Any, *, metadata: dict[str, str] | None = None, show_progress: bool = False
) -> None:
    """Write ``obj`` to ``path`` atomically: a temporary file in the same folder, then os.replace."""
    kind = _format(path, "OUT")
    # Interrupted or failed: the temporary file goes; OUT is untouched.
    with atomic_write(path) as handle:
        if kind == "safetensors":
            tensors = {k: t.contiguous() for k, t in obj.items()}
            # Hugging Face loaders expect {"format": "pt"} in the header of a torch file.
            data = _safetensors().save(tensors, metadata=metadata or {"format": "pt"})
            with _progress(len(data), f"writing {path.name}", show_progress) as advance:
                view = memoryview(data)
                for start in range(0, len(data), _CHUNK):
                    handle.write(view[start : start + _CHUNK])
                    advance(min(_CHUNK, len(data) - start))
        else:
            with _progress(_nbytes(obj), f"writing {path.name}", show_progress) as advance:
                torch.save(obj, _CountingWriter(handle, advance))  # type: ignore[arg-type]  # streamed


def _parse_dim(text: str) -> tuple[str, int | None]:
    key, sep, value = text.rpartition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=DIM (e.g. conv.weight=0), got {text!r}")
    if value.lower() == "none":
        return key, None
    try:
        return key, int(value)
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
            "keys are copied unchanged. Writes atomically; never overwrites IN without --in-place."
        ),
    )
    parser.add_argument("input", metavar="IN", type=Path, help="checkpoint to read (.pt, .pth, .bin, .ckpt, .safetensors)")
    parser.add_argument("output", metavar="OUT", type=Path, nargs="?", help="where to write; its suffix picks the format")
    parser.add_argument("--to", required=True, choices=LAYOUTS, help="the layout to write")
    parser.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    parser.add_argument("--in-place", action="store_true", help="overwrite IN (atomically); OUT may be omitted")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of a table")
    parser.add_argument(
        "--dim", action="append", type=_parse_dim, default=[], metavar="KEY=DIM",
        help="the normalization dim of tensor KEY (e.g. conv.weight=1) where the shapes cannot say it",
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


def _row(before: Entry | None, after: Entry | None) -> dict[str, Any]:
    entry = after or before
    assert entry is not None
    return {
        "tensor": entry.name,
        "kind": (before.kind if before and before.kind else after.kind if after else None),
        "from": before.layout if before else None,
        "to": after.layout if after else None,
        "dim": (after.dim if after and after.kind else before.dim if before else None),
        "keys_before": list(before.keys) if before else [],
        "keys_after": list(after.keys) if after else [],
    }


def run(args: argparse.Namespace) -> int:
    """Convert ``args.input`` into ``args.output``; return the exit code."""
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
    out_format = _format(target, "OUT")
    show_progress = not args.json
    obj, nested, metadata = read_checkpoint(source)
    state = obj[nested] if nested else obj
    normalize = {key: "weight_norm" for key in args.weight_norm}
    for key in args.spectral_norm:
        if key in normalize:
            raise CheckpointError(f"{key!r} is named by both --weight-norm and --spectral-norm; pick one.")
        normalize[key] = "spectral_norm"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        converted = convert(state, to=args.to, dims=dict(args.dim), normalize=normalize)  # type: ignore[arg-type]
    notes = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    before = {e.name: e for e in detect(state)}
    after = {e.name: e for e in detect(converted)}
    rows = [_row(before.get(n), after.get(n)) for n in after if before.get(n) is None or before[n].keys != after[n].keys]
    if out_format == "safetensors" and nested:
        others = [k for k in obj if k != nested]
        if others:
            raise CheckpointError(
                f"IN is a nested checkpoint (entries {', '.join(map(repr, others))} besides "
                f"{nested!r}); safetensors holds tensors only. Write a .pt OUT to keep them."
            )
    if nested:
        result = dict(obj)
        result[nested] = converted
    else:
        result = converted
    if not args.dry_run:
        write_checkpoint(target, converted if out_format == "safetensors" else result,
                         metadata=metadata, show_progress=show_progress)
    summary = {
        "input": str(source), "output": None if args.dry_run else str(target), "to": args.to,
        "dry_run": bool(args.dry_run), "nested": nested, "tensors": len(after), "changed": rows, "notes": notes,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    return 0


def _print_table(summary: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"paranorm convert --to {summary['to']}: {len(summary['changed'])} of "
                        f"{summary['tensors']} tensors change layout")
    for column in ("tensor", "kind", "from", "to", "dim"):
        table.add_column(column, no_wrap=True)
    table.add_column("keys after", overflow="fold")
    for row in summary["changed"]:
        dim = "" if row["kind"] is None else str(row["dim"])
        table.add_row(row["tensor"], str(row["kind"]), str(row["from"]), str(row["to"]), dim, "\n".join(row["keys_after"]))
    if summary["changed"]:
        console.print(table)
    else:
        console.print(f"every normalized tensor is already in layout {summary['to']!r}", markup=False)
    for note in summary["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False)
    if summary["dry_run"]:
        console.print("dry run: nothing written", markup=False)
    else:
        console.print(f"wrote {summary['output']}", markup=False, highlight=False)
