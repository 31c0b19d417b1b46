"""``paranorm convert``: formats, nesting, atomic writes and every error case leaving files as they were."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P

import paranorm as pn
from paranorm.checkpoint.io import limits
from paranorm.cli import convert as convert_cli
from paranorm.cli import main


def legacy_model() -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = nn.Sequential(nn.utils.weight_norm(nn.Conv1d(2, 3, 3)), nn.ReLU(), nn.utils.spectral_norm(nn.Conv1d(3, 4, 3)))
    model.train()(torch.randn(2, 2, 9))
    return model.eval()


def paranorm_model() -> nn.Module:
    return nn.Sequential(pn.weight_norm(nn.Conv1d(2, 3, 3)), nn.ReLU(), pn.spectral_norm(nn.Conv1d(3, 4, 3))).eval()


def plain_model() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Conv1d(3, 4, 3)).eval()


X = torch.randn(2, 2, 9, generator=torch.Generator().manual_seed(1))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_nested_pt_to_parametrizations_keeps_other_entries_and_loads(tmp_path, capsys):
    src = legacy_model()
    path = tmp_path / "ck.pt"
    torch.save({"model": src.state_dict(), "epoch": 7, "config": {"lr": 1e-3}}, path)
    before = digest(path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "parametrizations"]) == 0
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert out["epoch"] == 7 and out["config"] == {"lr": 1e-3}
    model = paranorm_model()
    model.load_state_dict(out["model"], strict=True)
    torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)
    assert digest(path) == before
    printed = capsys.readouterr().out
    assert "2 of 4 tensors change layout" in printed and "wrote" in printed
    assert listing(tmp_path) == ["ck.pt", "out.pt"]  # no temporary file left
    assert oct((tmp_path / "out.pt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_plain_json_and_state_dict_entry(tmp_path, capsys):
    src = legacy_model()
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": src.state_dict(), "step": 3}, path)
    assert main(["convert", str(path), str(tmp_path / "plain.pth"), "--to", "plain", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["nested"] == "state_dict" and summary["to"] == "plain"
    assert {(r["tensor"], r["kind"], r["from"], r["to"]) for r in summary["changed"]} == {
        ("0.weight", "weight_norm", "legacy", "plain"), ("2.weight", "spectral_norm", "legacy", "plain")}
    model = plain_model()
    model.load_state_dict(torch.load(tmp_path / "plain.pth", weights_only=True)["state_dict"])
    torch.testing.assert_close(model(X), src(X), rtol=1e-6, atol=1e-7)


def test_safetensors_round_trip_and_cross_format(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    src = paranorm_model()
    path = tmp_path / "model.safetensors"
    save_file({k: t.contiguous() for k, t in src.state_dict().items()}, path, metadata={"format": "pt"})
    assert main(["convert", str(path), str(tmp_path / "legacy.safetensors"), "--to", "legacy"]) == 0
    legacy = load_file(tmp_path / "legacy.safetensors")
    assert {"0.weight_g", "0.weight_v", "2.weight_orig", "2.weight_u", "2.weight_v"} <= set(legacy)
    assert main(["convert", str(tmp_path / "legacy.safetensors"), str(tmp_path / "back.pt"), "--to", "parametrizations"]) == 0
    from safetensors import safe_open

    with safe_open(tmp_path / "legacy.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # the input's header is kept
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for key, tensor in src.state_dict().items():
        assert torch.equal(back[key], tensor), key  # bit-exact through both formats
    assert main(["convert", str(tmp_path / "back.pt"), str(tmp_path / "hf.safetensors"), "--to", "legacy"]) == 0
    with safe_open(tmp_path / "hf.safetensors", "pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # what Hugging Face loaders expect


def test_dry_run_writes_nothing(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    torch.save(legacy_model().state_dict(), path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "plain", "--dry-run"]) == 0
    assert listing(tmp_path) == ["ck.pt"]
    assert "dry run: nothing written" in capsys.readouterr().out


def test_in_place(tmp_path):
    path = tmp_path / "ck.pt"
    src = legacy_model()
    torch.save(src.state_dict(), path)
    assert main(["convert", str(path), "--to", "parametrizations", "--in-place"]) == 0
    model = paranorm_model()
    model.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)
    assert listing(tmp_path) == ["ck.pt"]


def test_plain_to_normalized_with_dims_and_notes(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    src = plain_model()
    torch.save(src.state_dict(), path)
    args = ["convert", str(path), str(tmp_path / "wn.pt"), "--to", "parametrizations",
            "--weight-norm", "0.weight", "--weight-norm", "2.weight", "--dim", "2.weight=1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert any("g = ||w|| derived" in note for note in summary["notes"])
    model = nn.Sequential(pn.weight_norm(nn.Conv1d(2, 3, 3)), nn.ReLU(), pn.weight_norm(nn.Conv1d(3, 4, 3), dim=1)).eval()
    model.load_state_dict(torch.load(tmp_path / "wn.pt", weights_only=True))
    torch.testing.assert_close(model(X), src(X), rtol=1e-5, atol=1e-6)


def write_truncated(path: Path) -> None:
    torch.save(legacy_model().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_half_pair(path: Path) -> None:
    state = legacy_model().state_dict()
    del state["0.weight_v"]
    torch.save(state, path)


def write_two_layouts(path: Path) -> None:
    state = dict(legacy_model().state_dict())
    state.update({k: t for k, t in paranorm_model().state_dict().items() if k.startswith("0.parametrizations")})
    torch.save(state, path)


def write_safetensors_as_pt(path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, path)


def write_not_a_state_dict(path: Path) -> None:
    torch.save({"epoch": 3, "name": "x"}, path)


@pytest.mark.parametrize(
    ("name", "writer", "match"),
    [
        ("ck.pt", write_truncated, "truncated"),
        ("ck.txt", lambda p: p.write_text("hello"), "holds text"),
        ("ck.pt", write_half_pair, "no partner '0.weight_v'"),
        ("ck.pt", write_two_layouts, "two layouts at once"),
        ("ck.pt", write_not_a_state_dict, "holds no state_dict"),
        ("ck.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\""), "as safetensors"),
    ],
)
def test_bad_input_is_a_clear_error_and_touches_nothing(tmp_path, capsys, name, writer, match):
    path = tmp_path / name
    writer(path)
    before = digest(path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "parametrizations"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("paranorm convert: error:") and match in error
    assert digest(path) == before
    assert listing(tmp_path) == [name]  # no output, no temporary file


def test_refuses_to_overwrite_input_and_bad_output_suffix(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    torch.save(legacy_model().state_dict(), path)
    before = digest(path)
    assert main(["convert", str(path), str(path), "--to", "plain"]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "out.npz"), "--to", "plain"]) == 1
    assert "suffix '.npz'" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt"), "--to", "plain"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "other.pt"), "--to", "plain", "--in-place"]) == 1
    assert "drop OUT or drop --in-place" in capsys.readouterr().err
    assert main(["convert", str(path), "--to", "plain"]) == 1
    assert "give OUT, or pass --in-place" in capsys.readouterr().err
    assert digest(path) == before and listing(tmp_path) == ["ck.pt"]
    with pytest.raises(SystemExit) as usage:
        main(["convert", str(path), str(tmp_path / "o.pt"), "--to", "fused"])
    assert usage.value.code == 2


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    torch.save(legacy_model().state_dict(), path)
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous contents")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_cli.os, "replace", interrupted)
    assert main(["convert", str(path), str(out), "--to", "plain", "--overwrite"]) == 130
    assert out.read_bytes() == b"previous contents"
    assert listing(tmp_path) == ["ck.pt", "out.pt"]


def test_progress_bar_for_large_files_streams_the_write(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_cli, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(limits, "CHUNK", 512)  # many chunks for the safetensors writer
    seen: list[int] = []

    @contextlib.contextmanager
    def recording(total, description):
        with original(total, description) as advance:
            yield lambda n: (seen.append(n), advance(n))

    original = convert_cli._progress
    monkeypatch.setattr(convert_cli, "_progress", recording)
    src = P.weight_norm(nn.Linear(64, 64))
    path = tmp_path / "big.pt"
    torch.save(src.state_dict(), path)
    for out in ("out.pt", "out.safetensors"):
        seen.clear()
        assert main(["convert", str(path), str(tmp_path / out), "--to", "legacy"]) == 0
        assert sum(seen) == (tmp_path / out).stat().st_size and len(seen) > 2  # every byte reported
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(out["weight_v"], src.parametrizations.weight.original1)


def test_legacy_serialization_format_is_read(tmp_path):
    src = legacy_model()
    path = tmp_path / "old.pt"
    torch.save(src.state_dict(), path, _use_new_zipfile_serialization=False)  # cannot be mmapped
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "parametrizations"]) == 0
    model = paranorm_model()
    model.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True))
    torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)

def test_safetensors_missing_is_a_clear_error_for_reading_only(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ck.pt"
    torch.save(legacy_model().state_dict(), path)
    monkeypatch.setitem(__import__("sys").modules, "safetensors.torch", None)  # as if not installed
    # paranorm writes the format itself; reading it back needs the package.
    assert main(["convert", str(path), str(tmp_path / "out.safetensors"), "--to", "plain"]) == 0
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "out.safetensors"), str(tmp_path / "back.pt"), "--to", "plain"]) == 1
    assert "pip install 'paranorm[safetensors]'" in capsys.readouterr().err
    assert listing(tmp_path) == ["ck.pt", "out.safetensors"]


def test_spectral_norm_of_square_conv_needs_dim_or_reads_it(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fresh = nn.utils.spectral_norm(nn.Conv1d(4, 4, 3))  # no forward: u, v say nothing yet
    path = tmp_path / "sn.pt"
    torch.save(fresh.state_dict(), path)
    assert main(["convert", str(path), str(tmp_path / "plain.pt"), "--to", "plain"]) == 1
    assert "--dim weight=DIM" in capsys.readouterr().err
    assert main(["convert", str(path), str(tmp_path / "plain.pt"), "--to", "plain", "--dim", "weight=0"]) == 0
    fresh.eval()(torch.randn(1, 4, 5))  # the legacy hook computes the eval weight in forward
    torch.testing.assert_close(torch.load(tmp_path / "plain.pt", weights_only=True)["weight"], fresh.weight)


def test_a_given_dim_is_shown_and_a_dim_read_from_u_v_names_the_option(tmp_path, capsys):
    torch.manual_seed(0)
    trained = P.spectral_norm(nn.Conv1d(4, 4, 3))
    for _ in range(30):  # u, v converge: they single out dim 0
        trained(torch.randn(1, 4, 5))
    path = tmp_path / "sn.pt"
    torch.save(trained.state_dict(), path)
    assert main(["convert", str(path), str(tmp_path / "a.pt"), "--to", "plain", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    (note,) = [n for n in summary["notes"] if "read from u and v" in n]
    assert "--dim weight=0" in note
    args = ["convert", str(path), str(tmp_path / "b.pt"), "--to", "legacy", "--dim", "weight=0", "--json"]
    assert main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["changed"]
    assert row["dim"] == 0


def test_tensors_with_other_parametrizations_are_named_and_kept_only_when_asked(tmp_path, capsys):
    torchlip = pytest.importorskip("deel.torchlip")
    torch.manual_seed(0)
    # deel-torchlip chains Bjorck orthogonalization after its spectral norm.
    model = nn.Sequential(torchlip.SpectralLinear(6, 4), nn.ReLU(), P.weight_norm(nn.Linear(4, 3)))
    path, out = tmp_path / "lip.pt", tmp_path / "out.pt"
    torch.save(model.state_dict(), path)
    assert main(["convert", str(path), str(out), "--to", "plain"]) == 1
    err = capsys.readouterr().err
    assert "1 tensor(s) cannot be converted to 'plain': '0.weight' (a chain of parametrizations (spectral_norm + 1._w_bjorck))" in err
    assert "paranorm.fold(model)" in err and "--keep-unconverted" in err
    assert listing(tmp_path) == ["lip.pt"]
    assert main(["convert", str(path), str(out), "--to", "plain", "--keep-unconverted", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unconverted"] == ["0.weight"]
    assert {r["tensor"]: r["to"] for r in summary["changed"]} == {"0.weight": "kept", "2.weight": "plain"}
    written = torch.load(out, weights_only=True)
    source = torch.load(path, weights_only=True)
    assert all(torch.equal(written[k], v) for k, v in source.items() if k.startswith("0."))
    assert torch.equal(written["2.weight"], model[2].weight.detach())


def test_an_existing_out_is_replaced_only_with_overwrite(tmp_path, capsys):
    path, out = tmp_path / "ck.pt", tmp_path / "out.pt"
    torch.save(legacy_model().state_dict(), path)
    out.write_bytes(b"previous")
    assert main(["convert", str(path), str(out), "--to", "plain"]) == 1
    err = capsys.readouterr().err
    assert err == (f"paranorm convert: error: OUT {str(out)!r} exists; refusing to replace it. Pass "
                   "--overwrite to replace it, or choose another OUT.\n")
    assert out.read_bytes() == b"previous"
    assert main(["convert", str(path), str(out), "--to", "plain", "--overwrite"]) == 0
    assert set(torch.load(out, weights_only=True)) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert listing(tmp_path) == ["ck.pt", "out.pt"]


def test_a_read_only_out_or_in_is_never_replaced(tmp_path, capsys):
    path, out = tmp_path / "ck.pt", tmp_path / "out.pt"
    torch.save(legacy_model().state_dict(), path)
    out.write_bytes(b"keep me")
    for file in (path, out):
        file.chmod(0o444)
    before = (digest(path), out.read_bytes())
    assert main(["convert", str(path), str(out), "--to", "plain", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"OUT {str(out)!r} is read-only; refusing to replace it" in err and f"chmod u+w {out}" in err
    assert main(["convert", str(path), "--to", "plain", "--in-place"]) == 1
    assert f"IN {str(path)!r} is read-only" in capsys.readouterr().err
    assert (digest(path), out.read_bytes()) == before
    assert [oct(f.stat().st_mode & 0o777) for f in (path, out)] == [oct(0o444)] * 2
    assert listing(tmp_path) == ["ck.pt", "out.pt"]


def test_help_names_overwrite_and_how_to_remove_leftovers(capsys):
    with pytest.raises(SystemExit) as done:
        main(["convert", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite replace OUT if it exists" in text
    assert ".<name>.paranorm-<pid>-<host>.tmp" in text and "rm FOLDER/.*.paranorm-*.tmp" in text


def test_in_place_through_a_symlink_converts_the_real_file_and_keeps_the_link(tmp_path):
    real = tmp_path / "store" / "ck.pt"
    real.parent.mkdir()
    src = legacy_model()
    torch.save(src.state_dict(), real)
    link = tmp_path / "ck.pt"
    link.symlink_to(real)
    assert main(["convert", str(link), "--to", "parametrizations", "--in-place"]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    model = paranorm_model()
    model.load_state_dict(torch.load(real, weights_only=True))
    torch.testing.assert_close(model(X), src(X), rtol=0, atol=0)
    assert listing(real.parent) == ["ck.pt"] and listing(tmp_path) == ["ck.pt", "store"]


def test_a_symlink_out_is_written_through_and_a_dangling_one_refused(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    torch.save(legacy_model().state_dict(), path)
    real = tmp_path / "real.pt"
    real.write_bytes(b"old")
    (tmp_path / "out.pt").symlink_to(real)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "plain", "--overwrite"]) == 0
    assert (tmp_path / "out.pt").is_symlink() and "0.weight" in torch.load(real, weights_only=True)
    capsys.readouterr()
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "gone" / "x.pt")
    before = listing(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "dangling.pt"), "--to", "plain", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"OUT {str(tmp_path / 'dangling.pt')!r} is a symlink to" in err and "which does not exist" in err
    assert listing(tmp_path) == before and not (tmp_path / "gone").exists()
    # A link to IN is IN: refused without --in-place, whatever the spelling.
    (tmp_path / "alias.pt").symlink_to(path)
    assert main(["convert", str(path), str(tmp_path / "alias.pt"), "--to", "plain", "--overwrite"]) == 1
    assert "is IN; refusing to overwrite the input" in capsys.readouterr().err


def test_failure_after_converting_prints_nothing_before_the_error(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    torch.save({**legacy_model().state_dict(), "step": 3}, path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors"), "--to", "plain", "--json"]) == 1
    out, err = capsys.readouterr()
    assert "'step' is a int, not a tensor; safetensors holds tensors only. Write a .pt file" in err
    assert out == "" or set(json.loads(out)) == {"error", "exit_code"}  # the boundary's object only
    assert listing(tmp_path) == ["ck.pt"]


def test_conversion_errors_name_the_file_and_the_key(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    state = legacy_model().state_dict()
    state["0.weight_g"] = state["0.weight_g"].to(torch.int64)
    torch.save(state, path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "plain"]) == 1
    assert capsys.readouterr().err == (
        f"paranorm convert: error: IN {str(path)!r}: tensor '0.weight_g' (weight_norm of '0.weight') "
        "has dtype torch.int64; weight and spectral norm keep floating-point tensors, so the file is "
        "corrupt or these keys are not a normalization's.\n"
    )
    write_half_pair(path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "plain"]) == 1
    assert capsys.readouterr().err.startswith(f"paranorm convert: error: IN {str(path)!r}: '0.weight': ")
    assert listing(tmp_path) == ["ck.pt"]


def test_a_sparse_buffer_passes_through_to_pt_and_is_refused_by_safetensors(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adjacency = torch.eye(4).to_sparse()
    path = tmp_path / "ck.pt"
    torch.save({**legacy_model().state_dict(), "graph.adjacency": adjacency}, path)
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "parametrizations"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True)["graph.adjacency"].to_dense(), torch.eye(4))
    capsys.readouterr()
    assert main(["convert", str(path), str(tmp_path / "out.safetensors"), "--to", "parametrizations"]) == 1
    assert "'graph.adjacency' is a sparse_coo tensor; safetensors holds dense tensors only" in capsys.readouterr().err
    assert listing(tmp_path) == ["ck.pt", "out.pt"]


def test_a_console_too_narrow_for_the_table_gets_whole_keys(tmp_path, capsys, monkeypatch):
    model = nn.Sequential(*[P.weight_norm(nn.Conv1d(2, 2, 3)) for _ in range(2)])
    state = {f"generator.upsampling.blocks.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "long.pt"
    torch.save(state, path)
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--to", "legacy"]) == 0
    out = capsys.readouterr().out
    for key in ("generator.upsampling.blocks.0.weight_g", "generator.upsampling.blocks.1.weight_v"):
        assert key in out  # never folded mid-key
    assert max(len(line) for line in out.splitlines()) <= 60

