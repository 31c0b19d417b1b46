"""The limits and thresholds the docs quote are the ones the code has.

A page that says "refuses past 1 GiB" must change when the limit does: each row is a phrase a
page shows and the constant it quotes, read from the code.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

from paranorm import _demo
from paranorm._bench import BENCH_THREADS, suite, zoo
from paranorm._bench.stats import paired_overheads
from paranorm._fast import fused, scaled
from paranorm._sigma import cost
from paranorm._spectral_norm import MAX_POWER_ITERATIONS
from paranorm._spectral_norm.reshape import WARMUP_ITERATIONS
from paranorm.checkpoint.io import limits

ROOT = Path(__file__).resolve().parents[2]


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


QUOTED = [
    # (page, phrase as the page shows it, what the code says)
    ("docs/refusals.md", "more than 16 times its stored bytes and over 256 MiB",
     limits.EXPANDED_RATIO == 16 and limits.EXPANDED_MIN == 256 * 2**20),
    ("docs/refusals.md", "past the safetensors\n  package's 100 MB limit", limits.SAFETENSORS_HEADER_MAX == 100_000_000),
    ("docs/refusals.md", "refuses past 1 GiB or 1e12 multiply-adds",
     cost.MAX_BYTES == 2**30 and cost.MAX_WORK == 1e12),
    ("docs/refusals.md", "at most 2048 rows or columns and 2^24 entries",
     cost.SVD_MAX_SIDE == 2048 and cost.SVD_MAX_ENTRIES == 2**24),
    ("docs/refusals.md", "allow a tenth of that work", cost.MAX_NORMALIZATION_WORK == cost.MAX_WORK / 10),
    ("docs/refusals.md", "or above 10,000", MAX_POWER_ITERATIONS == 10_000),
    ("docs/refusals.md", "`paranorm demo --steps` at\nmost 100,000", _demo.MAX_STEPS == 100_000),
    ("docs/guides/lipschitz.md", "refuses a request past 1 GiB or\n1e12 multiply-adds (the dense `\"svd\"`, past 2048 rows or columns)",
     cost.MAX_BYTES == 2**30 and cost.MAX_WORK == 1e12 and cost.SVD_MAX_SIDE == 2048),
    ("docs/guides/checkpoints.md", "run 15 power steps when they are applied", WARMUP_ITERATIONS == 15),
    ("docs/guides/training.md", "a scaled activation at most a quarter of the weight", scaled.ACTIVATION_RATIO == 4),
    ("docs/guides/training.md", "spectral norm from 256 x 256",
     scaled.MIN_WEIGHT_NUMEL[("spectral", "linear")] == scaled.MIN_WEIGHT_NUMEL[("spectral", "conv")] == 256 * 256),
    ("docs/guides/training.md", "weight norm on Linear\n  layers from 2M elements", scaled.MIN_WEIGHT_NUMEL[("weight", "linear")] == 2**21),
    ("docs/guides/training.md", "never weight norm on convolutions", math.isinf(scaled.MIN_WEIGHT_NUMEL[("weight", "conv")])),
    ("docs/guides/training.md", "has at least 65,536\n  elements", fused.FUSED_MIN_NUMEL == 65_536),
    ("docs/performance.md", "3 warm-up rounds are dropped",
     _default(suite.run_suite, "warmup") == 3),
    ("docs/performance.md", "the next 30 samples are kept", _default(suite.run_suite, "repeats") == 30),
    ("docs/performance.md", "torch runs on 2 threads", BENCH_THREADS == 2 == zoo.BENCH_THREADS),
    ("docs/performance.md", "1000 bootstrap resamplings", _default(paired_overheads, "resamples") == 1000),
]


@pytest.mark.parametrize(("page", "phrase", "holds"), QUOTED, ids=[f"{p}: {q[:40]}" for p, q, _ in QUOTED])
def test_the_page_quotes_what_the_code_has(page, phrase, holds):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert " ".join(phrase.split()) in " ".join(text.split()), f"{page} no longer says {phrase!r}"
    assert holds, f"{page} says {phrase!r}, which the code no longer has: update the page"
