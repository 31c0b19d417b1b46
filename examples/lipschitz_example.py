"""Why the normalization matters: one small conv classifier trained four ways, then measured.

    python examples/lipschitz_example.py          # writes ./lipschitz_example.png
    python examples/lipschitz_example.py --plot results/lipschitz.svg

Data: synthetic 1-D signals (no download), a noisy sine of random amplitude and phase whose
frequency says the class: 2-3 cycles (class 0) or 4-5 cycles (class 1) over 32 samples. The
network is a chain Conv1d-ReLU-Conv1d-ReLU-Conv1d-ReLU-Flatten-Linear, trained with:

- none: plain layers;
- weight_norm: w = g v/|v| (Salimans & Kingma 2016), with the data-dependent init;
- spectral_norm (reshape): torch's behaviour, each weight divided by the largest singular
  value of the kernel reshaped to a matrix (Miyato et al. 2018), which for a convolution is
  NOT the layer's Lipschitz constant;
- spectral_norm (operator): each layer divided by a certified upper bound (Gram iteration) of
  the sigma of the layer's operator itself, method="gram".

Then, for each trained network: paranorm.lipschitz_report's certified upper bound on the
network's Lipschitz constant (product of per-layer certified sigmas, exact or upper), the
product of the reshaped-kernel sigmas (what the reshape normalization "believes"), an
empirical lower bound (largest Jacobian spectral norm over the test set), test accuracy, and
certified accuracy at radius 0.5 (correct, and the logit margin exceeds sqrt(2) * L * 0.5, so
no perturbation of L2 norm 0.5 can flip the prediction). Every number is computed by the run.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from typing import Any

import torch
from torch import nn

import paranorm as pn

LENGTH = 32
RADIUS = 0.5


def signals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy sines (1 channel, LENGTH samples) and their class (low or high frequency)."""
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=gen)
    cycles = 2 + 2 * label + torch.randint(0, 2, (n,), generator=gen)  # 2,3 or 4,5
    amplitude = 0.5 + torch.rand(n, generator=gen)
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    t = torch.arange(LENGTH) / LENGTH
    x = amplitude[:, None] * torch.sin(2 * math.pi * cycles[:, None] * t + phase[:, None])
    x = x + 0.5 * torch.randn(n, LENGTH, generator=gen)
    return x[:, None, :], label


def build() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(1, 16, 5, padding=2), nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2, stride=2), nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8, 2),
    )


def input_shapes(model: nn.Sequential) -> dict[int, tuple[int, ...]]:
    """Each weighted layer's input shape (one sample), from one forward pass."""
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, i=i: shapes.__setitem__(i, tuple(a[0].shape[1:])))
        for i, m in enumerate(model) if isinstance(m, (nn.Conv1d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, LENGTH))
    for h in hooks:
        h.remove()
    return shapes


def operator_norm(layer: nn.Module, shape: tuple[int, ...]) -> str:
    """Divide by a Gram-iteration upper bound of the layer's operator sigma (Delattre et al.)."""
    pn.spectral_norm(layer, method="gram", input_shape=shape)
    return 'pn.spectral_norm(method="gram")'


def make(variant: str, x_init: torch.Tensor) -> tuple[nn.Sequential, str]:
    torch.manual_seed(0)
    model = build()
    shapes = input_shapes(model)
    hows = ["plain layers"]
    for i, layer in enumerate(model):
        if not isinstance(layer, (nn.Conv1d, nn.Linear)):
            continue
        if variant == "weight_norm":
            pn.weight_norm(layer)
            hows.append("pn.weight_norm + pn.data_dependent_init")
        elif variant == "spectral_norm (reshape)":
            pn.spectral_norm(layer)
            hows.append('pn.spectral_norm(method="reshape")')
        elif variant == "spectral_norm (operator)":
            hows.append(operator_norm(layer, shapes[i]))
    how = ", ".join(dict.fromkeys(hows[1:] or hows))  # each distinct way once, in order
    if variant == "weight_norm":
        pn.data_dependent_init(model, x_init)
    return model, how


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def jacobian_lower_bound(model: nn.Module, x: torch.Tensor) -> float:
    """max over x of ||J_f(x)||_2: the network's Lipschitz constant is at least this."""
    best = 0.0
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)  # (2, 1, LENGTH)
        best = max(best, float(torch.linalg.matrix_norm(jac.flatten(1).double(), ord=2)))
    return best


