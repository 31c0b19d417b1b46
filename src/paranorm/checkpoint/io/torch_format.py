"""torch.save files: the zip's CRC-32s, the storages a pickle declares, and torch.load's errors.

torch.load checks no CRC (a flipped byte would load silently), and memory-mapped it reads a
storage's declared size even past its record; both are checked here first. The pickle is read
for those sizes with stand-ins for every global, so no code from the file runs; torch.load runs
with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..._errors import CheckpointError
from . import limits
from .messages import ANSI, first_line, reason, short, size_text
from .source import foreign

__all__ = [
    "check_storages",
    "check_zip",
    "load_error",
    "torch_load",
    "write_torch",
]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _zip_error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read {str(path)!r} with torch.load(weights_only=True): {what}; the file is "
        "truncated or corrupt. Download or copy it again."
    )


def _record(name: str) -> str:
    base = name.rpartition("/")[2]
    if "/data/" in f"/{name}" and base.isdigit():
        return f"record {short(name)} (the bytes of a tensor)"
    if base == "data.pkl":
        return f"record {short(name)} (the structure: keys, shapes, dtypes)"
    return f"record {short(name)}"


def check_zip(handle: BinaryIO, path: Path, size: int) -> dict[str, int] | None:
    """Check every record of a zip checkpoint against its CRC-32; its records' sizes if it can
    be memory-mapped, else None.

    torch.load checks no CRC: a flipped byte in a tensor's record would load silently. Records
    torch.save writes are stored; a re-zipped checkpoint may compress them, which torch reads
    only without mmap, and whose declared size must stay sane (a zip bomb).
    """
    try:
        archive = zipfile.ZipFile(handle)
        records = archive.infolist()
    except Exception as error:  # BadZipFile, OSError, ValueError, EOFError, ...
        raise _zip_error(path, f"its zip directory cannot be read ({reason(error)})") from None
    stored = all(r.compress_type == zipfile.ZIP_STORED for r in records)
    declared = sum(r.file_size for r in records)
    if not stored and declared > max(limits.EXPANDED_RATIO * size, limits.EXPANDED_MIN):
        raise CheckpointError(
            f"{str(path)!r} declares {size_text(declared)} of compressed records in a file of "
            f"{size_text(size)}; paranorm refuses to inflate it (a zip bomb, or not a checkpoint). "
            "Save the weights with torch.save instead."
        )
    with archive:
        for record in records:
            try:
                with archive.open(record) as member:
                    while member.read(limits.CHUNK):
                        pass
            except zipfile.BadZipFile as error:
                if "CRC" in str(error):
                    raise CheckpointError(
                        f"{str(path)!r} is corrupt: {_record(record.filename)} fails its CRC-32 "
                        "check, so its bytes changed after they were written (a bad disk, "
                        "download or copy). Download or copy the file again."
                    ) from None
                raise _zip_error(path, f"{_record(record.filename)} cannot be read ({reason(error)})") from None
            except Exception as error:  # zlib.error, EOFError, OSError, NotImplementedError
                raise _zip_error(path, f"{_record(record.filename)} cannot be read ({reason(error)})") from None
    return {r.filename: r.file_size for r in records} if stored else None


class _StandIn:
    """What every global of a pickle becomes when :class:`_Storages` reads it: nothing runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        return _StandIn()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageType(_StandIn):
    """A stand-in for one of torch's storage classes, which keeps its element size."""

    def __init__(self, element_size: int) -> None:
        self.element_size = element_size


