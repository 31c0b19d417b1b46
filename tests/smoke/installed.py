"""Smoke test of an installed paranorm (a wheel or an sdist in a fresh venv): ``make dist-check``.

Plain asserts, no pytest: it runs where only paranorm and torch are installed, and checks that
the core works without the cli extra and that the command line says what to install.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import paranorm as pn


def main() -> None:
    assert "site-packages" in pn.__file__, f"paranorm imported from the source tree: {pn.__file__}"
    assert not {"rich", "matplotlib"} & {m.split(".")[0] for m in sys.modules}, "import paranorm needs the cli extra"
    assert (Path(pn.__file__).parent / "py.typed").exists(), "py.typed is not installed"

    torch.manual_seed(0)
    layer = pn.spectral_norm(torch.nn.Linear(8, 4), n_power_iterations=50)
    assert abs(torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() - 1) < 1e-3
    conv = pn.weight_norm(torch.nn.Conv1d(2, 3, 3))
    before = conv(torch.ones(1, 2, 5))
    assert torch.equal(pn.fold(conv)(torch.ones(1, 2, 5)), before)
    assert pn.sigma(torch.nn.Conv2d(2, 2, 3, padding=1), "fft", input_shape=(2, 6, 6)).kind == "upper"

    cli = Path(sys.executable).with_name("paranorm")
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert version == f"paranorm {pn.__version__}", version
    demo = subprocess.run([str(cli), "demo", "--steps", "2", "--no-plot"], capture_output=True, text=True)
    assert demo.returncode == 1 and "pip install 'paranorm[cli]'" in demo.stderr, demo.stderr
    print(f"paranorm {pn.__version__} installed from {Path(pn.__file__).parent}: ok")


if __name__ == "__main__":
    main()
