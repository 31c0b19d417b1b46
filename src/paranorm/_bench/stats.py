"""What the samples say: ratios of minima, shares of torch's overhead with bootstrap
intervals, and the summary over cases (with an A/A check of the intervals)."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any

from .zoo import NORMS

__all__ = ["best_train", "overheads", "paired_overheads", "ratios", "summarize"]


def ratios(times: dict[str, dict[str, float]]) -> dict[str, float]:
    t = {k: v["min"] for k, v in times.items()}
    pairs = [(a, "plain") for a in t if a != "plain"]
    pairs += [(a, "torch") for a in ("paranorm", "paranorm-fast", "paranorm-once", "paranorm-folded") if a in t]
    if "torch-compiled" in t:
        pairs += [("paranorm-fast-compiled", "torch-compiled"), ("torch-compiled", "plain-compiled"),
                  ("paranorm-fast-compiled", "plain-compiled")]
    return {f"{a}/{b}": t[a] / t[b] for a, b in pairs}


def overheads(times: dict[str, dict[str, float]]) -> dict[str, float]:
    """(t_impl - t_plain) / (t_torch - t_plain), of minima: the share of torch's overhead left."""
    t = {k: v["min"] for k, v in times.items()}
    extra = t["torch"] - t["plain"]
    if extra <= 0:
        return {}
    return {f"{a}-overhead/torch-overhead": (t[a] - t["plain"]) / extra
            for a in ("paranorm", "paranorm-fast", "paranorm-once") if a in t}


def paired_overheads(
    samples: dict[str, list[float]], resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, float | None]]:
    """Share of torch's overhead left, from round-paired samples, with an 80% interval.

    Round r times every implementation back to back, so a change of load hits the round as a
    whole and the paired difference d_r = t_impl,r - t_plain,r cancels most of it. share =
    median(d_impl) / median(d_torch); p10 and p90 are the percentiles of that ratio over
    ``resamples`` bootstrap resamplings of the rounds (Efron & Tibshirani 1993, ch. 13). Where
    torch's own overhead is noise-sized, the interval is wide, or None when more than a tenth
    of the resamplings put torch's median overhead at or below zero. No entry at all when the
    full sample does. The interval covers the noise that varies from round to round, not an
    effect that lasts the whole run (see the A/A test in :func:`summarize`).
    """
    plain = samples["plain"]
    rounds = len(plain)
    d_torch = [t - p for t, p in zip(samples["torch"], plain, strict=True)]
    rng = random.Random(seed)
    draws = [[rng.randrange(rounds) for _ in range(rounds)] for _ in range(resamples)]

    def share(d: list[float], idx: Sequence[int]) -> float | None:
        denominator = statistics.median([d_torch[i] for i in idx])
        return statistics.median([d[i] for i in idx]) / denominator if denominator > 0 else None

    out: dict[str, dict[str, float | None]] = {}
    for impl in ("paranorm", "paranorm-fast", "paranorm-once"):
        if impl not in samples:
            continue
        d = [t - p for t, p in zip(samples[impl], plain, strict=True)]
        point = share(d, range(rounds))
        if point is None:
            continue
        boots = sorted(b for b in (share(d, idx) for idx in draws) if b is not None)
        defined = len(boots) >= 0.9 * resamples
        out[impl] = {
            "share": point,
            "p10": boots[int(0.1 * len(boots))] if defined else None,
            "p90": boots[int(0.9 * len(boots)) - 1] if defined else None,
        }
    return out



def best_train(result: dict[str, Any]) -> str:
    """The best paranorm training-step implementation in ``result`` (the table's "best")."""
    return "paranorm-once" if "paranorm-once" in result["times_s"] else "paranorm-fast"


def _paired_summary(train: list[dict[str, Any]]) -> dict[str, Any]:
    """The best implementation's round-paired shares: median, and how many cases their 80%
    interval places clearly at or under half of torch's overhead, clearly over it, or neither."""
    paired = [r["overheads_paired"].get(best_train(r)) for r in train]
    shares = [p["share"] for p in paired if p is not None]
    met = sum(1 for p in paired if p is not None and p["p90"] is not None and p["p90"] <= 0.5)
    missed = sum(1 for p in paired if p is not None and p["p10"] is not None and p["p10"] > 0.5)
    # An A/A test: the default path runs torch's very kernels, so its true share is 1. Where its
    # interval misses 1, something that lasts the whole run (which implementation's temporaries
    # land on freshly mapped pages, say) biased it: the intervals do not cover that.
    same = [r["overheads_paired"].get("paranorm") for r in train]
    off = sum(1 for p in same if p is not None and p["p10"] is not None and not p["p10"] <= 1.0 <= p["p90"])
    return {
        "median_paired_share_best": statistics.median(shares) if shares else None,
        "default_path_interval_misses_1": f"{off}/{len(train)}",
        "paired_share_interval_at_most_half": f"{met}/{len(train)}",
        "paired_share_interval_above_half": f"{missed}/{len(train)}",
        "paired_share_undecided": f"{len(train) - met - missed}/{len(train)}",
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary over cases, per norm: shares of torch's overhead (of minima and round-paired
    medians), the worst case against torch, eval after fold, peak memory, and an A/A check."""
    out: dict[str, Any] = {}
    for norm in NORMS:
        train = [r for r in results if r["norm"] == norm and r["mode"] == "train"]
        if not train:
            continue
        key = "paranorm-fast-overhead/torch-overhead"
        shares = [r["overheads"][key] for r in train if key in r["overheads"]]
        # "best", as in the table: the once policy where the case calls the model twice a step.
        best = [r["overheads"].get(f"{best_train(r)}-overhead/torch-overhead") for r in train]
        best = [b for b in best if b is not None]
        vs_torch = [r["ratios"]["paranorm-fast/torch"] for r in train]
        mem = [r["peak_bytes"]["paranorm-fast"] <= r["peak_bytes"]["torch"] for r in train
               if None not in (r["peak_bytes"]["paranorm-fast"], r["peak_bytes"]["torch"])]
        # Cases where torch's own overhead is above 10% of the step, i.e. above this machine's
        # noise: elsewhere the share is a ratio of two noise-sized numbers.
        clear = [r["overheads"][key] for r in train
                 if key in r["overheads"] and r["ratios"]["torch/plain"] > 1.10]
        out[norm] = {
            "median_overhead_share_fast": statistics.median(shares) if shares else None,
            "median_overhead_share_best": statistics.median(best) if best else None,
            "median_overhead_share_fast_where_torch_overhead_gt_10pct": (
                statistics.median(clear) if clear else None
            ),
            "cases_where_torch_overhead_gt_10pct": f"{len(clear)}/{len(train)}",
            "max_fast_over_torch": max(vs_torch),
            "worst_case": max(train, key=lambda r: r["ratios"]["paranorm-fast/torch"])["case"],
            "peak_memory_not_above_torch": f"{sum(mem)}/{len(mem)}",
            **_paired_summary(train),
        }
    # paranorm's default path runs torch's very kernels: the spread of their ratio is the noise.
    same = [r["ratios"]["paranorm/torch"] for r in results]
    if same:
        out["noise_paranorm_default_over_torch"] = {"min": min(same), "median": statistics.median(same), "max": max(same)}
    folded = [r["ratios"]["paranorm-folded/plain"] for r in results if r["mode"] == "eval"]
    if folded:
        out["eval_folded_over_plain"] = {"min": min(folded), "median": statistics.median(folded), "max": max(folded)}
    return out
