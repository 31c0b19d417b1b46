"""How much a file may make paranorm allocate or read: limits against hostile files."""

from __future__ import annotations

__all__ = ["CHUNK", "EXPANDED_MIN", "EXPANDED_RATIO", "SAFETENSORS_HEADER_MAX"]

#: Bytes read or written at a time (CRC checks, safetensors blocks).
CHUNK = 8 * 2**20
#: A tensor (or a file's tensors together) may take at most this many times the bytes the file
#: stores for it, beyond EXPANDED_MIN: more is a stride-0 view that would fill the memory.
EXPANDED_RATIO, EXPANDED_MIN = 16, 256 * 2**20
#: The largest header the safetensors package reads (its own limit).
SAFETENSORS_HEADER_MAX = 100_000_000
