"""safetensors files: a checked header on reading, a streamed writer.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header mapping each tensor's name to its dtype, shape and byte offsets (and
``__metadata__``), padded with spaces to 8 bytes, then the tensors' bytes. Reading checks the
header before the safetensors package maps the data; writing streams tensor by tensor (the
package builds the whole file in memory first), laid out as the package lays it out.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..._errors import CheckpointError
from . import limits
from .messages import reason, short
from .source import safetensors_package

__all__ = ["check_writable", "load_safetensors", "safetensors_header", "write_safetensors"]

#: safetensors' dtypes, narrowest first: the order the format's writer sorts them in (widest
#: first, then by name), so a file written here is laid out as safetensors lays it out.
_DTYPES = (
    ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("F8_E5M2", "float8_e5m2"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"), ("I16", "int16"), ("U16", "uint16"), ("F16", "float16"),
    ("BF16", "bfloat16"), ("I32", "int32"), ("U32", "uint32"), ("F32", "float32"),
    ("C64", "complex64"), ("F64", "float64"), ("I64", "int64"), ("U64", "uint64"),
)  # fmt: skip
_DTYPE = {name: getattr(torch, attr) for name, attr in _DTYPES if hasattr(torch, attr)}
_NAME = {dtype: name for name, dtype in _DTYPE.items()}
_RANK = {name: rank for rank, (name, _) in enumerate(_DTYPES)}


def _entry_problem(entry: Any, data_bytes: int) -> str | None:
    """What is wrong with one tensor's entry of a safetensors header, or None."""
    if not isinstance(entry, dict):
        return f"is described by a JSON {type(entry).__name__}, not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPE:
        return f"has dtype {short(dtype, 40)}, which paranorm does not read (it reads {', '.join(_DTYPE)})"
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return f"has shape {short(shape, 60)}, not a list of sizes"
    if (
        not isinstance(offsets, list) or len(offsets) != 2
        or not all(type(n) is int for n in offsets) or not 0 <= offsets[0] <= offsets[1]
    ):
        return f"has data_offsets {short(offsets, 60)}, not [begin, end]"
    needed = math.prod(shape) * torch.empty((), dtype=_DTYPE[dtype]).element_size()
    if offsets[1] - offsets[0] != needed:
        return f"has {offsets[1] - offsets[0]} bytes of data, but shape {shape} of {dtype} needs {needed}"
    if offsets[1] > data_bytes:
        return (
            f"ends at byte {offsets[1]} of the data, but only {data_bytes} bytes follow the "
            "header: the file is truncated"
        )
    return None


def safetensors_header(handle: BinaryIO, path: Path, size: int) -> dict[str, str] | None:
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
    if length > limits.SAFETENSORS_HEADER_MAX:
        raise fail(f"its first 8 bytes give a header of {length} bytes, more than safetensors allows")
    if 8 + length > size:
        raise fail(f"its header needs {length} bytes but only {size - 8} follow: the file is truncated")
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise fail(f"its header is not valid JSON ({reason(error)})") from None
    if not isinstance(header, dict):
        raise fail(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise fail("its __metadata__ is not a map of strings to strings")
    for name, entry in header.items():
        problem = _entry_problem(entry, size - 8 - length)
        if problem is not None:
            raise fail(f"tensor {short(name)} {problem}")
    return metadata


def _value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a tensor of a safetensors file, or None."""
    if not isinstance(value, torch.Tensor):
        return f"is a {type(value).__name__}, not a tensor; safetensors holds tensors only"
    if value.layout != torch.strided:
        return f"is a {str(value.layout).removeprefix('torch.')} tensor; safetensors holds dense tensors only"
    if value.is_quantized:
        return f"is quantized ({value.dtype}), which safetensors cannot hold"
    if value.device.type == "meta":
        return "is on the meta device: it has no values to write"
    if value.dtype not in _NAME:
        return f"has dtype {value.dtype}, which safetensors cannot hold (it holds {', '.join(_DTYPE)})"
    return None


def check_writable(obj: Any, metadata: Mapping[str, str] | None, path: Path) -> None:
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
            raise CheckpointError(f"cannot write {shown} as safetensors: key {short(key, 60)} {wrong}; write a .pt file instead.")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointError(
                f"cannot write {shown} as safetensors: key {short(key, 60)} is not valid text "
                "(safetensors stores names as UTF-8); write a .pt file instead."
            ) from None
        problem = _value_problem(value)
        if problem is not None:
            raise CheckpointError(
                f"cannot write {shown} as safetensors: {short(key, 60)} {problem}. Write a .pt "
                "file to keep it."
            )


def _layout(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, torch.Tensor]], int]:
    """The header (with its 8-byte length), the tensors in file order, and the data's bytes.

    The order is safetensors' own: widest dtype first, then by name, so the file's bytes are
    the ones safetensors.torch.save would write.
    """
    order = sorted(tensors.items(), key=lambda kv: (-_RANK[_NAME[kv[1].dtype]], kv[0]))
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": dict(metadata)}
    offset = 0
    for name, tensor in order:
        end = offset + tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _NAME[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text, order, offset


def _blocks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """``tensor``'s values as contiguous blocks of about CHUNK bytes at most (rows of dim 0)
    when it is not contiguous already: a copy never holds more than a block."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg():
        yield tensor
        return
    row = max(1, tensor.numel() // max(tensor.shape[0], 1) * tensor.element_size())
    rows = max(1, limits.CHUNK // row)
    for start in range(0, tensor.shape[0], rows):
        yield tensor[start : start + rows].resolve_conj().resolve_neg().contiguous()


def _numpy() -> Any:
    """numpy, through which a tensor's bytes are written without a copy (torch needs no numpy)."""
    try:
        import numpy
    except ImportError:
        raise CheckpointError(
            "writing .safetensors needs the numpy package: pip install 'paranorm[safetensors]' "
            "(or pip install numpy), or write a .pt file."
        ) from None
    return numpy


def write_safetensors(handle: BinaryIO, obj: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
                       progress: Any, description: str) -> None:
    """Write ``obj`` as a safetensors file into ``handle``, tensor by tensor."""
    _numpy()
    header, order, data_bytes = _layout(obj, metadata)
    with progress(len(header) + data_bytes, description) as advance:
        handle.write(header)
        advance(len(header))
        for _, tensor in order:
            if tensor.numel() == 0:
                continue
            for block in _blocks(tensor):
                data = block.reshape(-1).view(torch.uint8).numpy().data  # a view: no copy
                for start in range(0, len(data), limits.CHUNK):
                    handle.write(data[start : start + limits.CHUNK])
                    advance(min(limits.CHUNK, len(data) - start))
                del block, data  # before the next block is made: one copy at a time


def load_safetensors(handle: BinaryIO, path: Path, size: int) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The tensors and metadata of the safetensors file ``path``, its header checked first."""
    metadata = safetensors_header(handle, path, size)
    st = safetensors_package()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = st.load_file(path)
    except Exception as error:
        raise CheckpointError(
            f"cannot read {str(path)!r} as safetensors ({reason(error)}); the file is truncated "
            "or not a safetensors file. Download or copy it again."
        ) from None
    if not state:
        raise CheckpointError(
            f"{str(path)!r} holds no tensors (an empty safetensors file); pass the checkpoint "
            "that holds the weights."
        )
    return state, metadata
