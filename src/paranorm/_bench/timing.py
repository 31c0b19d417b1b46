"""Timing and peak memory: interleaved samples, synchronized on a GPU."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["peak_bytes", "time_interleaved"]


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


def time_interleaved(
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
