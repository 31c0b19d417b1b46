"""Time normalized layers against plain ones, torch's two APIs and paranorm, in one process.

For each case (a layer shape or a small model) and each norm, every implementation is built
from the same plain module, then timed *interleaved*: round r runs one sample of each
implementation, so that a load spike on a shared machine hits them all alike, in an order drawn
at random every round (seeded): with a fixed rotation, each implementation would always run
right after the same other one, whose freed temporaries leave the allocator in the same state
for it, a bias that lasts the whole run. The first rounds are warm-up and dropped; the report
keeps the minimum (the least disturbed figure) and the median of the rest. Ratios are of
minima. A sample times ``inner`` back-to-back calls, ``inner`` chosen once per case so that a
sample lasts a few ms.

Implementations: ``plain`` (no norm), ``torch-legacy`` (``torch.nn.utils.weight_norm`` /
``spectral_norm`` hooks), ``torch`` (``torch.nn.utils.parametrizations``), ``paranorm`` (the
default path, bit for bit torch's), ``paranorm-fast`` (the default with
:func:`paranorm.fast_paths` on), ``paranorm-once`` (fast, inside :func:`paranorm.normalize_once`,
only for cases called more than once per step) and, for eval, ``paranorm-folded``
(:func:`paranorm.fold`: plain Parameters). With ``compile_cases``, ``plain-compiled``,
``torch-compiled`` and ``paranorm-fast-compiled`` time ``torch.compile(fullgraph=True)``'d
training steps, compilation excluded (it happens in the untimed first call).

The share of torch's overhead that an implementation leaves, (t_impl - t_plain) / (t_torch -
t_plain), is reported twice: from the minima, and from round-paired differences (median over
rounds, with an 80% bootstrap interval, :func:`paired_overheads`), which shows where torch's own
overhead is too small next to this machine's noise for the share to mean anything.

Training step = zero the grads (set to None), the forward(s), ``sum().backward()``. Eval
forward = ``model.eval()`` under ``torch.no_grad()``.

Peak memory: bytes of tensor storage allocated and not yet freed during one step, the highest
running total, read from ``torch.profiler``'s allocator events (``profile_memory=True``: every
CPU allocation and free, with its size). Storage alive before the step (parameters, buffers,
inputs) is not counted; gradients, activations and temporaries are.

On a CUDA device (``device="cuda"``), the models and inputs live there, every sample ends with
``torch.cuda.synchronize()`` (kernels run asynchronously: the clock must wait for them), and peak
memory is ``torch.cuda.max_memory_allocated()`` during the step minus what was allocated before
it (the caching allocator's own count of live tensor bytes, the same quantity).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations

from ._fast import fast_paths
from .errors import ParanormError
from .folding import fold
from .once import normalize_once
from .spectral_normalization import spectral_norm
from .weight_normalization import weight_norm

__all__ = [
    "BENCH_THREADS",
    "CASES",
    "FULL",
    "NORMS",
    "QUICK",
    "Case",
    "run_suite",
    "select_cases",
    "summarize",
]

NORMS = ("weight_norm", "spectral_norm")
#: Threads torch uses while benchmarking: fixed, so runs compare, and small, because the
#: machines this was tuned on are shared (2 cores).
BENCH_THREADS = 2
_NORMALIZED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


class HiFiGANGenerator(nn.Module):
    """A small HiFi-GAN-style generator: mel -> conv -> 2 x (upsample, residual block) -> wave."""

    def __init__(self, mels: int = 80, width: int = 128) -> None:
        super().__init__()
        self.pre = nn.Conv1d(mels, width, 7, padding=3)
        self.ups = nn.ModuleList(
            [
                nn.ConvTranspose1d(width, width // 2, 16, stride=8, padding=4),
                nn.ConvTranspose1d(width // 2, width // 4, 4, stride=2, padding=1),
            ]
        )
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.Conv1d(c, c, 3, dilation=d, padding=d) for d in (1, 3))
            for c in (width // 2, width // 4)
        )
        self.post = nn.Conv1d(width // 4, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.pre(mel)
        for up, block in zip(self.ups, self.blocks):
            x = up(nn.functional.leaky_relu(x, 0.1))
            for conv in block:  # type: ignore[attr-defined]  # a ModuleList
                x = x + conv(nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.post(nn.functional.leaky_relu(x, 0.1)))


class SNGANDiscriminator(nn.Module):
    """A small SN-GAN-style (Miyato et al. 2018) CNN discriminator for 32x32 images."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], 3 if i % 2 == 0 else 4, stride=1 if i % 2 == 0 else 2,
                      padding=1)
            for i in range(6)
        )
        self.head = nn.Linear(4 * width * 4 * 4, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), 0.1)
        return self.head(x.flatten(1))


