"""Read and write checkpoint files: one reader and one writer for every command.

Reads ``.pt``/``.pth``/``.bin``/``.ckpt`` with ``torch.load(weights_only=True)`` (memory-mapped
where the file allows it, so a large checkpoint is not held twice) and ``.safetensors``
(optional dependency). A training script's checkpoint that nests the state_dict under
``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is accepted; its other entries are kept.
Writes atomically (:mod:`paranorm._files`): a temporary file in the target's folder, then
``os.replace``, so an interrupted or failed write never leaves a partial file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._errors import CheckpointError
from .._files import atomic_write

__all__ = [
    "NESTED_KEYS",
    "SAFETENSORS_SUFFIX",
    "TORCH_SUFFIXES",
    "Checkpoint",
    "Progress",
    "checkpoint_format",
    "nbytes",
    "read_checkpoint",
    "write_checkpoint",
]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
#: The entries of a training checkpoint that hold the state_dict, in the order tried.
NESTED_KEYS = ("state_dict", "model", "model_state_dict")
_CHUNK = 8 * 2**20

#: ``progress(total_bytes, description)`` -> a context manager yielding ``advance(n_bytes)``.
Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


def checkpoint_format(path: Path, role: str) -> str:
    """"torch" or "safetensors", from ``path``'s suffix; ``role`` ("IN", "OUT") names it."""
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == SAFETENSORS_SUFFIX:
        return "safetensors"
    if suffix == ".py":
        raise CheckpointError(
            f"{role} {str(path)!r} is Python source, not a checkpoint. To inspect a model, "
            f"name it with --model {path}:make_model."
        )
    raise CheckpointError(
        f"{role} {str(path)!r} has suffix {suffix or '(none)'!r}; paranorm reads and writes "
        f"{', '.join(TORCH_SUFFIXES)} (torch.save) and {SAFETENSORS_SUFFIX}. Rename the file."
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


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as read: the whole object, where its state_dict is, and metadata.

    Attributes:
        obj: what the file holds (a state_dict, or a dict nesting one).
        nested: the entry of ``obj`` that holds the state_dict, None when ``obj`` is one.
        metadata: a safetensors file's ``__metadata__``, else None.
    """

    obj: Any
    nested: str | None = None
    metadata: dict[str, str] | None = None

    @property
    def state_dict(self) -> Mapping[str, Any]:
        """The state_dict (an OrderedDict keeps the ``_metadata`` legacy spectral norm needs)."""
        return self.obj[self.nested] if self.nested is not None else self.obj


def _read_safetensors(path: Path) -> Checkpoint:
    st = _safetensors()
    try:
        state = st.load_file(path)
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
    except Exception as error:
        raise CheckpointError(
            f"cannot read {str(path)!r} as safetensors ({type(error).__name__}: {error}); the file "
            "is truncated or not a safetensors file."
        ) from None
    return Checkpoint(state, None, header.get("__metadata__"))


def _is_state_dict(obj: Any) -> bool:
    """A mapping with tensors and no nested mappings (a count or a step may sit beside them)."""
    if not isinstance(obj, Mapping):
        return False
    values = list(obj.values())
    return any(isinstance(t, torch.Tensor) for t in values) and not any(isinstance(t, Mapping) for t in values)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load the checkpoint file ``path`` (weights only; see the module docstring).

    Raises:
        CheckpointError: no such file, a folder, an unknown suffix, a file that cannot be read
            as weights, or one that holds no state_dict.
    """
    path = Path(path)
    kind = checkpoint_format(path, "IN")
    if not path.exists():
        raise CheckpointError(f"no such file: {str(path)!r}.")
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is not a regular file; pass the checkpoint file itself.")
    if kind == "safetensors":
        return _read_safetensors(path)
    if _looks_like_safetensors(path):
        raise CheckpointError(
            f"{str(path)!r} is a safetensors file but its suffix says torch.save; rename it to "
            f"{path.with_suffix(SAFETENSORS_SUFFIX).name!r}."
        )
    try:
        obj = _torch_load(path)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"cannot read {str(path)!r} with torch.load(weights_only=True) "
            f"({type(error).__name__}: {first}); the file is truncated, corrupt, or holds "
            "objects other than tensors and containers."
        ) from None
    if _is_state_dict(obj):
        return Checkpoint(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                return Checkpoint(obj, key)
    found = ", ".join(repr(k) for k in list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"{str(path)!r} holds no state_dict: expected a dict of tensors or a dict with a "
        f"{', '.join(repr(k) for k in NESTED_KEYS)} entry of tensors, found {found}."
    )


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (nested dicts and lists): the size torch.save will write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(nbytes(x) for x in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(x) for x in obj)
    return 0


class _CountingWriter:
    """A write-only file that reports each write to a progress callback (torch.save streams)."""

    def __init__(self, handle: Any, advance: Callable[[int], None]) -> None:
        self.handle, self.advance = handle, advance

    def write(self, data: Any) -> int:
        written = self.handle.write(data)
        self.advance(len(data))
        return int(written)

    def flush(self) -> None:
        self.handle.flush()


def _no_progress(total: int, description: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def write_checkpoint(
    path: str | Path, obj: Any, *, metadata: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> None:
    """Write ``obj`` to ``path`` in the format its suffix names, atomically.

    ``progress``, if given, is called as ``progress(total_bytes, description)`` and must return
    a context manager yielding ``advance(n_bytes)``.
    """
    path = Path(path)
    kind = checkpoint_format(path, "OUT")
    progress = progress or _no_progress
    # Interrupted or failed: the temporary file goes; the target is untouched.
    with atomic_write(path) as handle:
        if kind == "safetensors":
            tensors = {k: t.contiguous() for k, t in obj.items()}
            # Hugging Face loaders expect {"format": "pt"} in the header of a torch file.
            data = _safetensors().save(tensors, metadata=metadata or {"format": "pt"})
            with progress(len(data), f"writing {path.name}") as advance:
                view = memoryview(data)
                for start in range(0, len(data), _CHUNK):
                    handle.write(view[start : start + _CHUNK])
                    advance(min(_CHUNK, len(data) - start))
        else:
            with progress(nbytes(obj), f"writing {path.name}") as advance:
                torch.save(obj, _CountingWriter(handle, advance))  # type: ignore[arg-type]  # streamed
