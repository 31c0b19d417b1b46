"""``paranorm inspect`` on saved checkpoints and on models named module:factory."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm.cli import main

MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn
    import paranorm as pn

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            pn.spectral_norm(nn.Conv2d(4, 4, 3, stride=2, padding=1)),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 5),
        )

    not_a_model = 3
    """
)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "cli_inspect_models.py"
    path.write_text(MODEL_SOURCE)
    return path


def make_model() -> nn.Sequential:
    namespace: dict = {}
    exec(MODEL_SOURCE, namespace)
    return namespace["make_model"]()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_model_from_a_python_file_json_matches_the_library(capsys, model_file) -> None:
    code, out, err = run(
        capsys, "inspect", f"{model_file}:make_model", "--input-shape", "2,6,6", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    expected = pn.lipschitz_report(make_model(), torch.randn(1, 2, 6, 6)).to_dict()
    assert [layer["name"] for layer in data["layers"]] == ["0", "2", "5"]
    assert [layer["input_shape"] for layer in data["layers"]] == [[2, 6, 6], [4, 6, 6], [36]]
    for got, want in zip(data["layers"], expected["layers"], strict=True):
        for column in ("reshape", "power", "bound"):
            assert got["estimates"][column]["value"] == pytest.approx(
                want["estimates"][column]["value"], rel=1e-6
            )
            assert got["estimates"][column]["kind"] == want["estimates"][column]["kind"]
    assert data["network_bound"]["holds"] is True
    assert data["network_bound"]["value"] == pytest.approx(
        expected["network_bound"]["value"], rel=1e-6
    )


def test_importable_module_spec_table_and_plot(capsys, model_file, monkeypatch, tmp_path) -> None:
    monkeypatch.syspath_prepend(str(model_file.parent))
    plot = tmp_path / "sigmas.png"
    code, out, err = run(
        capsys,
        "inspect",
        "--model",
        "cli_inspect_models:make_model",
        "--input-shape",
        "2,6,6",
        "--plot",
        str(plot),
    )
    assert code == 0, err
    assert "Lipschitz report" in out and "network Lipschitz bound" in out
    assert "spectral_norm" in out and "operator σ" in out and "≤" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("nested", [None, "model", "state_dict"])
def test_pt_checkpoint(capsys, tmp_path, nested) -> None:
    model = make_model()
    state_dict = model.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(state_dict if nested is None else {nested: state_dict, "epoch": 3}, path)
    code, out, err = run(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    data = json.loads(out)
    rows = {layer["name"]: layer for layer in data["layers"]}
    assert list(rows) == ["0.weight", "2.weight", "5.weight"]
    assert rows["2.weight"]["normalization"] == "spectral_norm (parametrizations, dim=0 from u, v)"
    linear = torch.linalg.matrix_norm(model[5].weight.detach().double(), ord=2).item()
    assert rows["5.weight"]["estimates"]["power"]["value"] == pytest.approx(linear, rel=1e-4)
    assert rows["5.weight"]["certified_bound"] >= linear * (1 - 1e-6)
    # the spectrally normalized conv's effective weight, as torch computes it in eval mode
    effective = model.eval()[2].weight.detach().double().flatten(1)
    reshaped = torch.linalg.matrix_norm(effective, ord=2).item()
    assert rows["2.weight"]["estimates"]["reshape"]["value"] == pytest.approx(reshaped, rel=1e-4)
    assert rows["0.weight"]["estimates"]["power"]["value"] is None
    assert data["network_bound"]["holds"] is False


def test_safetensors_checkpoint_matches_pt(capsys, tmp_path) -> None:
    save_file = pytest.importorskip("safetensors.torch").save_file
    state_dict = {k: v.contiguous() for k, v in make_model().state_dict().items()}
    save_file(state_dict, str(tmp_path / "ckpt.safetensors"))
    torch.save(state_dict, tmp_path / "ckpt.pth")
    results = []
    for name in ("ckpt.safetensors", "ckpt.pth"):
        code, out, err = run(
            capsys, "inspect", str(tmp_path / name), "--json", "--input-shape", "2,6,6"
        )
        assert code == 0, err
        results.append(json.loads(out))
    for a, b in zip(results[0]["layers"], results[1]["layers"], strict=True):
        # the same tensors; float32 matvecs may differ in the last bit with another alignment
        assert (a["name"], a["normalization"], a["weight_shape"]) == (
            b["name"],
            b["normalization"],
            b["weight_shape"],
        )
        for column, estimate in a["estimates"].items():
            other = b["estimates"][column]
            assert (estimate["kind"], estimate["error"]) == (other["kind"], other["error"])
            if other["value"] is None:
                assert estimate["value"] is None
            else:
                assert estimate["value"] == pytest.approx(other["value"], rel=1e-6)
    assert any("--input-shape is not used" in note for note in results[0]["notes"])


def test_checkpoint_table_says_what_it_could_not_compute(capsys, tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(make_model().state_dict(), path)
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "no network bound" in out and "n/a" in out
    assert "stride, padding, dilation, groups" in " ".join(out.split())


def test_weights_loads_a_checkpoint_into_the_model(capsys, tmp_path, model_file) -> None:
    other = make_model()
    with torch.no_grad():
        other[5].weight.mul_(3.0)
    torch.save(other.state_dict(), tmp_path / "scaled.pt")
    code, out, err = run(
        capsys, "inspect", f"{model_file}:make_model", "--input-shape", "2,6,6", "--json",
        "--weights", str(tmp_path / "scaled.pt"),
    )  # fmt: skip
    assert code == 0, err
    linear = torch.linalg.matrix_norm(other[5].weight.detach().double(), ord=2).item()
    assert json.loads(out)["layers"][2]["estimates"]["power"]["value"] == pytest.approx(
        linear, rel=1e-4
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.pt"], "no such file: 'missing.pt'"),
        (["{model}:make_model", "--input-shape", "2,x,6"], "is not a shape"),
        (["{model}:make_model", "--input-shape", "0,6,6"], "is not a shape"),
        (
            ["{model}:make_model", "--input-shape", "3,6,6"],
            "failed on example_input of shape (1, 3, 6, 6)",
        ),
        (["{model}:make_model"], "needs --input-shape"),
        (["{model}:nope", "--input-shape", "2,6,6"], "has no attribute 'nope'"),
        (["{model}:not_a_model", "--input-shape", "2,6,6"], "expected an nn.Module"),
        (
            ["--model", "no_such_package_xyz:make", "--input-shape", "2"],
            "importing 'no_such_package_xyz' failed",
        ),
        (
            ["no_such_package_xyz:make", "--input-shape", "2"],
            "no such file: 'no_such_package_xyz:make'. To inspect a model defined in Python code, "
            "name it with --model no_such_package_xyz:make (this imports and runs that code).",
        ),
        (["{tmp}/ckpt.pt", "--model", "{model}:make_model"], "give a CHECKPOINT or --model, not both"),
        (["{tmp}/ckpt.pt", "--weights", "{tmp}/ckpt.pt"], "--weights loads a checkpoint into a model"),
        (["{tmp}/ckpt.txt"], "holds text (it starts with 'x')"),
        (["{model}"], "is Python source, not a checkpoint"),
        (["{tmp}/garbage.pt"], "with torch.load(weights_only=True)"),
        (["{tmp}/garbage.safetensors"], "as safetensors"),
        (["{tmp}/empty.pt"], "holds no state_dict"),
        (["{model}:make_model", "--input-shape", "2,6,6", "--methods", "exact"], "methods must be"),
        (
            ["{model}:make_model", "--input-shape", "2,6,6", "--plot", "{tmp}/no/dir/p.png"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, model_file, argv, message) -> None:
    (tmp_path / "ckpt.txt").write_text("x")
    torch.save(make_model().state_dict(), tmp_path / "ckpt.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01garbage")
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    argv = [a.format(model=model_file, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, "inspect", *argv)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("paranorm inspect: error: ")
    assert message.format(tmp=tmp_path) in lines[0]


def test_usage_errors_exit_2(capsys) -> None:
    for argv in (["inspect"], ["inspect", "x.pt", "--no-such-flag"], ["inspect", "--json"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "usage: paranorm inspect" in capsys.readouterr().err


def test_a_file_name_is_never_taken_for_code(capsys, tmp_path, monkeypatch) -> None:
    """`model:v3.pt` that does not exist must not import ./model.py from the current folder."""
    marker = tmp_path / "ran"
    (tmp_path / "model.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nv3 = None\n")
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(capsys, "inspect", "model:v3.pt", "--input-shape", "3,8,8")
    assert code == 1 and not marker.exists()
    assert "no such file: 'model:v3.pt'" in err and "--model model:v3.pt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py"]


def test_input_shape_before_the_model_is_one_value(capsys, model_file) -> None:
    code, out, err = run(capsys, "inspect", "--input-shape", "2,6,6", "--model", f"{model_file}:make_model", "--json")
    assert code == 0, err
    assert next(layer["input_shape"] for layer in json.loads(out)["layers"]) == [2, 6, 6]
    code, out, err = run(capsys, "inspect", "--input-shape", "2,6,6", f"{model_file}:make_model", "--json")
    assert code == 0, err


def test_weights_that_do_not_fit_say_which_keys(capsys, tmp_path, model_file) -> None:
    state = make_model().state_dict()
    state["extra.weight"] = torch.ones(2)
    del state["0.bias"]
    torch.save(state, tmp_path / "bad.pt")
    code, _, err = run(
        capsys, "inspect", "--model", f"{model_file}:make_model", "--input-shape", "2,6,6",
        "--weights", str(tmp_path / "bad.pt"),
    )  # fmt: skip
    assert code == 1
    assert "missing keys 0.bias" in err and "unexpected keys extra.weight" in err
    assert "paranorm convert" in err
    torch.save({k: v[:1] if k == "5.bias" else v for k, v in make_model().state_dict().items()}, tmp_path / "shape.pt")
    code, _out, err = run(
        capsys, "inspect", "--model", f"{model_file}:make_model", "--input-shape", "2,6,6",
        "--weights", str(tmp_path / "shape.pt"),
    )  # fmt: skip
    assert code == 1 and "size mismatch for 5.bias" in err


def test_json_mode_reports_every_failure_as_json(capsys, tmp_path) -> None:
    code, out, _err = run(capsys, "inspect", str(tmp_path / "missing.pt"), "--json")
    assert code == 1
    data = json.loads(out)
    assert data["exit_code"] == 1 and data["error"]["kind"] == "error"
    assert "no such file" in data["error"]["message"]
    with pytest.raises(SystemExit):
        main(["inspect", "--json", "--no-such-flag"])
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 2 and data["error"]["kind"] == "usage"


def test_integer_inputs_by_dtype_and_range(capsys, tmp_path) -> None:
    """A model of token ids (VITS, a text encoder) needs an integer example input."""
    (tmp_path / "tokens.py").write_text(
        "import torch, paranorm as pn\n"
        "class Tokens(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embed = torch.nn.Embedding(10, 4)\n"
        "        self.conv = pn.weight_norm(torch.nn.Conv1d(4, 3, 3))\n"
        "    def forward(self, ids):\n"
        "        return self.conv(self.embed(ids).transpose(1, 2))\n"
        "def make():\n    torch.manual_seed(0)\n    return Tokens()\n"
    )
    spec = f"{tmp_path / 'tokens.py'}:make"
    code, _, err = run(capsys, "inspect", "--model", spec, "--input-shape", "7")
    assert code == 1 and "--input-dtype int64 --input-range 0,VOCAB_SIZE" in err
    code, out, err = run(capsys, "inspect", "--model", spec, "--input-shape", "7", "--input-dtype", "int64",
                         "--input-range", "0,10", "--json")  # fmt: skip
    assert code == 0, err
    assert [layer["input_shape"] for layer in json.loads(out)["layers"]] == [[7], [4, 7]]
    for bad, message in ((["--input-dtype", "int3"], "not a dtype"), (["--input-range", "5,5"], "not a range")):
        code, _, err = run(capsys, "inspect", "--model", spec, "--input-shape", "7", "--input-dtype", "int64", *bad)
        assert code == 1 and message in err


def test_allow_large_lifts_the_size_limits(capsys, tmp_path, monkeypatch) -> None:
    # Below the default limits, lowered here so that a small layer is "large".
    from paranorm._sigma import cost

    monkeypatch.setattr(cost, "SVD_MAX_SIDE", 4)
    torch.manual_seed(0)
    path = tmp_path / "linear.pt"
    torch.save({"fc.weight": torch.randn(6, 5)}, path)
    code, out, err = run(capsys, "inspect", str(path), "--methods", "svd", "--json")
    assert code == 0, err
    (layer,) = json.loads(out)["layers"]
    assert layer["estimates"]["svd"]["value"] is None
    assert "--allow-large" in layer["estimates"]["svd"]["error"]
    code, out, err = run(capsys, "inspect", str(path), "--methods", "svd", "--json", "--allow-large")
    assert code == 0, err
    (layer,) = json.loads(out)["layers"]
    exact = torch.linalg.matrix_norm(torch.load(path)["fc.weight"].double(), ord=2).item()
    assert layer["estimates"]["svd"]["value"] == pytest.approx(exact, rel=1e-6)


def test_fast_takes_fewer_gram_steps_for_a_bound_that_still_holds(capsys, tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "conv.pt"
    weight = torch.randn(32, 32, 7)
    torch.save({"conv.weight": weight}, path)
    found = {}
    for flags in ([], ["--fast"]):
        code, out, err = run(capsys, "inspect", str(path), "--json", *flags)
        assert code == 0, err
        (layer,) = json.loads(out)["layers"]
        found[bool(flags)] = layer["estimates"]["bound"]
    # The same bound with fewer steps: at least as large, and above sigma on a fine grid.
    k_hat = torch.fft.rfft(weight.double(), n=4096, dim=-1).permute(2, 0, 1)
    truth = torch.linalg.matrix_norm(k_hat, ord=2).max().item()
    assert found[True]["iterations"] < found[False]["iterations"]
    assert truth <= found[False]["value"] <= found[True]["value"] <= truth * 1.05


def test_without_a_terminal_progress_is_a_plain_line_on_stderr(capsys, tmp_path, monkeypatch) -> None:
    from paranorm.cli import inspect as inspect_cli

    monkeypatch.setattr(inspect_cli, "LOG_EVERY_S", 0.0)  # a line after every layer
    path = tmp_path / "two.pt"
    torch.save({"a.weight": torch.randn(3, 4), "b.weight": torch.randn(2, 3)}, path)
    code, out, err = run(capsys, "inspect", str(path), "--json")
    assert code == 0
    assert json.loads(out)["layers"]  # stdout stays one JSON document
    lines = err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "paranorm inspect: 1 of 2 layers", "paranorm inspect: 2 of 2 layers"
    ]
    assert lines[-1].endswith("(last: b.weight)")


def test_a_console_too_narrow_for_the_table_gets_whole_names(capsys, tmp_path, monkeypatch) -> None:
    names = [f"generator.resblocks.{i}.convs1.{i}.parametrizations.weight" for i in range(3)]
    path = tmp_path / "long.pt"
    torch.save({name: torch.randn(4, 4, 3) for name in names}, path)
    monkeypatch.setenv("COLUMNS", "60")
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert all(name in lines for name in names)  # each on a line of its own, not folded
    assert max(len(line) for line in lines) <= 60
    monkeypatch.setenv("COLUMNS", "200")  # wide enough: the table
    code, out, err = run(capsys, "inspect", str(path))
    assert "┃ layer" in out and all(name in out for name in names)
