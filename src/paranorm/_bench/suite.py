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

import datetime
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._errors import ParanormError
from .implementations import build, implementations, step_fn
from .stats import overheads, paired_overheads, ratios, summarize
from .timing import peak_bytes, time_interleaved
from .zoo import BENCH_THREADS, Case, select_cases

__all__ = ["bench_case", "run_suite"]


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
    impls = implementations(case, norm, mode, compiled)
    torch.manual_seed(seed + 7)
    inputs = [torch.randn(case.input_shape).to(device) for _ in range(case.calls)]
    models = {impl: build(case, norm, impl, mode, seed, device) for impl in impls}
    fns = {impl: step_fn(models[impl], impl, mode, inputs) for impl in impls}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    samples, inner = time_interleaved(fns, repeats, warmup, target_s, sync)
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
        "ratios": ratios(times),
        "overheads": overheads(times),
        "overheads_paired": paired_overheads(samples) if mode == "train" else {},
        "samples_s": samples,
    }



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
