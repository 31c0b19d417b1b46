"""Read and write checkpoint files: one reader and one writer for every command.

The format of a file is read from its bytes, never from its name: torch.save's zip archives
and older pickles (read with ``torch.load(weights_only=True)``, memory-mapped where the file
allows it, so a large checkpoint is not held twice) and safetensors files (reading them needs
the safetensors package). HiFi-GAN's ``g_02500000`` has no suffix and reads as what it is. A
training checkpoint's state dicts are found wherever it nests them (:mod:`.structure`); its other
entries are kept.

Files come from others (model hubs, colleagues), so the reader trusts nothing in them: regular
files only (a FIFO would block forever), a zip's CRC-32s checked (torch.load does not, so a
flipped byte would load silently), no code from a pickle ever run, no tensor without values
(meta), none whose strides repeat a few stored bytes into gigabytes; and it says in one line
which file (and tensor) is wrong and what to do.

Writes are atomic (:mod:`paranorm._files`): a temporary file in the target's folder, then a
rename, so an interrupted or failed write never leaves a partial file. The format written is
the one OUT's suffix names: ``.safetensors``, or else torch.save's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..._errors import CheckpointError
from ..._files import atomic_write, check_target
from .messages import short
from .safetensors_format import (
    check_writable,
    load_safetensors,
    safetensors_header,
    write_safetensors,
)
from .source import foreign, open_regular, sniff
from .structure import Checkpoint, check_state_dict, check_tensors, find_state_dicts, tensors_in
from .torch_format import check_storages, check_zip, load_error, torch_load, write_torch

__all__ = [
    "Checkpoint",
    "Progress",
    "checkpoint_format",
    "nbytes",
    "read_checkpoint",
    "write_checkpoint",
]

#: ``progress(total_bytes, description)`` -> a context manager yielding ``advance(n_bytes)``.
Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]

#: Suffixes that name something else than a checkpoint: writing one there would surprise.
_NOT_CHECKPOINTS = (".py", ".txt", ".md", ".json", ".yaml", ".yml", ".png", ".jpg", ".svg", ".pdf", ".onnx", ".npz", ".npy")


def checkpoint_format(path: Path, role: str = "OUT") -> str:
    """The format to write ``path`` in: "safetensors" for a .safetensors suffix, else "torch"
    (torch.save's); ``role`` names the path in the error for a suffix of something else."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in _NOT_CHECKPOINTS:
        raise CheckpointError(
            f"{role} {str(path)!r} has suffix {short(suffix)}, which names no checkpoint format; "
            "paranorm writes torch.save files (.pt, .pth, .bin, .ckpt, or no suffix) and "
            ".safetensors. Rename it."
        )
    return "torch"


def _no_progress(total: int, description: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def _unknown(path: Path, head: bytes, size: int, handle: Any) -> CheckpointError:
    """Why a file whose first bytes are no checkpoint's cannot be read."""
    if path.suffix.lower() == ".py":
        return CheckpointError(
            f"{str(path)!r} is Python source, not a checkpoint. To inspect a model, name it with "
            f"--model {path}:make_model (this runs that code)."
        )
    if path.suffix.lower() == ".safetensors" and size >= 8:
        safetensors_header(handle, path, size)  # raises, saying what is wrong in the header
    what = foreign(head, size) or (
        f"is not a checkpoint (it starts with bytes {head[:8].hex(' ')}: neither torch.save's zip "
        "archive or pickle nor a safetensors header). Pass the checkpoint file itself"
    )
    return CheckpointError(f"cannot read {str(path)!r}: it {what}.")


def read_checkpoint(path: str | os.PathLike[str], *, dense: bool = True) -> Checkpoint:
    """Load the checkpoint file ``path`` (weights only; see the module docstring).

    Args:
        path: a file written by torch.save (any name) or a safetensors file.
        dense: refuse sparse and quantized tensors in the state dicts (pass False to let them
            through, for a caller that only copies them).

    Raises:
        CheckpointError: no such file, not a regular file, not a checkpoint (text, a web page,
            a Git LFS pointer), a file that is truncated or corrupt (a zip record failing its
            CRC-32), one that asks to run code, one that holds no state dict, a key that is not
            a string, a tensor without values (meta) or that would expand far beyond its stored
            bytes. The message names the file, and the tensor where one is at fault.
    """
    path = Path(path)
    handle, size = open_regular(path)
    metadata, obj = None, None
    with handle:
        head = handle.read(512)
        kind = sniff(head)
        records = None
        if kind == "safetensors" or (kind == "unknown" and path.suffix.lower() == ".safetensors"):
            obj, metadata = load_safetensors(handle, path, size)  # its header checked first
        elif kind == "zip":
            records = check_zip(handle, path, size)
        elif kind == "unknown" and (path.suffix.lower() == ".py" or foreign(head, size, text=False)):
            raise _unknown(path, head, size, handle)
        # else a pickle: torch.save's legacy format, or its oldest protocol, which is text
    if obj is None:
        try:
            obj = torch_load(path, mmap=records is not None)
        except Exception as error:  # whatever a hostile file makes the unpickler raise
            raise load_error(path, error, kind, head, size) from None
        if records is not None:
            check_storages(path, records)
    parts = find_state_dicts(obj)
    if not parts:
        found = ", ".join(short(k, 40) for k in list(obj)[:8]) if isinstance(obj, dict) and obj else (
            "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"{str(path)!r} holds no state_dict: expected a dict of tensors, or a training "
            f"checkpoint with one inside (e.g. under 'state_dict', 'model' or 'generator'), "
            f"found {found}."
        )
    checkpoint = Checkpoint(obj, tuple(parts), metadata)
    for state in checkpoint.state_dicts.values():
        check_state_dict(state, path)
    check_tensors(obj, path, size, list(checkpoint.state_dicts.values()) if dense else None)
    return checkpoint


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (nested dicts and lists): the size torch.save will write."""
    return sum(t.numel() * t.element_size() for _, t in tensors_in(obj))


def write_checkpoint(
    path: str | os.PathLike[str], obj: Any, *, metadata: dict[str, str] | None = None,
    progress: Progress | None = None, overwrite: bool = True,
) -> None:
    """Write ``obj`` to ``path`` in the format its suffix names, atomically.

    A ``.safetensors`` file is streamed tensor by tensor (memory beyond the tensors: about one
    block of 8 MiB), laid out as the safetensors package lays it out, with ``metadata`` (default
    ``{"format": "pt"}``, what Hugging Face loaders expect); any other name gets torch.save's
    format. ``progress``, if given, is called as ``progress(total_bytes, description)`` and
    must return a context manager yielding ``advance(n_bytes)``. A symlink ``path`` is written
    through (its target replaced).

    Raises:
        CheckpointError: ``path`` exists and not ``overwrite``, is read-only, a folder or a link
            to nowhere, or names another format; a value a safetensors file cannot hold (named,
            before anything is written); or the write failed (no space left, ...). ``path`` is
            then as it was.
    """
    path = Path(path)
    kind = checkpoint_format(path, "OUT")
    progress = progress or _no_progress
    if kind == "safetensors":
        metadata = metadata or {"format": "pt"}
        check_writable(obj, metadata, path)
    check_target(path, overwrite=overwrite, what="file", error=CheckpointError)
    # Interrupted or failed: the temporary file goes; the target is untouched.
    with atomic_write(path, overwrite=overwrite, error=CheckpointError) as handle:
        if kind == "safetensors":
            write_safetensors(handle, obj, metadata, progress, f"writing {path.name}")
        else:
            write_torch(handle, obj, path, progress, nbytes(obj))
