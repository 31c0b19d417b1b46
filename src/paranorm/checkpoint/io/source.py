"""Opening a file to read as a checkpoint, and what its first bytes say it is.

Only regular files are read (a FIFO would block forever, a device never end); the format is
read from the bytes, never from the name: a zip archive or a pickle is torch.save's, an 8-byte
length and a JSON header safetensors'. Text, web pages, Git LFS pointers and empty files are
named as what they are.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from ..._errors import CheckpointError
from ..._files import file_kind, shell_quoted
from .messages import reason, short

__all__ = ["foreign", "open_regular", "safetensors_package", "sniff"]


def safetensors_package() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError(
            "reading .safetensors needs the safetensors package: "
            "pip install 'paranorm[safetensors]' (or pip install safetensors)."
        ) from None
    return safetensors.torch


def not_regular(path: Path, mode: int) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is a {file_kind(mode)}, not a regular file; paranorm reads checkpoint "
        "files only. Pass the checkpoint file itself."
    )


def stat_error(path: Path, error: OSError) -> CheckpointError:
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
    return CheckpointError(f"cannot read {shown}: {error.strerror or reason(error)}. Pass a readable checkpoint file.")


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading, after checking it is a regular file (a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            # O_NONBLOCK: were the file swapped for a FIFO since the stat, opening still returns.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise stat_error(path, error) from None
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise not_regular(path, info.st_mode)
    return os.fdopen(fd, "rb"), info.st_size


def sniff(head: bytes) -> str:
    """What the first bytes of a file say it is: zip, pickle, tar, safetensors, or unknown."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    # Before the pickle test: a header of 896 bytes starts b"\x80\x03", like pickle protocol 3;
    # but "{" is no pickle opcode, so a "{" at byte 8 settles it.
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"  # torch's format before 1.0
    return "unknown"


def foreign(head: bytes, size: int, *, text: bool = True) -> str | None:
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
            f"holds text (it starts with {short(decoded[:40])}), not what torch.save or "
            "safetensors writes. Pass the checkpoint file itself."
        )
    return None