@dataclass(frozen=True)
class Case:
    """One benchmark case: a plain module, its input shape, and forwards per training step."""

    id: str
    description: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    calls: int = 1
    norms: tuple[str, ...] = NORMS


def _linear(i: int, o: int, batch: int) -> Case:
    return Case(f"linear-{i}-{o}-b{batch}", f"Linear {i}->{o}, batch {batch}",
                lambda: nn.Linear(i, o), (batch, i))


def _conv1d(c: int, k: int, batch: int, length: int) -> Case:
    return Case(f"conv1d-{c}-k{k}-b{batch}", f"Conv1d {c}ch k{k}, {batch}x{length}",
                lambda: nn.Conv1d(c, c, k, padding=k // 2), (batch, c, length))


def _conv2d(c: int, batch: int, size: int) -> Case:
    return Case(f"conv2d-{c}-k3-b{batch}", f"Conv2d {c}ch k3, {batch}x{size}x{size}",
                lambda: nn.Conv2d(c, c, 3, padding=1), (batch, c, size, size))


def _convtr1d(i: int, o: int, k: int, s: int, batch: int, length: int) -> Case:
    return Case(f"convtr1d-{i}-{o}-k{k}s{s}-b{batch}", f"ConvTranspose1d {i}->{o} k{k} s{s}, {batch}x{length}",
                lambda: nn.ConvTranspose1d(i, o, k, stride=s, padding=(k - s) // 2), (batch, i, length))


_ALL: list[Case] = [
    _linear(256, 256, 1),
    _linear(256, 256, 256),
    _linear(1024, 1024, 1),
    _linear(1024, 1024, 64),
    _linear(1024, 4096, 16),
    _linear(4096, 4096, 1),
    _linear(4096, 4096, 64),
    _conv1d(64, 3, 8, 1024),
    _conv1d(256, 5, 4, 256),
    _conv1d(512, 7, 1, 256),
    _conv2d(64, 8, 32),
    _conv2d(256, 1, 16),
    _convtr1d(256, 128, 16, 8, 1, 64),
    _convtr1d(128, 64, 4, 2, 8, 256),
    Case("hifigan-b2", "HiFi-GAN-style generator (weight norm), 2 x 80 mels x 32 frames",
         HiFiGANGenerator, (2, 80, 32), norms=("weight_norm",)),
    Case("sngan-d-b16", "SN-GAN-style discriminator (spectral norm), D(real) + D(fake), 2 x 16x3x32x32",
         SNGANDiscriminator, (16, 3, 32, 32), calls=2, norms=("spectral_norm",)),
    # Lighter cases for --quick.
    Case("sngan-d-b4", "SN-GAN-style discriminator, D(real) + D(fake), 2 x 4x3x32x32",
         SNGANDiscriminator, (4, 3, 32, 32), calls=2, norms=("spectral_norm",)),
    # Tiny cases for tests and smoke runs.
    _linear(16, 8, 2),
    Case("tiny-d-b2", "tiny discriminator, called twice", lambda: SNGANDiscriminator(4), (2, 3, 32, 32),
         calls=2, norms=("spectral_norm",)),
]
#: Every case by id.
CASES: dict[str, Case] = {case.id: case for case in _ALL}
#: The full suite (benchmarks/suite.py) and the --quick one (under a minute).
FULL: tuple[str, ...] = tuple(c.id for c in _ALL[:16])
QUICK: tuple[str, ...] = ("linear-1024-1024-b1", "conv1d-256-k5-b4", "convtr1d-256-128-k16s8-b1", "sngan-d-b4")


def select_cases(ids: Sequence[str]) -> list[Case]:
    """The cases named by ``ids``; raise ParanormError naming the unknown ones."""
    unknown = [i for i in ids if i not in CASES]
    if unknown:
        raise ParanormError(
            f"bench: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}."
        )
    return [CASES[i] for i in ids]


def _normalize_all(model: nn.Module, norm: str, impl: str) -> nn.Module:
    """Apply ``norm`` by implementation ``impl`` to every Linear/Conv weight of ``model``."""
    layers = [m for m in model.modules() if isinstance(m, _NORMALIZED)]
    for layer in layers:
        if impl == "torch-legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                legacy: Any = torch.nn.utils.weight_norm if norm == "weight_norm" else torch.nn.utils.spectral_norm
                legacy(layer)
        elif impl == "torch":
            param: Any = (torch_parametrizations.weight_norm if norm == "weight_norm"
                          else torch_parametrizations.spectral_norm)
            param(layer)
        else:
            (weight_norm if norm == "weight_norm" else spectral_norm)(layer)
    return model


def _implementations(case: Case, norm: str, mode: str, compiled: bool) -> list[str]:
    impls = ["plain", "torch-legacy", "torch", "paranorm", "paranorm-fast"]
    if mode == "train" and case.calls > 1:
        impls.append("paranorm-once")
    if mode == "train" and compiled:
        impls += ["plain-compiled", "torch-compiled", "paranorm-fast-compiled"]
    if mode == "eval":
        impls = [i for i in impls if i != "paranorm-fast"] + ["paranorm-folded"]
    return impls


def _build(case: Case, norm: str, impl: str, mode: str, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)  # built on the CPU, then moved: the same weights on every device
    model = case.make()
    base = impl.removesuffix("-compiled")
    if base != "plain":
        torch.manual_seed(seed + 1)
        model = _normalize_all(model, norm, "paranorm" if base.startswith("paranorm") else base)
    if impl == "paranorm-folded":
        model.eval()
        model = fold(model)
    return model.to(device).train(mode == "train")


def _step_fn(model: nn.Module, impl: str, mode: str, inputs: list[torch.Tensor]) -> Callable[[], None]:
    params = list(model.parameters())
    fast = impl in ("paranorm-fast", "paranorm-once", "paranorm-fast-compiled")
    once = impl == "paranorm-once"
    if impl.endswith("-compiled"):
        # torch.compile's default (inductor) backend, whole graph or an error: no silent breaks.
        model = torch.compile(model, fullgraph=True)  # type: ignore[assignment]

    if mode == "eval":
        def forward() -> None:
            with torch.no_grad():
                for x in inputs:
                    model(x)
        return forward

    def step() -> None:
        for p in params:
            p.grad = None
        with fast_paths(fast), (normalize_once() if once else contextlib.nullcontext()):
            loss = sum(model(x).sum() for x in inputs)
            loss.backward()  # type: ignore[union-attr]

    return step


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines on file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], None], attempts: int = 3, device: torch.device | str = "cpu") -> int | None:
    """Peak of (allocated - freed) tensor bytes on ``device`` while ``fn`` runs.

    CPU: from the profiler's allocator events; None if it recorded no allocation in ``attempts``
    tries (it occasionally returns an empty trace): "not measured", never a made-up 0. CUDA: the
    caching allocator's peak during ``fn`` minus its count before.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    from torch.profiler import ProfilerActivity, profile

    events: list[tuple[int, int]] = []
    for _ in range(attempts):
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = sorted(
            (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
        )
        if events:
            break
    if not events:
        return None
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def _time_interleaved(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, target_s: float,
    sync: Callable[[], None],
) -> tuple[dict[str, list[float]], int]:
    """Samples per implementation (seconds per call); ``sync`` waits for queued device work."""
    names = list(fns)
    for fn in fns.values():
        fn()  # first call: lazy allocations, caches
    sync()
    t0 = time.perf_counter()
    fns[names[0]]()
    sync()
    single = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, round(target_s / single)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    rng = random.Random(0)
    for r in range(warmup + repeats):
        order = rng.sample(names, len(names))
        for name in order:
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            elapsed = (time.perf_counter() - t0) / inner
            if r >= warmup:
                samples[name].append(elapsed)
    return samples, inner


def _ratios(times: dict[str, dict[str, float]]) -> dict[str, float]:
    t = {k: v["min"] for k, v in times.items()}
    pairs = [(a, "plain") for a in t if a != "plain"]
    pairs += [(a, "torch") for a in ("paranorm", "paranorm-fast", "paranorm-once", "paranorm-folded") if a in t]
    if "torch-compiled" in t:
        pairs += [("paranorm-fast-compiled", "torch-compiled"), ("torch-compiled", "plain-compiled"),
                  ("paranorm-fast-compiled", "plain-compiled")]
    return {f"{a}/{b}": t[a] / t[b] for a, b in pairs}


def _overheads(times: dict[str, dict[str, float]]) -> dict[str, float]:
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
    d_torch = [t - p for t, p in zip(samples["torch"], plain)]
    rng = random.Random(seed)
    draws = [[rng.randrange(rounds) for _ in range(rounds)] for _ in range(resamples)]

    def share(d: list[float], idx: Sequence[int]) -> float | None:
        denominator = statistics.median([d_torch[i] for i in idx])
        return statistics.median([d[i] for i in idx]) / denominator if denominator > 0 else None

    out: dict[str, dict[str, float | None]] = {}
    for impl in ("paranorm", "paranorm-fast", "paranorm-once"):
        if impl not in samples:
            continue
        d = [t - p for t, p in zip(samples[impl], plain)]
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


def bench_case(
    case: Case,
    norm: str,
    mode: str,
    *,
    repeats: int,
    warmup: int,
    target_s: float,
    seed: int = 0,
    compiled: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Time one case/norm/mode for every implementation; return times, ratios and peak memory."""
    device = torch.device(device)
    impls = _implementations(case, norm, mode, compiled)
    torch.manual_seed(seed + 7)
    inputs = [torch.randn(case.input_shape).to(device) for _ in range(case.calls)]
    models = {impl: _build(case, norm, impl, mode, seed, device) for impl in impls}
    fns = {impl: _step_fn(models[impl], impl, mode, inputs) for impl in impls}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    samples, inner = _time_interleaved(fns, repeats, warmup, target_s, sync)
    times = {k: {"min": min(v), "median": statistics.median(v)} for k, v in samples.items()}
    peaks = {}
    for impl, fn in fns.items():
        # Free the last step's gradients first: the profiler counts the free of a block it saw
        # allocated (in an earlier session) but not of one it did not, so the baseline would
        # depend on the session history.
        for param in models[impl].parameters():
            param.grad = None
        peaks[impl] = peak_bytes(fn, device=device)
    return {
        "case": case.id,
        "description": case.description,
        "norm": norm,
        "mode": mode,
        "calls_per_step": case.calls,
        "inner": inner,
        "samples": repeats,
        "times_s": times,
        "peak_bytes": peaks,
        "ratios": _ratios(times),
        "overheads": _overheads(times),
        "overheads_paired": paired_overheads(samples) if mode == "train" else {},
        "samples_s": samples,
    }


def _best_train(result: dict[str, Any]) -> str:
    """The best paranorm training-step implementation in ``result`` (the table's "best")."""
    return "paranorm-once" if "paranorm-once" in result["times_s"] else "paranorm-fast"


def _paired_summary(train: list[dict[str, Any]]) -> dict[str, Any]:
    """The best implementation's round-paired shares: median, and how many cases their 80%
    interval places clearly at or under half of torch's overhead, clearly over it, or neither."""
    paired = [r["overheads_paired"].get(_best_train(r)) for r in train]
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
    """The issue's targets, evaluated on ``results`` (on minima; and on round-paired medians)."""
    out: dict[str, Any] = {}
    for norm in NORMS:
        train = [r for r in results if r["norm"] == norm and r["mode"] == "train"]
        if not train:
            continue
        key = "paranorm-fast-overhead/torch-overhead"
        shares = [r["overheads"][key] for r in train if key in r["overheads"]]
        # "best", as in the table: the once policy where the case calls the model twice a step.
        best = [r["overheads"].get(f"{_best_train(r)}-overhead/torch-overhead") for r in train]
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


def _bench_device(device: str) -> torch.device:
    """``device`` as a torch.device, if the benchmark can run there; else a ParanormError."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParanormError(f"bench: cannot parse device {device!r} ({exc}); use 'cpu' or 'cuda[:N]'.") from None
    if target.type == "cpu":
        return target
    if target.type != "cuda":
        raise ParanormError(f"bench: device {device!r} is not supported; use 'cpu' or 'cuda[:N]'.")
    if not torch.cuda.is_available():
        raise ParanormError(
            f"bench: device {device!r} asked for, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); run on a machine with a CUDA build of torch and a GPU, or use 'cpu'."
        )
    index = torch.cuda.current_device() if target.index is None else target.index
    if index >= torch.cuda.device_count():
        raise ParanormError(
            f"bench: device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA device(s)."
        )
    return torch.device("cuda", index)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def run_suite(
    case_ids: Sequence[str],
    *,
    repeats: int = 30,
    warmup: int = 3,
    target_s: float = 0.004,
    modes: Sequence[str] = ("train", "eval"),
    threads: int = BENCH_THREADS,
    compile_cases: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the cases ``case_ids`` (keys of :data:`CASES`); return a JSON-able report.

    ``repeats`` samples per implementation after ``warmup`` dropped rounds; each sample times
    enough calls to last about ``target_s`` seconds. torch runs on ``threads`` threads for the
    duration (restored after). Cases in ``compile_cases`` also time ``torch.compile``'d
    training steps (plain, torch, paranorm-fast), compilation excluded. ``device``: "cpu", or
    a CUDA device ("cuda", "cuda:1").
    """
    if repeats < 1 or warmup < 0 or target_s <= 0:
        raise ParanormError(
            f"bench: need repeats >= 1, warmup >= 0 and target_s > 0, got {repeats}, {warmup}, {target_s}."
        )
    for mode in modes:
        if mode not in ("train", "eval"):
            raise ParanormError(f"bench: unknown mode {mode!r}; expected 'train' or 'eval'.")
    target = _bench_device(device)
    cases = select_cases(case_ids)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = []
    try:
        for case in cases:
            for norm in case.norms:
                for mode in modes:
                    if progress is not None:
                        progress(f"{case.id} {norm} {mode}")
                    results.append(
                        bench_case(case, norm, mode, repeats=repeats, warmup=warmup,
                                   target_s=target_s, compiled=case.id in compile_cases,
                                   device=target)
                    )
    finally:
        torch.set_num_threads(previous)
    return {
        "meta": {
            "torch": torch.__version__,
            "device": _describe(target),
            "threads": threads,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "repeats": repeats,
            "warmup": warmup,
            "load_average_1min_before_after": [
                None if load_before is None else round(load_before[0], 2),
                round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            ],
            "cpu_count": os.cpu_count(),
            "ratios_of": "minimum times",
            "peak_memory": (
                "torch.cuda.max_memory_allocated during one step minus memory_allocated before it"
                if target.type == "cuda" else
                "torch.profiler allocator events: peak of allocated minus freed bytes in one step"
            ),
        },
        "results": results,
        "summary": summarize(results),
    }


def _mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.2f}"


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def _paired_cell(paired: dict[str, float | None] | None) -> str:
    if paired is None:
        return "-"
    low, high = paired["p10"], paired["p90"]
    interval = "[undefined]" if low is None or high is None else f"[{low:.2f}, {high:.2f}]"
    return f"{paired['share']:.2f} {interval}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the human table (also used for the README).

    "best" is paranorm-fast for a training step, paranorm-once when the case calls the model
    more than once per step, and paranorm-folded for an eval forward.
    """
    header = ["case", "norm", "mode: best paranorm", "plain min", "legacy/plain", "torch/plain",
              "paranorm/plain", "best/plain", "best/torch", "best overhead / torch's",
              "paired [80% interval]", "peak MiB torch / best"]
    compiled = any("torch-compiled" in r["times_s"] for r in report["results"])
    if compiled:
        header += ["compiled: torch/plain", "compiled: fast/torch"]
    rows = []
    for r in report["results"]:
        ra, ov, pk = r["ratios"], r["overheads"], r["peak_bytes"]
        fast_key = _best_train(r) if r["mode"] == "train" else "paranorm-folded"
        share = ov.get(f"{fast_key}-overhead/torch-overhead")
        rows.append([
            r["case"],
            r["norm"].replace("_norm", ""),
            f"{r['mode']}: {fast_key.removeprefix('paranorm-')}",
            _fmt_time(r["times_s"]["plain"]["min"]),
            f"{ra['torch-legacy/plain']:.2f}",
            f"{ra['torch/plain']:.2f}",
            f"{ra['paranorm/plain']:.2f}",
            f"{ra[fast_key + '/plain']:.2f}",
            f"{ra[fast_key + '/torch']:.2f}",
            "-" if share is None else f"{share:.2f}",
            _paired_cell(r["overheads_paired"].get(fast_key)),
            f"{_mib(pk['torch'])} / {_mib(pk[fast_key])}",
        ])
        if compiled:
            rows[-1] += [f"{ra[k]:.2f}" if k in ra else "-" for k in
                         ("torch-compiled/plain-compiled", "paranorm-fast-compiled/torch-compiled")]
    return header, rows


def markdown_table(report: dict[str, Any]) -> str:
    """The table as GitHub markdown."""
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
