"""``paranorm demo``: the blog post's Linear(2, 3) experiments, rerun honestly and deterministically.

A blog post comparing torch's weight_norm and spectral_norm trained EnCodec-style
``nn.Linear(2, 3)`` layers with a linear loss ``1 - output.mean()`` and printed the weights
before and after. This module reruns its two experiments and adds what the post could not show:

(a) weight norm on the post's first layer: g, v, the effective weight w = g v / ||v|| and the
    bias, before and after training;
(b) a *real* spectral norm on the post's second layer (the post imported ``weight_norm`` under
    the name ``spectral_norm``, so it never ran one): sigma, the largest singular value of the
    effective weight, before and after (1.0 under spectral norm), next to weight norm and none;
(c) none vs weight_norm vs spectral_norm on the same data: loss and sigma at every step.

Computation (:func:`run_demo`) returns dataclasses; :func:`render` prints rich tables,
:func:`plot` writes a PNG (matplotlib, Agg, imported only there), :func:`to_dict` gives JSON.
Every random draw comes from a ``torch.Generator`` seeded from ``seed`` (the global RNG is
left as it was), so a seed gives the same numbers every time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._apply import apply_parametrization_norm
from ._errors import ParanormError
from ._plotting import figure_format, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = [
    "DEFAULT_PLOT",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "EXPERIMENTS",
    "MAX_SEED",
    "MAX_STEPS",
    "NORMS",
    "DemoResult",
    "Experiment",
    "Run",
    "Snapshot",
    "blog_post_mistake",
    "largest_singular_value",
    "make_inputs",
    "plot",
    "render",
    "run_demo",
    "to_dict",
    "train",
]

DEFAULT_STEPS = 1000
DEFAULT_SEED = 0
#: The most steps a run takes: every step's loss and weight are kept for the plot (about 300
#: bytes per step and run), and 100,000 steps already take minutes.
MAX_STEPS = 100_000
#: The largest seed: each random stream is seeded with ``seed`` plus a small offset, and
#: torch's generators take seeds below 2**64.
MAX_SEED = 2**63 - 1
DEFAULT_PLOT = "paranorm-demo.png"
NORMS = ("none", "weight_norm", "spectral_norm")

#: Offsets added to ``seed`` so each stream of random numbers has its own generator:
#: inputs of the first layer, inputs of the second, spectral norm's initial u and v.
_INPUTS_OFFSET = {"first": 0, "second": 1}
_SPECTRAL_INIT_OFFSET = 2


@dataclass(frozen=True)
class Experiment:
    """One of the blog post's two ``nn.Linear(2, 3)`` experiments.

    ``scaled`` inputs are ``randn(10, 2) * U(0, 1) * 10`` (one uniform scale per step, the
    post's ``random.random()``), unscaled ones ``randn(10, 2)``.
    """

    key: str
    title: str
    weight: tuple[tuple[float, float], ...]
    bias: tuple[float, ...]
    lr: float
    scaled: bool

    def build(self) -> nn.Linear:
        """A fresh float32 ``nn.Linear(2, 3)`` holding the post's weight and bias."""
        # skip_init: no draw from the global RNG for an initialisation we overwrite anyway.
        layer = nn.utils.skip_init(nn.Linear, 2, 3)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(self.weight, dtype=torch.float32))
            layer.bias.copy_(torch.tensor(self.bias, dtype=torch.float32))
        return layer


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        key="first",
        title="the blog post's first layer",
        weight=((0.0, -2e-2), (0.3, 1.0), (1e-2, 0.0)),
        bias=(-0.3, 0.0, -2e-2),
        lr=2e-3,
        scaled=True,
    ),
    Experiment(
        key="second",
        title="the blog post's second layer",
        weight=((0.0, -2e2), (0.3, 1.0), (1e2, 0.0)),
        bias=(-0.3, 0.0, -2e2),
        lr=1e-4,
        scaled=False,
    ),
)


