"""paranorm demo: end to end through the CLI and the API, numbers checked against torch itself.

The independent computation rebuilds each seed experiment by hand with torch's own
``torch.nn.utils.parametrizations`` (or no norm), calls the layer as ``F.linear(x, weight, bias)``
(no ``parametrize.cached``), and measures sigma with ``torch.linalg.svdvals`` in float64.
"""

from __future__ import annotations

import io
import json
import re
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrizations

import paranorm as pn
from paranorm import _demo as demo
from paranorm.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The page that shows the demo's output.
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
STEPS = 25
SEED = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SEED_WEIGHTS = {
    # ANCHORS.md section 7: weight, bias, Adam lr, inputs scaled by U(0, 1) * 10
    "first": ([[0.0, -2e-2], [0.3, 1.0], [1e-2, 0.0]], [-0.3, 0.0, -2e-2], 2e-3, True),
    "second": ([[0.0, -2e2], [0.3, 1.0], [1e2, 0.0]], [-0.3, 0.0, -2e2], 1e-4, False),
}


@pytest.fixture(scope="module")
def result() -> demo.DemoResult:
    return demo.run_demo(steps=STEPS, seed=SEED)


def by_hand(layer: str, norm: str, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """The blog post's experiment written out with torch's parametrizations, independent of paranorm."""
    weight, bias, lr, scaled = SEED_WEIGHTS[layer]
    generator = torch.Generator().manual_seed(seed + (0 if layer == "first" else 1))
    inputs = torch.randn(steps, 10, 2, generator=generator)
    if scaled:
        inputs = inputs * (torch.rand(steps, 1, 1, generator=generator) * 10)
    linear = nn.Linear(2, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))
    if norm == "weight_norm":
        parametrizations.weight_norm(linear)
    elif norm == "spectral_norm":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            parametrizations.spectral_norm(linear)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    losses, sigmas = [], []
    for x in inputs:
        w = linear.weight  # read once: a second read would run another power step
        loss = 1 - F.linear(x, w, linear.bias).mean()
        losses.append(loss.item())
        sigmas.append(torch.linalg.svdvals(w.detach().double())[0].item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    linear.eval()
    with torch.no_grad():
        out = {
            "weight": linear.weight.clone(),
            "bias": linear.bias.clone(),
            "losses": torch.tensor(losses, dtype=torch.float64),
            "sigmas": torch.tensor(sigmas, dtype=torch.float64),
            "sigma": torch.linalg.svdvals(linear.weight.double())[0],
        }
        if norm == "weight_norm":
            out["g"] = linear.parametrizations.weight.original0.clone()
            out["v"] = linear.parametrizations.weight.original1.clone()
        if norm == "spectral_norm":
            out["original"] = linear.parametrizations.weight.original.clone()
    return out


@pytest.mark.parametrize("layer", ["first", "second"])
@pytest.mark.parametrize("norm", demo.NORMS)
def test_runs_match_torch_by_hand(result: demo.DemoResult, layer: str, norm: str) -> None:
    run = result.run(layer, norm)
    expected = by_hand(layer, norm, STEPS, SEED)
    # Same float32 ops in the same order as torch's own parametrizations: equal, not just close.
    torch.testing.assert_close(run.after.weight, expected["weight"], rtol=0, atol=0)
    torch.testing.assert_close(run.after.bias, expected["bias"], rtol=0, atol=0)
    torch.testing.assert_close(run.losses, expected["losses"], rtol=0, atol=0)
    torch.testing.assert_close(run.sigmas, expected["sigmas"], rtol=1e-12, atol=0)
    assert run.after.sigma == pytest.approx(expected["sigma"].item(), rel=1e-12)
    for key in ("g", "v", "original"):
        got = getattr(run.after, key)
        if key in expected:
            torch.testing.assert_close(got, expected[key], rtol=0, atol=0)
        else:
            assert got is None


def test_before_is_the_seed_layer(result: demo.DemoResult) -> None:
    wn = result.run("first", "weight_norm")
    weight = torch.tensor(SEED_WEIGHTS["first"][0])
    torch.testing.assert_close(wn.before.weight, weight, rtol=1e-6, atol=0)
    torch.testing.assert_close(wn.before.v, weight, rtol=0, atol=0)
    torch.testing.assert_close(wn.before.g, weight.norm(dim=1, keepdim=True), rtol=1e-6, atol=0)
    torch.testing.assert_close(wn.before.bias, torch.tensor(SEED_WEIGHTS["first"][1]))
    # The weight is still g v / ||v|| after training.
    v = wn.after.v.double()
    torch.testing.assert_close(
        wn.after.weight.double(),
        wn.after.g.double() * v / v.norm(dim=1, keepdim=True),
        rtol=1e-6,
        atol=1e-9,
    )


def test_spectral_norm_is_real_and_weight_norm_is_not(result: demo.DemoResult) -> None:
    raw = torch.linalg.svdvals(torch.tensor(SEED_WEIGHTS["second"][0], dtype=torch.float64))[0]
    sn = result.run("second", "spectral_norm")
    wn = result.run("second", "weight_norm")
    assert sn.before.sigma == pytest.approx(1.0, abs=1e-5)
    assert sn.after.sigma == pytest.approx(1.0, abs=1e-5)
    assert (sn.sigmas - 1).abs().max().item() < 1e-5
    # weight norm keeps the function, so sigma stays the layer's own ~200.
    assert wn.before.sigma == pytest.approx(raw.item(), rel=1e-6)
    assert wn.after.sigma == pytest.approx(raw.item(), rel=1e-3)
    line = demo.blog_post_mistake(result)
    assert "import torch.nn.utils.weight_norm as spectral_norm" in line
    assert f"{wn.after.sigma:.6g}" in line and f"{sn.after.sigma:.6f}" in line
    assert "\n" not in line


def test_rendered_tables_show_the_independent_numbers(result: demo.DemoResult) -> None:
    buffer = io.StringIO()
    demo.render(result, Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    for title in ("(a) weight norm", "(b) the blog post's second layer", "(c) none vs weight_norm"):
        assert title in text
    wn = by_hand("first", "weight_norm", STEPS, SEED)
    for value in [*wn["g"].flatten().tolist(), *wn["v"].flatten().tolist()]:
        assert f"{value:.4g}" in text
    for norm in demo.NORMS:
        expected = by_hand("second", norm, STEPS, SEED)
        assert f"{expected['sigma'].item():#.6g}" in text
        assert f"{expected['sigmas'][-1].item():#.6g}" in text
    assert demo.blog_post_mistake(result).split()[-1] in text


def test_cli_writes_tables_and_png_atomically(tmp_path, capsys) -> None:
    path = tmp_path / "demo.png"
    path.write_bytes(b"an older plot")
    assert main(["demo", "--steps", "20", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"plot written to {path}" in out.replace("\n", "")
    assert "(a) weight norm" in out and "(c) none vs weight_norm" in out
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # no temp file left


def test_cli_json_parses_and_matches_api(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "12", "--seed", "7", "--json", "--no-plot"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data.pop("plot") is None
    assert list(tmp_path.iterdir()) == []  # --no-plot: nothing written
    api = demo.to_dict(demo.run_demo(steps=12, seed=7))
    data.pop("seconds"), api.pop("seconds")
    assert data == api
    assert {(r["layer"], r["norm"]) for r in data["runs"]} == {
        (layer, norm) for layer in ("first", "second") for norm in demo.NORMS
    }
    assert all(len(r["losses"]) == len(r["sigmas"]) == 12 for r in data["runs"])


def test_deterministic_per_seed_and_seeds_differ() -> None:
    state = torch.get_rng_state()
    a, b, c = (demo.to_dict(demo.run_demo(steps=8, seed=s)) for s in (11, 11, 12))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    for d in (a, b, c):
        d.pop("seconds")
    assert a == b
    assert a["runs"][0]["losses"] != c["runs"][0]["losses"]
    assert a["runs"][0]["after"]["bias"] != c["runs"][0]["after"]["bias"] or (
        a["runs"][0]["after"]["weight"] != c["runs"][0]["after"]["weight"]
    )


def test_bad_input_is_a_clear_error(result: demo.DemoResult, tmp_path, capsys) -> None:
    with pytest.raises(pn.ParanormError, match="steps must be an int from 1 to 100000"):
        demo.run_demo(steps=0)
    with pytest.raises(pn.ParanormError, match="seed must be an int from 0 to"):
        demo.run_demo(steps=1, seed=-1)
    missing = tmp_path / "no" / "such" / "plot.png"
    with pytest.raises(pn.ParanormError, match="does not exist"):
        demo.plot(result, missing)
    assert main(["demo", "--steps", "2", "--plot", str(missing)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["demo", "--steps", "2", "--plot", str(tmp_path)]) == 1
    assert "it is a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    for argv in (["--steps", "0"], ["--seed", "x"], ["--plot", "a.png", "--no-plot"],
                 ["--seed", "1180591620717411303424"], ["--steps", "1000000000"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", *argv])
        assert exit_info.value.code == 2
    assert "expected an int >= 0 and <= 9223372036854775807" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "magic"), [("d.jpg", b"\xff\xd8\xff"), ("d.pdf", b"%PDF"), ("d.svg", b"<?xml")])
def test_plot_is_written_in_the_format_its_suffix_names(result: demo.DemoResult, tmp_path, name, magic) -> None:
    path = demo.plot(result, tmp_path / name)
    assert path.read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["x.txt", "notes", "model.pt"])
def test_a_plot_path_that_names_no_image_format_is_refused_before_training(tmp_path, capsys, name) -> None:
    target = tmp_path / name
    if name == "model.pt":
        target.write_bytes(b"precious")
    assert main(["demo", "--steps", "100000", "--plot", str(target)]) == 1  # fails before 100k steps
    err = capsys.readouterr().err
    assert "is not an image format" in err and ".png, .pdf, .svg, .jpg" in err
    assert (target.read_bytes() == b"precious") if name == "model.pt" else not target.exists()


def test_a_read_only_plot_is_not_replaced(result: demo.DemoResult, tmp_path) -> None:
    target = tmp_path / "ro.png"
    target.write_bytes(b"keep")
    target.chmod(0o444)
    with pytest.raises(pn.ParanormError, match=r"read-only.*chmod u\+w"):
        demo.plot(result, target)
    assert target.read_bytes() == b"keep"


def _block(page: Path, after: str, fence: str) -> str:
    text = page.read_text(encoding="utf-8")
    text = text[text.index(after) :]
    start = text.index(fence) + len(fence)
    return text[start : text.index("```", start)]


NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]\d+)?")


def _words_and_numbers(text: str) -> tuple[list[str], list[float]]:
    """The text without its numbers (spaces collapsed: widths follow the digits), and the numbers."""
    text = re.sub(r"computed in [0-9.]+ s", "computed in T s", text)
    words = [" ".join(line.split()) for line in NUMBER.sub("#", text).splitlines()]
    return words, [float(x) for x in NUMBER.findall(text)]


def test_the_docs_output_is_a_real_default_run() -> None:
    # Getting started pastes `paranorm demo --plot docs/demo.png`; rerun it (80 columns, as
    # piped). Numbers to 1e-3 relative: another CPU may round the last bits of a float differently.
    block = _block(GETTING_STARTED, "The output of `paranorm demo --plot docs/demo.png`", "```text\n")
    last = block.rstrip("\n").splitlines()[-1]
    assert last == "plot written to docs/demo.png"
    buffer = io.StringIO()
    demo.render(demo.run_demo(), Console(file=buffer, width=80, color_system=None))
    pasted_words, pasted_numbers = _words_and_numbers(block[: block.rindex(last)])
    words, numbers = _words_and_numbers(buffer.getvalue())
    assert pasted_words == words
    assert pasted_numbers == pytest.approx(numbers, rel=1e-3, abs=1e-7)


def test_readme_quick_start_runs(tmp_path, capsys) -> None:
    script = tmp_path / "quick_start.py"
    script.write_text(_block(README, "## Quick start", "```python\n"), encoding="utf-8")
    runpy.run_path(str(script))
    assert "weight_norm" in capsys.readouterr().out