def measure(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    report = pn.lipschitz_report(model, x[:1], methods=("reshape", "bound"))
    upper = report.network.value if report.network.holds and report.network.value else math.nan
    reshape_product = math.prod(
        layer.estimates["reshape"].value for layer in report.layers  # type: ignore[misc]
    )
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    top2 = logits.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    # f_i - f_j is sqrt(2) L-Lipschitz when f is L-Lipschitz in L2.
    certified = correct & (margin > math.sqrt(2) * upper * RADIUS)
    return {
        "upper": float(upper),
        "reshape_product": float(reshape_product),
        "lower": jacobian_lower_bound(model, x[:200]),
        "accuracy": float(correct.float().mean()),
        "certified": float(certified.float().mean()),
    }


def save_atomic(fig: Any, path: str) -> None:
    """Write the figure in the format ``path``'s suffix names: a temporary beside it, renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lipschitz_example.", suffix=suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lip) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        losses = torch.tensor(r["losses"])
        smooth = torch.nn.functional.avg_pool1d(losses[None, None], 20, 1)[0, 0]
        ax_loss.plot(range(len(smooth)), smooth, label=name)
    ax_loss.set(title="training loss (moving average of 20 steps)", xlabel="step",
                ylabel="cross-entropy", yscale="log")
    ax_loss.legend(loc="lower left", fontsize=8, framealpha=0.9)  # below the curves' start
    names = list(results)
    pos = torch.arange(len(names)).float()
    width = 0.27
    ax_lip.bar(pos - width, [results[n]["upper"] for n in names], width, label="certified upper bound")
    ax_lip.bar(pos, [results[n]["reshape_product"] for n in names], width, label="product of reshaped sigmas")
    ax_lip.bar(pos + width, [results[n]["lower"] for n in names], width, label="empirical lower bound")
    ax_lip.axhline(1.0, color="gray", lw=0.8, ls="--", label="1: a 1-Lipschitz network")
    ax_lip.set(title="Lipschitz constant of the trained network", yscale="log",
               xticks=pos.tolist())
    ax_lip.set_xticklabels([n.replace(" (", "\n(") for n in names], fontsize=8)
    ax_lip.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    save_atomic(fig, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--plot", default="lipschitz_example.png",
                        help="where to write the figure; its suffix picks the format (default ./lipschitz_example.png)")
    args = parser.parse_args()
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        parser.error(f"--plot {args.plot!r}: its folder does not exist")
    torch.set_num_threads(min(2, torch.get_num_threads()))

    x_train, y_train = signals(4000, seed=1)
    x_test, y_test = signals(2000, seed=2)
    results: dict[str, dict[str, Any]] = {}
    for variant in ("none", "weight_norm", "spectral_norm (reshape)", "spectral_norm (operator)"):
        start = time.perf_counter()
        model, how = make(variant, x_train[:512])
        losses = train(model, x_train, y_train, args.steps, seed=3)
        results[variant] = {"how": how, "losses": losses, **measure(model, x_test, y_test),
                            "seconds": time.perf_counter() - start}

    print(f"{args.steps} Adam steps, batch 128, {x_train.shape[0]} training and {x_test.shape[0]} test signals\n")
    print("| training | final loss (last 50 steps) | test accuracy | Lipschitz upper bound (certified) "
          "| product of reshaped sigmas | empirical lower bound | certified accuracy at r=0.5 "
          "| time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        final = sum(r["losses"][-50:]) / 50  # mean of the last 50 steps
        print(f"| {name} | {final:.3g} | {r['accuracy']:.3f} | {r['upper']:.4g} "
              f"| {r['reshape_product']:.4g} | {r['lower']:.4g} | {r['certified']:.3f} "
              f"| {r['seconds']:.0f} |")
    print()
    for name, r in results.items():
        print(f"{name}: {r['how']}")
    plot(results, args.plot)
    print(f"\nwrote {os.path.normpath(args.plot)}")


if __name__ == "__main__":
    main()