@dataclass(frozen=True)
class Snapshot:
    """A layer's tensors at one moment (read in eval mode, so reading changes nothing).

    ``g`` and ``v`` are weight norm's magnitude and direction (``original0``, ``original1``),
    ``original`` spectral norm's unnormalized weight; None where the norm has no such tensor.
    ``sigma`` is the largest singular value of the effective ``weight``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    sigma: float
    g: torch.Tensor | None = None
    v: torch.Tensor | None = None
    original: torch.Tensor | None = None


@dataclass(frozen=True)
class Run:
    """One training run: an experiment's layer, a norm, and what happened at every step.

    ``losses[t]`` is the loss of step t's forward; ``sigmas[t]`` the largest singular value of
    the effective weight that forward used (before step t's update).
    """

    layer: Experiment
    norm: str
    steps: int
    before: Snapshot
    after: Snapshot
    losses: torch.Tensor
    sigmas: torch.Tensor


@dataclass(frozen=True)
class DemoResult:
    """Everything :func:`run_demo` computed; ``seconds`` is its wall-clock time."""

    seed: int
    steps: int
    runs: tuple[Run, ...]
    seconds: float

    def run(self, layer: str, norm: str) -> Run:
        """The run of the experiment ``layer`` ("first" or "second") under ``norm``."""
        for r in self.runs:
            if r.layer.key == layer and r.norm == norm:
                return r
        raise KeyError((layer, norm))


def largest_singular_value(weight: torch.Tensor) -> float:
    """Largest singular value of a matrix, ||W||_2, by ``torch.linalg.matrix_norm(ord=2)``."""
    return float(torch.linalg.matrix_norm(weight.detach().double(), ord=2))


def make_inputs(layer: Experiment, steps: int, seed: int) -> torch.Tensor:
    """The ``(steps, 10, 2)`` inputs of ``layer``'s experiment, from a generator seeded ``seed``.

    Unscaled: ``randn(steps, 10, 2)``. Scaled: that times ``rand(steps, 1, 1) * 10``, one
    uniform scale per step (the post's ``torch.randn(10, 2) * random.random() * 10``).
    """
    generator = torch.Generator().manual_seed(seed + _INPUTS_OFFSET[layer.key])
    x = torch.randn(steps, 10, 2, generator=generator)
    if layer.scaled:
        x = x * (torch.rand(steps, 1, 1, generator=generator) * 10)
    return x


def _snapshot(layer: nn.Linear) -> Snapshot:
    was_training = layer.training
    layer.eval()  # spectral norm updates u, v on every training-mode read; eval reads are pure
    try:
        with torch.no_grad():
            weight = layer.weight.detach().clone()
            bias = layer.bias.detach().clone()
            g = v = original = None
            if parametrize.is_parametrized(layer, "weight"):
                p: Any = getattr(layer, "parametrizations").weight  # noqa: B009 (typed loosely)
                if hasattr(p, "original0"):
                    g, v = p.original0.detach().clone(), p.original1.detach().clone()
                else:
                    original = p.original.detach().clone()
    finally:
        layer.train(was_training)
    return Snapshot(weight, bias, largest_singular_value(weight), g, v, original)


def train(layer: Experiment, norm: str, inputs: torch.Tensor, seed: int) -> Run:
    """Normalize a fresh copy of ``layer`` with ``norm``, train it on ``inputs``, record it.

    One Adam(lr=layer.lr) step per ``inputs[t]`` on loss = 1 - output.mean(), as the post did.
    Spectral norm's random u, v are drawn under ``torch.manual_seed(seed + 2)`` inside
    ``torch.random.fork_rng``, so the caller's global RNG state is untouched.
    """
    module = layer.build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _SPECTRAL_INIT_OFFSET)
        apply_parametrization_norm(module, norm)
    before = _snapshot(module)
    # After the norm: weight norm replaces the weight by new Parameters (g, v).
    optimizer = torch.optim.Adam(module.parameters(), lr=layer.lr)
    steps = inputs.shape[0]
    losses = torch.empty(steps, dtype=torch.float64)
    weights = torch.empty(steps, *before.weight.shape, dtype=torch.float64)
    module.train()
    for t in range(steps):
        # cached(): the forward uses exactly the weight we record, computed once.
        with parametrize.cached():
            weights[t] = module.weight.detach()
            loss = 1 - module(inputs[t]).mean()
        losses[t] = loss.detach()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sigmas = torch.linalg.matrix_norm(weights, ord=2)  # every step's sigma in one batched call
    return Run(layer, norm, steps, before, _snapshot(module), losses, sigmas)


def run_demo(steps: int = DEFAULT_STEPS, seed: int = DEFAULT_SEED) -> DemoResult:
    """Run both experiments under every norm in :data:`NORMS` for ``steps`` steps.

    A layer's three runs see the same inputs, so they compare like with like.

    Raises:
        ParanormError: ``steps`` < 1 or ``seed`` not a non-negative int.

    Example:
        >>> result = run_demo(steps=5, seed=0)
        >>> round(result.run("second", "spectral_norm").after.sigma, 4)
        1.0
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ParanormError(
            f"demo: steps must be an int from 1 to {MAX_STEPS}, got {steps!r}. Use e.g. steps=1000."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ParanormError(f"demo: seed must be an int from 0 to {MAX_SEED}, got {seed!r}. Use e.g. seed=0.")
    start = time.perf_counter()
    runs: list[Run] = []
    threads = torch.get_num_threads()
    # 3x2 weights: a second intra-op thread only adds hand-offs (measured 2x slower on 2 cores).
    torch.set_num_threads(1)
    try:
        for layer in EXPERIMENTS:
            inputs = make_inputs(layer, steps, seed)
            runs.extend(train(layer, norm, inputs, seed) for norm in NORMS)
    finally:
        torch.set_num_threads(threads)
    return DemoResult(seed, steps, tuple(runs), time.perf_counter() - start)


def blog_post_mistake(result: DemoResult) -> str:
    """One line on the post's 'spectral_norm' experiment, with this run's numbers."""
    plain = result.run("second", "none")
    wn = result.run("second", "weight_norm")
    sn = result.run("second", "spectral_norm")
    return (
        "The blog post's mistake: `import torch.nn.utils.weight_norm as spectral_norm` ran weight "
        f"norm, so sigma stayed {wn.after.sigma:.6g} (no norm: {plain.after.sigma:.6g}); a real "
        f"spectral norm gives {sn.after.sigma:.6f}."
    )


def _tensor_to_json(t: torch.Tensor | None) -> Any:
    return None if t is None else t.tolist()


def to_dict(result: DemoResult) -> dict[str, Any]:
    """``result`` as plain JSON-ready Python data (lists of floats for tensors)."""
    runs = []
    for r in result.runs:
        snaps = {}
        for when, s in (("before", r.before), ("after", r.after)):
            snaps[when] = {
                "weight": s.weight.tolist(),
                "bias": s.bias.tolist(),
                "sigma": s.sigma,
                "g": _tensor_to_json(s.g),
                "v": _tensor_to_json(s.v),
                "original": _tensor_to_json(s.original),
            }
        runs.append(
            {
                "layer": r.layer.key,
                "norm": r.norm,
                "lr": r.layer.lr,
                "scaled_inputs": r.layer.scaled,
                "steps": r.steps,
                **snaps,
                "losses": r.losses.tolist(),
                "sigmas": r.sigmas.tolist(),
            }
        )
    return {
        "seed": result.seed,
        "steps": result.steps,
        "seconds": result.seconds,
        "blog_post_mistake": blog_post_mistake(result),
        "runs": runs,
    }


# --- rendering --------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:#.6g}"


def _fmt_tensor(t: torch.Tensor | None) -> str:
    """One matrix row per line, so a (3, 2) weight reads as it prints in torch."""
    if t is None:
        return "-"
    rows = t.reshape(t.shape[0], -1).tolist() if t.ndim else [[t.item()]]
    return "\n".join(" ".join(f"{x:>9.4g}" for x in row) for row in rows)


def _window_mean(values: torch.Tensor, last: bool) -> float:
    """Mean over the first or last 10% of steps (at least one): the training loss is noisy."""
    n = max(1, math.ceil(values.numel() / 10))
    return float(values[-n:].mean() if last else values[:n].mean())


def render(result: DemoResult, console: Console | None = None) -> None:
    """Print ``result`` as rich tables: (a) weight norm, (b) spectral norm, (c) comparison."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(
        f"[bold]paranorm demo[/bold]: the blog post's two Linear(2, 3) experiments, seed={result.seed}, "
        f"{result.steps} Adam steps per run, loss = 1 - output.mean(); computed in "
        f"{result.seconds:.2f} s",
        soft_wrap=True,
    )

    wn = result.run("first", "weight_norm")
    table = Table(
        title=f"(a) weight norm on the blog post's first layer: w = g v / ||v|| per row, Adam(lr={wn.layer.lr:g})",
        caption="inputs: randn(10, 2) * U(0, 1) * 10 per step",
    )
    table.add_column("tensor")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column(f"after {wn.steps} steps", justify="right", no_wrap=True)
    rows = [
        ("g = original0", wn.before.g, wn.after.g),
        ("v = original1", wn.before.v, wn.after.v),
        ("weight (effective)", wn.before.weight, wn.after.weight),
        ("bias", wn.before.bias.unsqueeze(1), wn.after.bias.unsqueeze(1)),
    ]
    for name, before, after in rows:
        table.add_row(name, _fmt_tensor(before), _fmt_tensor(after), end_section=True)
    table.add_row("sigma(weight)", _fmt(wn.before.sigma), _fmt(wn.after.sigma))
    console.print(table)

    second = EXPERIMENTS[1]
    table = Table(
        title="(b) the blog post's second layer: sigma = largest singular value of the effective weight "
        "(torch.linalg.matrix_norm, ord=2)",
        caption=f"after {result.steps} steps of Adam(lr={second.lr:g}), inputs: randn(10, 2) "
        "per step",
    )
    table.add_column("norm")
    table.add_column("sigma before", justify="right")
    table.add_column("sigma after", justify="right")
    table.add_column("effective weight after", justify="right", no_wrap=True)
    for norm in NORMS:
        r = result.run(second.key, norm)
        table.add_row(
            norm,
            _fmt(r.before.sigma),
            _fmt(r.after.sigma),
            _fmt_tensor(r.after.weight),
            end_section=True,
        )
    console.print(table)
    console.print(blog_post_mistake(result), soft_wrap=True)  # one line, however wide

    table = Table(
        title="(c) none vs weight_norm vs spectral_norm on the same data",
        caption="loss: mean over the first / last 10% of steps; sigma of the effective weight",
    )
    table.add_column("layer")
    table.add_column("norm")
    table.add_column("loss first", justify="right")
    table.add_column("loss last", justify="right")
    table.add_column("sigma first", justify="right")
    table.add_column("sigma last", justify="right")
    for r in result.runs:
        table.add_row(
            r.layer.key,
            r.norm,
            _fmt(_window_mean(r.losses, last=False)),
            _fmt(_window_mean(r.losses, last=True)),
            _fmt(float(r.sigmas[0])),
            _fmt(float(r.sigmas[-1])),
            end_section=r.norm == NORMS[-1],
        )
    console.print(table)


# --- plotting ---------------------------------------------------------------------------------


def _moving_average(values: torch.Tensor, window: int) -> torch.Tensor:
    if window <= 1 or values.numel() < window:
        return values
    return values.unfold(0, window, 1).mean(dim=1)


def _coincide(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two curves would draw as one line: apart by under 2% of their range."""
    spread = float(torch.cat([a, b]).max() - torch.cat([a, b]).min()) or 1.0
    return float((a - b).abs().max()) <= 0.02 * spread


def _overlaps(curves: dict[str, torch.Tensor]) -> dict[str, str]:
    """norm -> the norm whose curve it covers (drawn before it), for the legend."""
    names = list(curves)
    found = {}
    for i, name in enumerate(names):
        twin = next((other for other in names[:i] if _coincide(curves[name], curves[other])), None)
        if twin is not None:
            found[name] = twin
    return found


#: One look per norm: colour, line style and marker, so that curves which coincide still show.
_STYLES: dict[str, dict[str, Any]] = {
    "none": {"color": "tab:gray", "linewidth": 4.0, "alpha": 0.6},
    "weight_norm": {"color": "tab:blue", "linewidth": 1.6, "linestyle": (0, (4, 3))},
    "spectral_norm": {"color": "tab:red", "linewidth": 1.6, "linestyle": (0, (1, 1.5))},
}


def _draw(ax: Any, steps: torch.Tensor, curves: dict[str, torch.Tensor], label: Any) -> None:
    """Draw ``curves`` (norm -> values at ``steps``), saying in the legend which coincide."""
    overlaps = _overlaps(curves)
    for norm, values in curves.items():
        name = label(norm)
        if norm in overlaps:
            name += f" (same as {overlaps[norm]}: lines overlap)"
        ax.plot(steps[steps.numel() - values.numel() :], values, label=name, **_STYLES[norm])


def plot(result: DemoResult, path: str | os.PathLike[str]) -> Path:
    """Write the loss and sigma curves of every run to ``path`` (atomically), in the image format
    its suffix names (png, pdf, svg, jpg, ...); return it.

    One row per experiment; left: the training loss, as a moving average (each step's loss
    swings with its random inputs); right: sigma of the effective weight. Curves that coincide
    are drawn in distinct styles (a wide grey line under dashed and dotted ones) and the legend
    says which overlap.

    Raises:
        ParanormError: ``path`` names no image format, is a folder, a read-only or
            non-regular file, or its folder does not exist.
    """
    figure_format(path, "demo plot")  # before the figure is drawn: a bad path fails fast
    from matplotlib.figure import Figure

    window = max(1, result.steps // 50)
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(len(EXPERIMENTS), 2, squeeze=False)
    for row, layer in enumerate(EXPERIMENTS):
        loss_ax, sigma_ax = axes[row]
        runs = {norm: result.run(layer.key, norm) for norm in NORMS}
        steps = torch.arange(1, result.steps + 1)
        losses = {norm: _moving_average(r.losses, window) for norm, r in runs.items()}
        _draw(loss_ax, steps, losses, lambda norm: norm)
        sigmas = {norm: r.sigmas for norm, r in runs.items()}
        _draw(sigma_ax, steps, sigmas, lambda norm, last=sigmas: f"{norm}: last σ = {float(last[norm][-1]):.4g}")
        scale = "randn(10,2)·U(0,1)·10" if layer.scaled else "randn(10,2)"
        loss_ax.set_title(
            f"{layer.title}\nloss = 1 − mean(output), Adam(lr={layer.lr:g}), x = {scale}", fontsize=9
        )
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel(f"loss, mean of the last {window} steps" if window > 1 else "loss")
        loss_ax.legend(fontsize=8)
        sigma_ax.set_title(f"{layer.title}\nσ = largest singular value of the effective weight", fontsize=9)
        low = min(float(v.min()) for v in sigmas.values())
        high = max(float(v.max()) for v in sigmas.values())
        if low > 0 and high / low > 10:
            sigma_ax.set_yscale("log")
        sigma_ax.set_xlabel("step")
        sigma_ax.set_ylabel("σ(W)")
        sigma_ax.legend(fontsize=8)
    figure.suptitle(f"paranorm demo: the blog post's Linear(2, 3) experiments, seed={result.seed}, {result.steps} steps")
    return save_figure(figure, path, "demo plot", dpi=100)
