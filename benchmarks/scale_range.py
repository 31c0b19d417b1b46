"""The range of weight magnitudes each normalization computes correctly, per dtype.

For each dtype (float32, float64, bfloat16, float16) and each way of normalizing (weight norm
through torch's kernel; spectral norm by torch's power step, "reshape"; and paranorm's
operator methods "power", "fft", "gram"), the same weight W0 (max|W0| = 1) is multiplied by
2^k for every k the dtype allows (exact: only subnormal entries round), normalized by the
parametrization's own forward (three training steps), and compared with the same at k = 0:
W / sigma(W) does not depend on the scale, and g v / ||v|| (g = ||v||) scales with it. A
scale is correct when the result is finite and within TOLERANCE of that (relative to its
largest entry). The table shows, per column, the contiguous range of max|W| around 1 that is
correct, and the range the registration check accepts for this layer (weight norm, reshape:
the paths that stay torch's bit for bit, so unscaled). No wall clock is measured.

Run: ``python benchmarks/scale_range.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from paranorm._spectral_norm import PARAMETRIZATIONS
from paranorm._spectral_norm.base import Settings
from paranorm._weight_norm import WeightNorm

try:
    from paranorm._validate import plain_range_problem
except ImportError:  # a paranorm without the registration range check
    plain_range_problem = None  # type: ignore[assignment]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
COLUMNS = ("weight_norm", "reshape", "power", "fft", "gram")
SHAPE = (4, 16)
#: Relative error (to the result's largest entry) below which a scale counts as correct.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 2e-2, torch.float16: 2e-3}
EPS = 1e-12


def base_weight() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 3, generator=generator, dtype=torch.float64)
    return w / w.abs().max()


def _true_norm(v: torch.Tensor) -> torch.Tensor:
    """||v|| per output channel (dim 0), float64 with each slice scaled: the exact g."""
    v64 = v.double()
    top = v64.abs().amax(dim=(1, 2), keepdim=True)
    return (v64 / top).norm(dim=(1, 2), keepdim=True) * top


def normalized(column: str, weight: torch.Tensor) -> torch.Tensor:
    """The normalized weight of ``column`` for ``weight``, by the parametrization's forward."""
    if column == "weight_norm":
        g = _true_norm(weight).to(weight.dtype)
        return WeightNorm(0)(g, weight).double()
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 6, 3, padding=1).to(weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
    shape = SHAPE if column != "reshape" else None
    settings = Settings(1, 0, EPS, None, shape, {})
    norm = PARAMETRIZATIONS[column].from_module(conv, "weight", conv.weight, settings)
    norm.train()
    with torch.no_grad():
        for _ in range(3):
            out = norm(weight)
    return out.double()


def correct(column: str, dtype: torch.dtype, k: int, w0: torch.Tensor) -> bool:
    weight = (w0 * 2.0**k).to(dtype)
    if not bool(torch.isfinite(weight).all()) or not bool(weight.abs().max() > 0):
        return False
    # The reference: the same (rounded) weight brought back to scale 1, exactly, so that only
    # the normalization's own error counts, not the rounding of subnormal entries.
    half = -k // 2
    unit = (weight.double() * 2.0**half * 2.0 ** (-k - half)).to(dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = normalized(column, unit)
            out = normalized(column, weight)
    except (RuntimeError, ValueError):
        return False
    if column == "weight_norm":
        out = out * 2.0 ** (-k // 2) * 2.0 ** (-k - (-k // 2))
    if not bool(torch.isfinite(out).all()):
        return False
    error = float((out - reference).abs().max() / reference.abs().max())
    return error <= TOLERANCE[dtype]


def exponents(dtype: torch.dtype) -> range:
    info = torch.finfo(dtype)
    lowest = math.frexp(info.tiny * info.eps)[1] - 1  # the smallest subnormal, 2^lowest
    return range(lowest, math.frexp(info.max)[1])


def correct_range(column: str, dtype: torch.dtype, step: int) -> tuple[int, int] | None:
    """(lowest, highest) k, contiguous around 0, for which 2^k W0 is normalized correctly."""
    w0 = base_weight()
    ks = exponents(dtype)
    if not correct(column, dtype, 0, w0):
        return None

    def edge(direction: int) -> int:
        last, k = 0, 0
        while k + direction * step in ks and correct(column, dtype, k + direction * step, w0):
            k += direction * step
            last = k
        # refine to the exact edge within the step
        for j in range(1, step):
            candidate = last + direction * j
            if candidate in ks and correct(column, dtype, candidate, w0):
                continue
            return last + direction * (j - 1)
        return last + direction * (step - 1) if step > 1 else last

    return edge(-1), edge(+1)


def accepted_range(column: str, dtype: torch.dtype) -> tuple[int, int] | None:
    """The k range the registration check accepts for this layer (None: no check)."""
    if column not in ("weight_norm", "reshape") or plain_range_problem is None:
        return None
    w0 = base_weight()

    def ok(k: int) -> bool:
        weight = (w0 * 2.0**k).to(dtype)
        if not bool(torch.isfinite(weight).all()):
            return False
        if column == "weight_norm":
            return plain_range_problem(weight, 0) is None
        floor = 4 * EPS * math.sqrt(weight.numel())
        return plain_range_problem(weight, None, whole=True, floor=floor) is None

    good = [k for k in exponents(dtype) if ok(k)]
    return (min(good), max(good)) if good else None


def magnitude(k: int) -> str:
    return f"{2.0**k:.1e}"


def table(step: int, rows: Callable[[str], None]) -> None:
    header = "| dtype | " + " | ".join(COLUMNS) + " |"
    rows(header)
    rows("|" + "---|" * (len(COLUMNS) + 1))
    for dtype in DTYPES:
        cells = []
        for column in COLUMNS:
            found = correct_range(column, dtype, step if dtype == torch.float64 else 1)
            cell = "none" if found is None else f"{magnitude(found[0])} .. {magnitude(found[1])}"
            accepted = accepted_range(column, dtype)
            if accepted is not None:
                cell += f" (registration: {magnitude(accepted[0])} .. {magnitude(accepted[1])})"
            cells.append(cell)
        rows(f"| {str(dtype).replace('torch.', '')} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, default=8, help="exponent step for float64 (refined at the edges)")
    args = parser.parse_args()
    print("max|W| of a Conv1d(4, 6, 3) weight normalized correctly (input (4, 16)); "
          "3 training steps, tolerance " + ", ".join(f"{str(d).replace('torch.', '')} {t:g}" for d, t in TOLERANCE.items()))
    table(args.step, print)


if __name__ == "__main__":
    main()
