"""Read and write checkpoint files: one reader and one writer for every command.

Reads ``.pt``/``.pth``/``.bin``/``.ckpt`` with ``torch.load(weights_only=True)`` (memory-mapped
where the file allows it, so a large checkpoint is not held twice) and ``.safetensors``
(optional dependency). A training script's checkpoint that nests the state_dict under
``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is accepted; its other entries are kept.

Files come from others (model hubs, colleagues), so the reader trusts nothing in them: it reads
regular files only (a FIFO would block forever), checks a zip checkpoint's CRC-32s (torch.load
does not, so a flipped byte would load silently), never runs code from a pickle, refuses tensors
without values (meta) and tensors whose strides repeat a few stored bytes into gigabytes, and
says in one line which file (and tensor) is wrong and what to do.

Writes atomically (:mod:`paranorm._files`): a temporary file in the target's folder, then a
rename, so an interrupted or failed write never leaves a partial file. ``.safetensors`` is
written here, tensor by tensor, as the format's specification lays it out (the safetensors
package builds the whole file in memory first); reading it needs the safetensors package.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .._errors import CheckpointError
from .._files import atomic_write, check_target, file_kind, shell_quoted

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
#: A tensor (or a file's tensors together) may take at most this many times the bytes the file
#: stores for it, beyond _EXPANDED_MIN: more is a stride-0 view that would fill the memory.
_EXPANDED_RATIO, _EXPANDED_MIN = 16, 256 * 2**20
#: The largest header the safetensors package reads (its own limit).
_SAFETENSORS_HEADER_MAX = 100_000_000
#: safetensors' dtypes, narrowest first: the order the format's writer sorts them in (widest
#: first, then by name), so a file written here is laid out as safetensors lays it out.
_SAFETENSORS_DTYPES = (
    ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"), ("I16", "int16"), ("U16", "uint16"), ("F16", "float16"),
    ("BF16", "bfloat16"), ("I32", "int32"), ("U32", "uint32"), ("F32", "float32"),
    ("C64", "complex64"), ("F64", "float64"), ("I64", "int64"), ("U64", "uint64"),
)  # fmt: skip
_ST_DTYPE = {name: getattr(torch, attr) for name, attr in _SAFETENSORS_DTYPES if hasattr(torch, attr)}
_ST_NAME = {dtype: name for name, dtype in _ST_DTYPE.items()}
_ST_RANK = {name: rank for rank, (name, _) in enumerate(_SAFETENSORS_DTYPES)}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")

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
        f"{role} {str(path)!r} has suffix {_short(suffix) if suffix else '(none)'}; paranorm reads "
        f"and writes {', '.join(TORCH_SUFFIXES)} (torch.save) and {SAFETENSORS_SUFFIX}. Rename the file."
    )


# --- messages: one line, whatever a file or a library below puts in them ---------------------


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a hostile key may be a megabyte long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def _first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text`` without terminal escapes, cut to ``limit``."""
    lines = (line.strip() for line in _ANSI.sub("", text).splitlines())
    line = next((line for line in lines if line), "")
    line = "".join(c if c.isprintable() else " " for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(error: BaseException) -> str:
    text = _first_line(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _where(node: tuple[Any, ...] | None) -> str:
    """A tensor's place in the file, from a linked path node: 'conv.weight' or ['model']['w']."""
    keys = []
    while node is not None:
        node, key = node
        keys.append(key)
    keys.reverse()
    if len(keys) == 1:
        return _short(keys[0])
    return "".join(f"[{_short(key, 60)}]" for key in keys)


# --- reading ---------------------------------------------------------------------------------


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError(
            "reading .safetensors needs the safetensors package: "
            "pip install 'paranorm[safetensors]' (or pip install safetensors)."
        ) from None
    return safetensors.torch


def _not_regular(path: Path, mode: int) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is a {file_kind(mode)}, not a regular file; paranorm reads checkpoint "
        "files only. Pass the checkpoint file itself."
    )


def _stat_error(path: Path, error: OSError) -> CheckpointError:
    shown = repr(str(path))
    if isinstance(error, FileNotFoundError):
        if path.is_symlink():
            return CheckpointError(
                f"{shown} is a symlink to {os.path.realpath(path)!r}, which does not exist; point "
                "the link at the checkpoint or pass the checkpoint itself."
            )
        return CheckpointError(f"no such file: {shown}.")
    if isinstance(error, PermissionError):
        return CheckpointError(
            f"cannot read {shown}: permission denied. Make it readable "
            f"(chmod u+r {shell_quoted(path)}; and u+x on its folders) or ask its owner."
        )
    return CheckpointError(f"cannot read {shown}: {error.strerror or _reason(error)}. Pass a readable checkpoint file.")


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading, after checking it is a regular file (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            # O_NONBLOCK: were the file swapped for a FIFO since the stat, opening still returns.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise _stat_error(path, error) from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _not_regular(path, info.st_mode)
    return os.fdopen(fd, "rb"), info.st_size


def _sniff(head: bytes) -> str:
    """What the first bytes of a file say it is: zip, pickle, tar, safetensors, or unknown."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"  # torch's format before 1.0
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    return "unknown"


def _foreign(head: bytes, size: int, *, text: bool = True) -> str | None:
    """What a file that is no checkpoint holds, when its first bytes say it; else None.

    ``text=False`` leaves plain text alone: torch.save's oldest pickle protocol writes text.
    """
    if size == 0:
        return "is empty (0 bytes): a download or copy that did not finish. Get the file again."
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return (
            "is a Git LFS pointer, not the checkpoint itself. Fetch the file (git lfs pull), or "
            "download the file rather than its pointer."
        )
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return (
            "is a web page, not a checkpoint: the download saved a page (a login, an error or a "
            "redirect). Download the file itself (on Hugging Face: a /resolve/ URL, not /blob/)."
        )
    decoded = head.decode("utf-8", errors="ignore")
    if text and decoded and all(c.isprintable() or c in "\t\r\n" for c in decoded):
        return (
            f"holds text (it starts with {_short(decoded[:40])}), not what torch.save or "
            "safetensors writes. Pass the checkpoint file itself."
        )
    return None


def _zip_error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"cannot read {str(path)!r} with torch.load(weights_only=True): {what}; the file is "
        "truncated or corrupt. Download or copy it again."
    )


def _record(name: str) -> str:
    base = name.rpartition("/")[2]
    if "/data/" in f"/{name}" and base.isdigit():
        return f"record {_short(name)} (the bytes of a tensor)"
    if base == "data.pkl":
        return f"record {_short(name)} (the structure: keys, shapes, dtypes)"
    return f"record {_short(name)}"


def _check_zip(handle: BinaryIO, path: Path, size: int) -> dict[str, int] | None:
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
        raise _zip_error(path, f"its zip directory cannot be read ({_reason(error)})") from None
    stored = all(r.compress_type == zipfile.ZIP_STORED for r in records)
    declared = sum(r.file_size for r in records)
    if not stored and declared > max(_EXPANDED_RATIO * size, _EXPANDED_MIN):
        raise CheckpointError(
            f"{str(path)!r} declares {_size(declared)} of compressed records in a file of "
            f"{_size(size)}; paranorm refuses to inflate it (a zip bomb, or not a checkpoint). "
            "Save the weights with torch.save instead."
        )
    with archive:
        for record in records:
            try:
                with archive.open(record) as member:
                    while member.read(_CHUNK):
                        pass
            except zipfile.BadZipFile as error:
                if "CRC" in str(error):
                    raise CheckpointError(
                        f"{str(path)!r} is corrupt: {_record(record.filename)} fails its CRC-32 "
                        "check, so its bytes changed after they were written (a bad disk, "
                        "download or copy). Download or copy the file again."
                    ) from None
                raise _zip_error(path, f"{_record(record.filename)} cannot be read ({_reason(error)})") from None
            except Exception as error:  # zlib.error, EOFError, OSError, NotImplementedError
                raise _zip_error(path, f"{_record(record.filename)} cannot be read ({_reason(error)})") from None
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


def _check_storages(path: Path, records: Mapping[str, int]) -> None:
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
        raise _zip_error(path, f"{_record(pickled)} cannot be read ({_reason(error)})") from None
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
    for line in _ANSI.sub("", text).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(
            ("Weights only load failed", "Please file", "Check the documentation", "(", "In PyTorch")
        ):
            return f"holds what weights never do ({_first_line(line)})"
    return "holds objects other than tensors and containers"


def _load_error(path: Path, error: Exception, kind: str, head: bytes, size: int) -> CheckpointError:
    shown = repr(str(path))
    refused = _weights_only_refusal(str(error))
    if refused is not None and (kind in ("zip", "pickle", "tar") or _GLOBAL.search(str(error))):
        return CheckpointError(
            f"{shown} {refused}, which torch.load(weights_only=True) refuses: paranorm loads "
            "weights only and never runs code from a file. If you trust its source, load it in "
            "Python with torch.load(path, weights_only=False) and torch.save its state_dict()."
        )
    if kind == "unknown":
        foreign = _foreign(head, size)
        what = foreign or (
            f"is not a torch.save file (it starts with bytes {head[:8].hex(' ')}, neither a zip "
            "archive nor a pickle). Pass the checkpoint file itself."
        )
        return CheckpointError(f"cannot read {shown} with torch.load(weights_only=True): it {what}")
    return CheckpointError(
        f"cannot read {shown} with torch.load(weights_only=True) ({_reason(error)}); the file is "
        "truncated or corrupt. Download or copy it again."
    )


def _torch_load(path: Path, *, mmap: bool) -> Any:
    """torch.load(weights_only=True) on the CPU; its warnings are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _safetensors_entry_problem(entry: Any, data_bytes: int) -> str | None:
    """What is wrong with one tensor's entry of a safetensors header, or None."""
    if not isinstance(entry, dict):
        return f"is described by a JSON {type(entry).__name__}, not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ST_DTYPE:
        return f"has dtype {_short(dtype, 40)}, which paranorm does not read (it reads {', '.join(_ST_DTYPE)})"
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"has shape {_short(shape, 60)}, not a list of sizes"
    if (
        not isinstance(offsets, list) or len(offsets) != 2
        or not all(type(n) is int for n in offsets) or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"has data_offsets {_short(offsets, 60)}, not [begin, end]"
    needed = math.prod(shape) * torch.empty((), dtype=_ST_DTYPE[dtype]).element_size()
    if offsets[1] - offsets[0] != needed:
        return f"has {offsets[1] - offsets[0]} bytes of data, but shape {shape} of {dtype} needs {needed}"
    if offsets[1] > data_bytes:
        return (
            f"ends at byte {offsets[1]} of the data, but only {data_bytes} bytes follow the "
            "header: the file is truncated"
        )
    return None


def _safetensors_header(handle: BinaryIO, path: Path, size: int) -> dict[str, str] | None:
    """Check a safetensors file's header (length, JSON, each tensor's place); its metadata."""

    def fail(what: str) -> CheckpointError:
        return CheckpointError(
            f"cannot read {str(path)!r} as safetensors: {what}. Download or copy the file again, "
            "or pass a safetensors file."
        )

    handle.seek(0)
    head = handle.read(8)
    if len(head) < 8:
        raise fail(f"it has {size} bytes, fewer than the 8 that start a safetensors file")
    length = int.from_bytes(head, "little")
    if length > _SAFETENSORS_HEADER_MAX:
        raise fail(f"its first 8 bytes give a header of {length} bytes, more than safetensors allows")
    if 8 + length > size:
        raise fail(f"its header needs {length} bytes but only {size - 8} follow: the file is truncated")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise fail(f"its header is not valid JSON ({_reason(error)})") from None
    if not isinstance(header, dict):
        raise fail(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise fail("its __metadata__ is not a map of strings to strings")
    for name, entry in header.items():
        problem = _safetensors_entry_problem(entry, size - 8 - length)
        if problem is not None:
            raise fail(f"tensor {_short(name)} {problem}")
    return metadata


def _read_safetensors(handle: BinaryIO, path: Path, size: int, head: bytes) -> Checkpoint:
    st = _safetensors()
    if _sniff(head) in ("zip", "pickle"):
        raise CheckpointError(
            f"{str(path)!r} is a torch.save file but its suffix says safetensors; rename it to "
            f"{path.with_suffix('.pt').name!r}."
        )
    foreign = _foreign(head, size)
    if foreign is not None and _sniff(head) != "safetensors":
        raise CheckpointError(f"cannot read {str(path)!r} as safetensors: it {foreign}")
    metadata = _safetensors_header(handle, path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = st.load_file(path)
    except Exception as error:
        raise CheckpointError(
            f"cannot read {str(path)!r} as safetensors ({_reason(error)}); the file is truncated "
            "or not a safetensors file. Download or copy it again."
        ) from None
    if not state:
        raise CheckpointError(
            f"{str(path)!r} holds no tensors (an empty safetensors file); pass the checkpoint "
            "that holds the weights."
        )
    return Checkpoint(state, None, metadata)


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


def _tensors(obj: Any) -> Iterator[tuple[tuple[Any, ...] | None, torch.Tensor]]:
    """Every tensor in ``obj`` (dicts, lists, tuples), with its path; each container once.

    Iterative, and the path is a linked (parent, key) node: a pickle may nest a million deep or
    hold itself.
    """
    stack: list[tuple[tuple[Any, ...] | None, Any]] = [(None, obj)]
    seen: set[int] = set()
    while stack:
        node, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield node, item
        elif isinstance(item, (Mapping, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = list(item.items() if isinstance(item, Mapping) else enumerate(item))
            stack.extend(((node, key), value) for key, value in reversed(pairs))


def _tensor_problem(tensor: torch.Tensor, dense: bool) -> str | None:
    """Why ``tensor`` cannot be used as read from a file, or None."""
    if tensor.device.type == "meta":
        return (
            "is on the meta device: the file stores its shape but no values (a model saved "
            "before its weights were loaded). Save the state_dict of a model with its weights"
        )
    if tensor.layout != torch.strided:
        if not dense:
            return None
        return (
            f"is a {str(tensor.layout).removeprefix('torch.')} tensor; paranorm computes with dense "
            "tensors only. Save it dense (tensor.to_dense())"
        )
    if tensor.is_quantized and dense:
        return (
            f"is quantized ({tensor.dtype}); paranorm computes with float weights only. Save the "
            "float weights (tensor.dequantize())"
        )
    size, stored = tensor.numel() * tensor.element_size(), tensor.untyped_storage().nbytes()
    if size > _EXPANDED_RATIO * stored and size > _EXPANDED_MIN:
        return (
            f"would take {_size(size)} in memory from {_size(stored)} stored in the file (shape "
            f"{tuple(tensor.shape)}, strides {tensor.stride()} repeat the stored values); "
            "paranorm refuses such expanded tensors. Save tensor.clone() instead if it is meant"
        )
    return None


def _check_tensors(obj: Any, path: Path, size: int, dense_within: Any) -> None:
    """Refuse a tensor that has no values, would fill the memory, or (in ``dense_within``) is
    not dense; and a file whose tensors together would take absurdly more than it stores."""
    total = 0
    dense_ids = {id(t) for _, t in _tensors(dense_within)} if dense_within is not None else set()
    for node, tensor in _tensors(obj):
        problem = _tensor_problem(tensor, id(tensor) in dense_ids)
        if problem is not None:
            raise CheckpointError(f"{str(path)!r}: tensor {_where(node)} {problem}.")
        if tensor.layout == torch.strided:
            total += tensor.numel() * tensor.element_size()
    if total > max(_EXPANDED_RATIO * size, _EXPANDED_MIN):
        raise CheckpointError(
            f"{str(path)!r}: its tensors would take {_size(total)} in memory from a file of "
            f"{_size(size)} (many views of the same stored values); paranorm refuses to expand "
            "them. Save each tensor once (tensor.clone()) if that is meant."
        )


def _is_state_dict(obj: Any) -> bool:
    """A mapping with tensors and no nested mappings (a count or a step may sit beside them)."""
    if not isinstance(obj, Mapping):
        return False
    values = list(obj.values())
    return any(isinstance(t, torch.Tensor) for t in values) and not any(isinstance(t, Mapping) for t in values)


def _metadata_problem(metadata: Any) -> str | None:
    """What is wrong with a state_dict's ``_metadata`` (module -> {"version", ...}), or None."""
    if not isinstance(metadata, Mapping):
        return f"it is a {type(metadata).__name__}, not a dict"
    for module, local in metadata.items():
        if not isinstance(module, str) or not isinstance(local, Mapping):
            return f"its entry {_short(module, 60)} is not a module name with a dict"
        versions = local.get("spectral_norm", {})
        if not isinstance(versions, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in versions.values()
        ):
            return f"the spectral_norm versions of {_short(module, 60)} are not ints"
    return None


def _check_state_dict(state: Mapping[Any, Any], path: Path) -> None:
    odd = next((k for k in state if not isinstance(k, str)), None)
    if odd is not None:
        raise CheckpointError(
            f"{str(path)!r} holds a dict of tensors whose key {_short(odd, 60)} is a "
            f"{type(odd).__name__}; a state_dict's keys are strings (module paths such as "
            "'conv.weight'). Save the model's state_dict() instead."
        )
    metadata = getattr(state, "_metadata", None)
    problem = None if metadata is None else _metadata_problem(metadata)
    if problem is not None:
        raise CheckpointError(
            f"{str(path)!r}: the state_dict's _metadata (torch's per-module versions) is "
            f"malformed: {problem}. Save the model's state_dict() again."
        )


def _structure(obj: Any, path: Path) -> Checkpoint:
    """Where the state_dict of a loaded torch file is."""
    if _is_state_dict(obj):
        return Checkpoint(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if _is_state_dict(obj.get(key)):
                return Checkpoint(obj, key)
    if isinstance(obj, Mapping):
        found = ", ".join(_short(k, 40) for k in list(obj)[:8]) if obj else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise CheckpointError(
        f"{str(path)!r} holds no state_dict: expected a dict of tensors or a dict with a "
        f"{', '.join(repr(k) for k in NESTED_KEYS)} entry of tensors, found {found}."
    )


def read_checkpoint(path: str | os.PathLike[str], *, dense: bool = True) -> Checkpoint:
    """Load the checkpoint file ``path`` (weights only; see the module docstring).

    Args:
        path: a ``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors`` file.
        dense: refuse sparse and quantized tensors in the state_dict (pass False to let them
            through, for a caller that only copies them).

    Raises:
        CheckpointError: no such file, not a regular file, an unknown suffix, a file that is
            truncated or corrupt (a zip record failing its CRC-32), one that asks to run code,
            one that holds no state_dict, a key that is not a string, a tensor without values
            (meta) or that would expand far beyond its stored bytes. The message names the
            file, and the tensor where one is at fault.
    """
    path = Path(path)
    kind = checkpoint_format(path, "IN")
    handle, size = _open_regular(path)
    with handle:
        head = handle.read(512)
        if kind == "safetensors":
            checkpoint = _read_safetensors(handle, path, size, head)
            _check_tensors(checkpoint.obj, path, size, checkpoint.obj if dense else None)
            return checkpoint
        sniffed = _sniff(head)
        if sniffed == "safetensors" and 8 + int.from_bytes(head[:8], "little") <= size:
            raise CheckpointError(
                f"{str(path)!r} is a safetensors file but its suffix says torch.save; rename it to "
                f"{path.with_suffix(SAFETENSORS_SUFFIX).name!r}."
            )
        foreign = _foreign(head, size, text=False) if sniffed == "unknown" else None
        if foreign is not None:  # empty, a Git LFS pointer, a web page
            raise CheckpointError(f"cannot read {str(path)!r} with torch.load(weights_only=True): it {foreign}")
        records = _check_zip(handle, path, size) if sniffed == "zip" else None
    try:
        obj = _torch_load(path, mmap=records is not None)
    except Exception as error:  # whatever a hostile file makes the unpickler raise
        raise _load_error(path, error, sniffed, head, size) from None
    if records is not None:
        _check_storages(path, records)
    checkpoint = _structure(obj, path)
    _check_state_dict(checkpoint.state_dict, path)
    _check_tensors(obj, path, size, checkpoint.state_dict if dense else None)
    return checkpoint


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (nested dicts and lists): the size torch.save will write."""
    return sum(t.numel() * t.element_size() for _, t in _tensors(obj))


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


def _no_progress(total: int, description: str) -> AbstractContextManager[Callable[[int], None]]:
    return nullcontext(lambda n: None)


def _safetensors_value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a tensor of a safetensors file, or None."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor; safetensors holds tensors only"
    if value.layout != torch.strided:
        return f"is a {str(value.layout).removeprefix('torch.')} tensor; safetensors holds dense tensors only"
    if value.is_quantized:
        return f"is quantized ({value.dtype}), which safetensors cannot hold"
    if value.device.type == "meta":
        return "is on the meta device: it has no values to write"
    if value.dtype not in _ST_NAME:
        return f"has dtype {value.dtype}, which safetensors cannot hold (it holds {', '.join(_ST_DTYPE)})"
    return None


def _check_safetensors(obj: Any, metadata: Mapping[str, str] | None, path: Path) -> None:
    """Refuse, before anything is written, what a safetensors file cannot hold."""
    shown = repr(str(path))
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"cannot write {shown} as safetensors: it holds a flat dict of tensors, not a {type(obj).__name__}.")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"cannot write {shown} as safetensors: its metadata must map strings to strings.")
    if sys.byteorder != "little":
        raise CheckpointError(f"cannot write {shown} as safetensors on a big-endian machine; write a .pt file.")
    for key, value in obj.items():
        if not isinstance(key, str) or key == "__metadata__":
            wrong = "is not a string" if not isinstance(key, str) else "is the name safetensors reserves for metadata"
            raise CheckpointError(f"cannot write {shown} as safetensors: key {_short(key, 60)} {wrong}; write a .pt file instead.")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointError(
                f"cannot write {shown} as safetensors: key {_short(key, 60)} is not valid text "
                "(safetensors stores names as UTF-8); write a .pt file instead."
            ) from None
        problem = _safetensors_value_problem(value)
        if problem is not None:
            raise CheckpointError(
                f"cannot write {shown} as safetensors: {_short(key, 60)} {problem}. Write a .pt "
                "file to keep it."
            )


def _safetensors_layout(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, torch.Tensor]], int]:
    """The header (with its 8-byte length), the tensors in file order, and the data's bytes.

    The order is safetensors' own: widest dtype first, then by name, so the file's bytes are
    the ones safetensors.torch.save would write.
    """
    order = sorted(tensors.items(), key=lambda kv: (-_ST_RANK[_ST_NAME[kv[1].dtype]], kv[0]))
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    offset = 0
    for name, tensor in order:
        end = offset + tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _ST_NAME[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text, order, offset


def _blocks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """``tensor``'s values as contiguous blocks of about _CHUNK bytes at most (rows of dim 0)
    when it is not contiguous already: a copy never holds more than a block."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg():
        yield tensor
        return
    row = max(1, tensor.numel() // max(tensor.shape[0], 1) * tensor.element_size())
    rows = max(1, _CHUNK // row)
    for start in range(0, tensor.shape[0], rows):
        yield tensor[start : start + rows].resolve_conj().resolve_neg().contiguous()


def _write_safetensors(handle: BinaryIO, obj: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                       progress: Progress, description: str) -> None:
    header, order, data_bytes = _safetensors_layout(obj, metadata)
    with progress(len(header) + data_bytes, description) as advance:
        handle.write(header)
        advance(len(header))
        for _, tensor in order:
            if tensor.numel() == 0:
                continue
            for block in _blocks(tensor):
                data = block.reshape(-1).view(torch.uint8).numpy().data  # a view: no copy
                for start in range(0, len(data), _CHUNK):
                    handle.write(data[start : start + _CHUNK])
                    advance(min(_CHUNK, len(data) - start))
                del block, data  # before the next block is made: one copy at a time


def _write_torch(handle: BinaryIO, obj: Any, path: Path, progress: Progress) -> None:
    with progress(nbytes(obj), f"writing {path.name}") as advance:
        writer = _CountingWriter(handle, advance)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]  # streamed
        except Exception as error:
            if writer.error is not None:
                raise writer.error from None  # the disk's own words: no space left, ...
            raise CheckpointError(f"torch.save could not write {str(path)!r}: {_reason(error)}.") from None


def write_checkpoint(
    path: str | os.PathLike[str], obj: Any, *, metadata: dict[str, str] | None = None,
    progress: Progress | None = None, overwrite: bool = True,
) -> None:
    """Write ``obj`` to ``path`` in the format its suffix names, atomically.

    A ``.safetensors`` file is streamed tensor by tensor (memory beyond the tensors: about one
    block of 8 MiB), laid out as the safetensors package lays it out, with ``metadata`` (default
    ``{"format": "pt"}``, what Hugging Face loaders expect). ``progress``, if given, is called as
    ``progress(total_bytes, description)`` and must return a context manager yielding
    ``advance(n_bytes)``. A symlink ``path`` is written through (its target replaced).

    Raises:
        CheckpointError: ``path`` exists and not ``overwrite``, is read-only, a folder or a link
            to nowhere; a value a safetensors file cannot hold (named, before anything is
            written); or the write failed (no space left, ...). ``path`` is then as it was.
    """
    path = Path(path)
    kind = checkpoint_format(path, "OUT")
    progress = progress or _no_progress
    if kind == "safetensors":
        metadata = metadata or {"format": "pt"}
        _check_safetensors(obj, metadata, path)
    check_target(path, overwrite=overwrite, what="file", error=CheckpointError)
    # Interrupted or failed: the temporary file goes; the target is untouched.
    with atomic_write(path, overwrite=overwrite, error=CheckpointError) as handle:
        if kind == "safetensors":
            _write_safetensors(handle, obj, metadata, progress, f"writing {path.name}")
        else:
            _write_torch(handle, obj, path, progress)
