"""The precision norms and sigma are computed in: float32 at least, autocast off."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_off", "float32_or_wider"]


def float32_or_wider(t: torch.Tensor) -> torch.dtype:
    """The dtype to compute norms in: float32 for half types, the tensor's own otherwise."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def autocast_off(t: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """Turn autocast off on ``t``'s device, if it is on: norms and sigma stay in float32 or wider.

    Under CUDA autocast torch.mv, linear and conv run in float16, which would put the power
    iteration and the sigma estimators in half precision.
    """
    try:
        enabled = torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        enabled = False
    return torch.autocast(t.device.type, enabled=False) if enabled else contextlib.nullcontext()