def _storage_type(name: str) -> _StandIn:
    cls = getattr(torch, name, None)
    if not isinstance(cls, type):
        return _StandIn()
    if cls is torch.UntypedStorage:
        return _StorageType(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        dtype = getattr(cls, "dtype", None)
    return _StorageType(torch.empty((), dtype=dtype).element_size()) if isinstance(dtype, torch.dtype) else _StandIn()


class _Storages(pickle.Unpickler):
    """Reads a zip checkpoint's ``data.pkl`` for the storages it declares: key -> bytes.

    Every global is a stand-in that keeps no more than a storage class's element size, so no
    code from the file runs, whatever the file holds.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.declared: dict[str, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return _storage_type(name)
        return _StandIn

    def persistent_load(self, pid: Any) -> Any:
        # ("storage", storage class, key, location, numel), as torch.save writes it; torch
        # keeps the first size a key is given.
        if isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType) and isinstance(pid[4], int):
            self.declared.setdefault(str(pid[2]), pid[4] * pid[1].element_size)
        return None


def check_storages(path: Path, records: Mapping[str, int]) -> None:
    """Refuse a storage whose declared size is not its record's: memory-mapped, torch would
    read past the record (other tensors' bytes, or the zip directory) without a word."""
    pickled = next((name for name in records if name.rpartition("/")[2] == "data.pkl"), None)
    if pickled is None:
        return  # torch.load read it, so it did not need one
    prefix = pickled[: -len("data.pkl")]
    with zipfile.ZipFile(path) as archive:
        data = archive.read(pickled)
    reader = _Storages(data)
    try:
        reader.load()
    except Exception as error:  # torch.load read these bytes; a difference is the file's fault
        raise _zip_error(path, f"{_record(pickled)} cannot be read ({reason(error)})") from None
    for key, declared in reader.declared.items():
        record = f"{prefix}data/{key}"
        if records.get(record, declared) != declared:
            raise CheckpointError(
                f"{str(path)!r} is corrupt: a tensor's storage declares {declared} bytes but "
                f"{_record(record)} holds {records[record]}; torch would read bytes that are not "
                "the tensor's. Download or copy the file again."
            )


def _weights_only_refusal(text: str) -> str | None:
    """What torch.load(weights_only=True) refused, from its message; None if it refused nothing."""
    if "Weights only load failed" not in text:
        return None
    found = _GLOBAL.search(text)
    if found:
        return f"refers to {found.group(1)}"
    for line in ANSI.sub("", text).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(
            ("Weights only load failed", "Please file", "Check the documentation", "(", "In PyTorch")
        ):
            return f"holds what weights never do ({first_line(line)})"
    return "holds objects other than tensors and containers"


def load_error(path: Path, error: Exception, kind: str, head: bytes, size: int) -> CheckpointError:
    shown = repr(str(path))
    refused = _weights_only_refusal(str(error))
    if refused is not None and (kind in ("zip", "pickle", "tar") or _GLOBAL.search(str(error))):
        return CheckpointError(
            f"{shown} {refused}, which torch.load(weights_only=True) refuses: paranorm loads "
            "weights only and never runs code from a file. If you trust its source, load it in "
            "Python with torch.load(path, weights_only=False) and torch.save its state_dict()."
        )
    if kind == "unknown":
        found = foreign(head, size)
        what = found or (
            f"is not a torch.save file (it starts with bytes {head[:8].hex(' ')}, neither a zip "
            "archive nor a pickle). Pass the checkpoint file itself."
        )
        return CheckpointError(f"cannot read {shown} with torch.load(weights_only=True): it {what}")
    return CheckpointError(
        f"cannot read {shown} with torch.load(weights_only=True) ({reason(error)}); the file is "
        "truncated or corrupt. Download or copy it again."
    )


def torch_load(path: Path, *, mmap: bool) -> Any:
    """torch.load(weights_only=True) on the CPU; its warnings are not the user's business.

    A torch.save file named ``.safetensors`` is read through a file object: given the name,
    torch.load would hand it to safetensors by its suffix.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix.lower() == ".safetensors":
            with open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


# --- writing ---------------------------------------------------------------------------------


class _CountingWriter:
    """A write-only file that reports each write to a progress callback (torch.save streams).

    It keeps the first OSError the file raised: torch.save reports a failed write as
    ``[enforce fail at inline_container.cc] unexpected pos``, which says nothing of the disk.
    """

    def __init__(self, handle: Any, advance: Callable[[int], None]) -> None:
        self.handle, self.advance = handle, advance
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            written = self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise
        self.advance(len(data))
        return int(written)

    def flush(self) -> None:
        self.handle.flush()


def write_torch(handle: BinaryIO, obj: Any, path: Path, progress: Any, total: int) -> None:
    """torch.save ``obj`` into ``handle``, reporting progress and the disk's own errors."""
    with progress(total, f"writing {path.name}") as advance:
        writer = _CountingWriter(handle, advance)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]  # streamed
        except Exception as error:
            if writer.error is not None:
                raise writer.error from None  # the disk's own words: no space left, ...
            raise CheckpointError(f"torch.save could not write {str(path)!r}: {reason(error)}.") from None
