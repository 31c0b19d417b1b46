"""What a weight must be before any kernel sees it: a dense real float tensor with values,
entries, and finite ones.

torch's kernels fail on the rest in their own words ("normal_kernel_cpu not implemented for
'Float8_e4m3fn'", "Could not run 'aten::_linalg_svd' with arguments from the 'SparseCPU'
backend", "linalg.svd: The algorithm failed to converge") or, for an empty tensor, kill the
process (``torch._weight_norm`` divides by zero). Each check here names the tensor (``where``),
what it found and the fix, without the public function's prefix (see
:func:`paranorm._errors.entry_point`).
"""

from __future__ import annotations

import torch

from .._errors import ParanormError

__all__ = [
    "COMPUTE_DTYPES",
    "check_finite",
    "check_not_empty",
    "check_weight",
    "unsupported_reason",
]

#: The dtypes paranorm computes norms and sigma for (half types in float32).
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unsupported_reason(t: torch.Tensor, *, allow_meta: bool = False) -> str | None:
    """Why ``t`` cannot be read as a weight (its layout, dtype or device), or None.

    Reads no values (no host synchronization). The message ends with the fix. ``allow_meta``:
    a meta tensor passes (registering a normalization on a model built on the meta device).
    """
    if t.layout != torch.strided:
        return (
            f"is a {str(t.layout).replace('torch.', '')} tensor; norms and sigma are computed on "
            "dense tensors. Convert it first: weight.to_dense()"
        )
    if t.is_quantized:
        return f"is quantized ({t.dtype}). Dequantize it first: weight.dequantize()"
    if t.is_complex():
        return (
            f"has complex dtype {t.dtype}; paranorm normalizes and bounds real weights only. "
            "Pass a real weight (e.g. weight.real and weight.imag as two layers)"
        )
    if t.is_floating_point() and t.dtype not in COMPUTE_DTYPES:
        return (
            f"has dtype {t.dtype}, a storage format torch's norm and linear-algebra kernels do "
            "not compute in. Convert it to float32 first: weight.float() (times its scale, for "
            "a scaled low-precision checkpoint)"
        )
    if not t.is_floating_point():
        return (
            f"has dtype {t.dtype}; expected floating point (float16, bfloat16, float32 or "
            "float64). Dequantize or convert it to float32 first: weight.float() (times its "
            "scale, for a quantized checkpoint)"
        )
    if t.device.type == "meta" and not allow_meta:
        return (
            "is on the meta device: it has a shape but no values. Materialize it first "
            "(module.to_empty(device='cpu'), then load_state_dict or reset_parameters())"
        )
    return None


def check_weight(t: torch.Tensor, where: str, *, allow_meta: bool = False) -> None:
    """Raise unless ``t`` is a dense, real, float16/bfloat16/float32/float64 tensor (with
    values, unless ``allow_meta``)."""
    reason = unsupported_reason(t, allow_meta=allow_meta)
    if reason is not None:
        raise ParanormError(f"{where} {reason}.")


def check_not_empty(t: torch.Tensor, where: str) -> None:
    """Raise if ``t`` has no entries: a layer without inputs or outputs has no norm to take."""
    if t.numel() == 0:
        raise ParanormError(
            f"{where} is empty (shape {tuple(t.shape)}): a layer with no inputs or no outputs "
            "has nothing to normalize or bound (and torch's norm kernels divide by zero on it). "
            "Give the layer at least one input and one output feature, or leave it out."
        )


def check_finite(t: torch.Tensor, where: str) -> None:
    """Raise if ``t`` has a NaN or an infinite entry (reads the values: one host sync)."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        raise ParanormError(
            f"{where} has {nan} NaN and {inf} infinite entries (of {t.numel()}); its norm and "
            "sigma are undefined. Restore finite values (e.g. reload a good checkpoint) first."
        )
