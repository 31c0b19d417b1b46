"""Training checkpoints as real projects write them: HiFi-GAN/BigVGAN's suffix-less g_/do_ files,
Lightning's prefixed state_dict, DAC's {"state_dict", "metadata"}, DDP's module. prefix.

Every state dict inside is found, converted and kept beside the other entries (optimizer
states, steps, metadata), which come back as the very same values; each layout round-trips
bit for bit and loads into the model it was saved from.
"""

from __future__ import annotations

import json

import pytest
import torch

import paranorm as pn
from models import Generator, MultiPeriodDiscriminator, MultiScaleDiscriminator
from paranorm.checkpoint.io import read_checkpoint
from paranorm.cli import main


def hifigan_files(tmp_path):
    """g_00000042 and do_00000042 as HiFi-GAN's train.py writes them (legacy weight norm; the
    MSD's first scale spectrally normed), after one optimizer step so Adam has state."""
    torch.manual_seed(0)
    g, mpd, msd = Generator("legacy"), MultiPeriodDiscriminator("legacy"), MultiScaleDiscriminator("legacy")
    optim_g = torch.optim.AdamW(g.parameters(), 2e-4)
    optim_d = torch.optim.AdamW([*mpd.parameters(), *msd.parameters()], 2e-4)
    wave = torch.randn(2, 1, 64)
    loss = g(torch.randn(2, 6, 8)).mean() + mpd(wave).mean() + msd(wave).mean()
    loss.backward()
    optim_g.step()
    optim_d.step()
    torch.save({"generator": g.state_dict()}, tmp_path / "g_00000042")
    do = {"mpd": mpd.state_dict(), "msd": msd.state_dict(), "optim_g": optim_g.state_dict(),
          "optim_d": optim_d.state_dict(), "steps": 42, "epoch": 1}  # fmt: skip
    torch.save(do, tmp_path / "do_00000042")
    return g, mpd, msd


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_state_dicts_of_a_training_checkpoint_are_found(tmp_path):
    hifigan_files(tmp_path)
    assert read_checkpoint(tmp_path / "g_00000042").names == ["generator"]
    do = read_checkpoint(tmp_path / "do_00000042")
    assert do.names == ["mpd", "msd"]  # the optimizer states are no model's state dict
    with pytest.raises(pn.CheckpointError, match=r"holds 2 state dicts \('mpd', 'msd'\).*--key"):
        do.state_dict  # noqa: B018 - the property raises
    assert do.select("msd").state_dict is do.obj["msd"]


