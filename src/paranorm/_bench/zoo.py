"""The benchmark cases: layer shapes and two small models, each with its input shape."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._errors import ParanormError

__all__ = ["BENCH_THREADS", "CASES", "FULL", "NORMS", "QUICK", "Case", "select_cases"]

NORMS = ("weight_norm", "spectral_norm")
#: Threads torch uses while benchmarking: fixed, so runs compare, and small, because the
#: machines this was tuned on are shared (2 cores).
BENCH_THREADS = 2


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
        for up, block in zip(self.ups, self.blocks, strict=True):
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
