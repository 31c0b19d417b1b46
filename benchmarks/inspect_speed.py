"""How long ``paranorm inspect`` takes on real vocoder checkpoints, before and after, side by side.

Two weight-normalized state_dicts with the layer layout of real models, random weights:

- HiFi-GAN V1's generator (Kong et al. 2020; the layout of transformers' SpeechT5HifiGan and
  of the original repository): 80 mel channels, 512 initial channels, upsampling rates
  8, 8, 2, 2 with kernels 16, 16, 4, 4, residual blocks of kernels 3, 7, 11 and dilations
  1, 3, 5: 13.9M parameters, 78 weighted layers.
- DAC's multi-resolution discriminator (descript-audio-codec): 5 bands of 5 Conv2d (32
  channels, kernels 3 x 9 and 3 x 3) and a post conv: 26 layers.

Each file is inspected as a user would (``paranorm inspect FILE --json``, a fresh process, so
imports count) by a baseline paranorm (a git ref, checked out in a temporary worktree) and by
this tree, with and without ``--fast``. The table gives the wall time of each, the speedup,
and how this tree's certified bound compares with the baseline's, layer by layer (the median
and the largest ratio): both are upper bounds on the same sigma, so a ratio below 1 is a
tighter bound. Times depend on the machine and its load: run it on an idle one.

Run: ``python benchmarks/inspect_speed.py`` (the baseline takes minutes on 2 cores; pass
``--baseline none`` to time this tree only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

ROOT = Path(__file__).resolve().parent.parent
#: paranorm before the Gram bound's rework (the version whose inspect took minutes on these).
DEFAULT_BASELINE = "da57721"


def hifigan_v1() -> nn.Module:
    """HiFi-GAN V1's generator layers (their forward is not needed: inspect reads weights)."""
    model = nn.Module()
    model.conv_pre = weight_norm(nn.Conv1d(80, 512, 7, padding=3))
    model.upsampler = nn.ModuleList()
    model.resblocks = nn.ModuleList()
    channels = 512
    for rate, kernel in zip((8, 8, 2, 2), (16, 16, 4, 4), strict=True):
        out = channels // 2
        model.upsampler.append(
            weight_norm(nn.ConvTranspose1d(channels, out, kernel, rate, (kernel - rate) // 2))
        )
        for k in (3, 7, 11):
            block = nn.Module()
            block.convs1 = nn.ModuleList(
                weight_norm(nn.Conv1d(out, out, k, dilation=d, padding=d * (k - 1) // 2))
                for d in (1, 3, 5)
            )
            block.convs2 = nn.ModuleList(
                weight_norm(nn.Conv1d(out, out, k, padding=(k - 1) // 2)) for _ in range(3)
            )
            model.resblocks.append(block)
        channels = out
    model.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, padding=3))
    return model


def dac_mrd(bands: int = 5, channels: int = 32) -> nn.Module:
    """DAC's multi-resolution discriminator layers."""
    model = nn.Module()

    def band() -> nn.ModuleList:
        return nn.ModuleList([
            weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4))),
            *(weight_norm(nn.Conv2d(channels, channels, (3, 9), (1, 2), (1, 4))) for _ in range(3)),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])

    model.band_convs = nn.ModuleList(band() for _ in range(bands))
    model.conv_post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))
    return model


MODELS = {"HiFi-GAN V1 generator": hifigan_v1, "DAC MRD": dac_mrd}


def inspect(src: Path, path: Path, *flags: str) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``paranorm inspect path --json`` with ``src`` on the path, and each
    layer's bound."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", "import sys, paranorm.cli; sys.exit(paranorm.cli.main())"]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "inspect", str(path), "--json", *flags], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"inspect failed ({src}):\n{done.stderr}")
    layers = json.loads(done.stdout)["layers"]
    return seconds, {row["name"]: row["estimates"]["bound"]["value"] for row in layers}


def ratios(new: dict[str, float], old: dict[str, float]) -> str:
    values = [new[k] / old[k] for k in new if new[k] and old.get(k)]
    return f"{statistics.median(values):.4f} / {max(values):.4f}" if values else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"git ref to compare with (default {DEFAULT_BASELINE}), or 'none'",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base_src = None
        if args.baseline != "none":
            tree = Path(tmp) / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                check=True,
            )
            base_src = tree / "src"
        try:
            rows = []
            for name, build in MODELS.items():
                torch.manual_seed(0)
                model = build()
                path = Path(tmp) / f"{build.__name__}.pt"
                torch.save(model.state_dict(), path)
                params = sum(p.numel() for p in model.parameters())
                new, new_bounds = inspect(ROOT / "src", path)
                fast, fast_bounds = inspect(ROOT / "src", path, "--fast")
                row = [name, f"{params / 1e6:.1f}M", str(len(new_bounds))]
                if base_src is not None:
                    old, old_bounds = inspect(base_src, path)
                    row += [f"{old:.1f}", f"{new:.1f} ({old / new:.1f}x)", f"{fast:.1f} ({old / fast:.1f}x)"]
                    row += [ratios(new_bounds, old_bounds), ratios(fast_bounds, old_bounds)]
                else:
                    row += ["-", f"{new:.1f}", f"{fast:.1f}", "-", ratios(fast_bounds, new_bounds)]
                rows.append(row)
                print(f"{name}: done", file=sys.stderr)
        finally:
            if base_src is not None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_src.parent)],
                    check=False,
                )
    header = ["model", "params", "layers", "baseline s", "now s", "now --fast s", "bound now/base", "--fast/base"]
    if args.baseline == "none":
        header[-2:] = ["", "bound --fast/now"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"paranorm inspect FILE --json, wall seconds on {torch.get_num_threads()} threads")
    print(f"(bound ratios: median / largest over the layers; baseline {args.baseline})")
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