@pytest.mark.parametrize("to", ["parametrizations", "plain"])
def test_convert_each_state_dict_and_keep_every_other_entry(tmp_path, capsys, to):
    _g, mpd, msd = hifigan_files(tmp_path)
    before = torch.load(tmp_path / "do_00000042", weights_only=True)
    code, out, err = run(capsys, "convert", str(tmp_path / "do_00000042"), str(tmp_path / "do_new"), "--to", to, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["state_dicts"] == ["mpd", "msd"]
    assert {row["tensor"].split("/")[0] for row in summary["changed"]} == {"mpd", "msd"}
    after = torch.load(tmp_path / "do_new", weights_only=True)
    assert after["steps"] == 42 and after["epoch"] == 1
    for optim in ("optim_g", "optim_d"):  # kept exactly
        assert after[optim]["param_groups"] == before[optim]["param_groups"]
        for state, old in zip(after[optim]["state"].values(), before[optim]["state"].values(), strict=True):
            assert all(torch.equal(state[k], old[k]) for k in old)
    models = {"mpd": MultiPeriodDiscriminator("paranorm" if to != "plain" else "plain"),
              "msd": MultiScaleDiscriminator("paranorm" if to != "plain" else "plain")}  # fmt: skip
    x = torch.randn(2, 1, 64)
    for name, original in (("mpd", mpd), ("msd", msd)):
        models[name].load_state_dict(after[name])
        torch.testing.assert_close(models[name].eval()(x), original.eval()(x), rtol=1e-5, atol=1e-6)


def test_round_trip_through_the_suffixless_generator_file_is_bit_exact(tmp_path, capsys):
    hifigan_files(tmp_path)
    src = tmp_path / "g_00000042"
    assert run(capsys, "convert", str(src), str(tmp_path / "g_param"), "--to", "parametrizations")[0] == 0
    assert run(capsys, "convert", str(tmp_path / "g_param"), str(tmp_path / "g_back"), "--to", "legacy")[0] == 0
    old = torch.load(src, weights_only=True)["generator"]
    new = torch.load(tmp_path / "g_back", weights_only=True)["generator"]
    assert list(old) == list(new) and all(torch.equal(old[k], new[k]) for k in old)
    param = torch.load(tmp_path / "g_param", weights_only=True)["generator"]
    model = Generator("paranorm")
    model.load_state_dict(param)


def test_key_converts_one_state_dict_and_leaves_the_others(tmp_path, capsys):
    hifigan_files(tmp_path)
    code, _out, err = run(capsys, "convert", str(tmp_path / "do_00000042"), str(tmp_path / "do_new"),
                         "--to", "plain", "--key", "msd")  # fmt: skip
    assert code == 0, err
    before = torch.load(tmp_path / "do_00000042", weights_only=True)
    after = torch.load(tmp_path / "do_new", weights_only=True)
    assert all(torch.equal(before["mpd"][k], after["mpd"][k]) for k in before["mpd"])  # untouched
    assert not any(k.endswith("_v") for k in after["msd"])
    code, _, err = run(capsys, "convert", str(tmp_path / "do_00000042"), str(tmp_path / "x"), "--to", "plain", "--key", "mrd")
    assert code == 1 and "has no state dict 'mrd'; it has 'mpd', 'msd'" in err


def test_a_safetensors_out_takes_one_state_dict(tmp_path, capsys):
    pytest.importorskip("safetensors")
    hifigan_files(tmp_path)
    code, _, err = run(capsys, "convert", str(tmp_path / "do_00000042"), str(tmp_path / "d.safetensors"), "--to", "plain")
    assert code == 1 and "--key NAME" in err and not (tmp_path / "d.safetensors").exists()
    code, _, err = run(capsys, "convert", str(tmp_path / "do_00000042"), str(tmp_path / "d.safetensors"),
                       "--to", "plain", "--key", "mpd")  # fmt: skip
    assert code == 0, err
    assert read_checkpoint(tmp_path / "d.safetensors").names == [""]


def test_inspect_reports_every_state_dict_by_name(tmp_path, capsys):
    hifigan_files(tmp_path)
    code, out, err = run(capsys, "inspect", str(tmp_path / "do_00000042"), "--json", "--methods", "reshape")
    assert code == 0, err
    names = [layer["name"] for layer in json.loads(out)["layers"]]
    assert names[0].startswith("mpd/discriminators.0.convs.0") and any(n.startswith("msd/") for n in names)
    code, out, err = run(capsys, "inspect", str(tmp_path / "do_00000042"), "--json", "--methods", "reshape", "--key", "msd")
    assert code == 0, err
    assert all(not layer["name"].startswith("mpd") for layer in json.loads(out)["layers"])


def test_lightning_and_dac_and_ddp_layouts(tmp_path, capsys):
    torch.manual_seed(1)
    model = pn.weight_norm(torch.nn.Conv1d(2, 3, 3))
    state = model.state_dict()
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3,
                 "optimizer_states": [{"state": {}, "param_groups": []}], "hyper_parameters": {"lr": 1e-3}}  # fmt: skip
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save({"state_dict": state, "metadata": {"kwargs": {"channels": 3}}}, tmp_path / "weights.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    assert read_checkpoint(tmp_path / "last.ckpt").names == ["state_dict"]
    assert read_checkpoint(tmp_path / "weights.pth").names == ["state_dict"]
    code, _, err = run(capsys, "convert", str(tmp_path / "last.ckpt"), str(tmp_path / "plain.ckpt"), "--to", "plain")
    assert code == 0, err
    out = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    assert out["hyper_parameters"] == {"lr": 1e-3} and set(out["state_dict"]) == {"model.weight", "model.bias"}
    # DDP's module. prefix: inspect --weights loads it into the bare model.
    (tmp_path / "make.py").write_text(
        "import torch, paranorm as pn\n"
        "def make():\n    return pn.weight_norm(torch.nn.Conv1d(2, 3, 3))\n"
    )
    code, out, err = run(capsys, "inspect", "--model", f"{tmp_path / 'make.py'}:make", "--input-shape", "2,8",
                         "--weights", str(tmp_path / "ddp.pt"), "--json")  # fmt: skip
    assert code == 0, err


def test_dim_for_every_ambiguous_square_conv_or_by_pattern(tmp_path, capsys):
    """HiFi-GAN's discriminators spectrally normalize square convs; fresh u, v cannot tell dim."""
    torch.manual_seed(2)
    legacy = torch.nn.utils.spectral_norm(torch.nn.Conv1d(4, 4, 3)).eval()
    torch.save({"d": legacy.state_dict()}, tmp_path / "d.pt")
    legacy(torch.randn(1, 4, 5))  # in eval mode the hook computes W / (u^T W v), no power step
    expected = legacy.weight.detach()
    code, _, err = run(capsys, "convert", str(tmp_path / "d.pt"), str(tmp_path / "o.pt"), "--to", "plain")
    assert code == 1 and "--dim weight=DIM" in err
    for dim_arg in ("0", "weight=0", "d/w*=0"):
        code, _, err = run(capsys, "convert", str(tmp_path / "d.pt"), str(tmp_path / "o.pt"), "--to", "plain",
                           "--dim", dim_arg, "--overwrite")  # fmt: skip
        assert code == 0, (dim_arg, err)
        plain = torch.load(tmp_path / "o.pt", weights_only=True)["d"]["weight"]
        torch.testing.assert_close(plain, expected)
    code, _, err = run(capsys, "convert", str(tmp_path / "d.pt"), str(tmp_path / "o2.pt"), "--to", "plain", "--dim", "conv*=0")
    assert code == 1 and "matches no normalized tensor" in err
