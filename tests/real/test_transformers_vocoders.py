"""paranorm on Hugging Face transformers' weight-normed audio models, built from tiny random configs.

SpeechT5 and FastSpeech2-Conformer HiFi-GAN, UnivNet, EnCodec (norm_type="weight_norm"), DAC and
VITS (after their ``apply_weight_norm()``), and Wav2Vec2's positional conv embedding (weight norm
over dim=2). For each: the normalizations paranorm lists are those torch registered; fold is
bit-exact and equal to torch's own removal; the state dict converts to every layout and each
loads (strict) into the matching model with the same output; inspect and lipschitz_report give
bounds above the dense operator's sigma; data_dependent_init standardizes what it initializes.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import paranorm as pn
from paranorm.checkpoint import convert, detect
from paranorm.cli import main
from real._checks import (
    channel_stats,
    check_report,
    check_standardized,
    legacy_twin,
    torch_norms,
    torch_removed,
)

transformers = pytest.importorskip("transformers")


@dataclass(frozen=True)
class Case:
    """A model: ``build()`` (seeded, eval, weight-normed), example inputs for a batch of ``b``,
    its output tensor, and the normalized layers a count of its config predicts."""

    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[torch.Tensor, ...]]
    output: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
    expected: dict[tuple[str, int], int]  # (layer type, dim) -> how many weight norms


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


HIFIGAN = dict(model_in_dim=8, upsample_initial_channel=16, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])  # fmt: skip
# HiFi-GAN: conv_pre + 2 stages x 1 kernel x (2 convs1 + 2 convs2) + conv_post; 2 upsamplers.
HIFIGAN_NORMS = {("Conv1d", 0): 10, ("ConvTranspose1d", 0): 2}


def _built(
    cls: Callable[..., nn.Module], config: Any, apply: Callable[[nn.Module], Any] | None = None
) -> nn.Module:
    torch.manual_seed(0)
    model = cls(config)
    if apply is not None:
        apply(model)
    return model.eval()


CASES = {
    "SpeechT5HifiGan": Case(
        lambda: _built(
            transformers.SpeechT5HifiGan,
            transformers.SpeechT5HifiGanConfig(**HIFIGAN),
            lambda m: m.apply_weight_norm(),
        ),
        lambda b: (_rand(b, 6, 8),),
        lambda m, x: m(*x),
        HIFIGAN_NORMS,
    ),
    "FastSpeech2ConformerHifiGan": Case(
        lambda: _built(
            transformers.FastSpeech2ConformerHifiGan,
            transformers.FastSpeech2ConformerHifiGanConfig(**HIFIGAN),
            lambda m: m.apply_weight_norm(),
        ),
        lambda b: (_rand(b, 6, 8),),
        lambda m, x: m(*x),
        HIFIGAN_NORMS,
    ),
    "UnivNetModel": Case(
        lambda: _built(
            transformers.UnivNetModel,
            transformers.UnivNetConfig(
                model_in_channels=4,
                model_hidden_channels=4,
                num_mel_bins=8,
                resblock_stride_sizes=[2, 2],
                resblock_kernel_sizes=[3, 3],
                resblock_dilation_sizes=[[1, 3], [1, 3]],
                kernel_predictor_num_blocks=1,
                kernel_predictor_hidden_channels=4,
            ),
            lambda m: m.apply_weight_norm(),
        ),
        lambda b: (_rand(b, 6, 8), _rand(b, 6, 4)),
        lambda m, x: m(*x, return_dict=False)[0],
        # conv_pre, conv_post; 2 blocks x (convt_pre + 2 convs); kernel predictor: input_conv,
        # 1 block x 2 convs, kernel_conv, bias_conv per block.
        {("Conv1d", 0): 2 + 2 * 2 + 2 * (1 + 2 + 2), ("ConvTranspose1d", 0): 2},
    ),
    "EncodecModel": Case(
        lambda: _built(
            transformers.EncodecModel,
            transformers.EncodecConfig(
                hidden_size=8,
                num_filters=4,
                upsampling_ratios=[2, 2],
                codebook_size=16,
                codebook_dim=8,
                num_residual_layers=1,
                norm_type="weight_norm",
                num_lstm_layers=1,
                target_bandwidths=[1.5],
                sampling_rate=400,
            ),
        ),
        lambda b: (_rand(b, 1, 32),),
        lambda m, x: m(*x).audio_values,
        # encoder: conv, 2 x (2 residual convs + shortcut conv + strided conv), final conv;
        # decoder: conv, 2 x (ConvTranspose1d upsampler + 2 residual convs + shortcut), final conv.
        {("Conv1d", 0): (1 + 2 * 4 + 1) + (1 + 2 * 3 + 1), ("ConvTranspose1d", 0): 2},
    ),
    "DacModel": Case(
        lambda: _built(
            transformers.DacModel,
            transformers.DacConfig(
                encoder_hidden_size=4,
                downsampling_ratios=[2, 2],
                decoder_hidden_size=8,
                n_codebooks=2,
                codebook_size=16,
                codebook_dim=4,
                hidden_size=8,
            ),
            lambda m: m.apply_weight_norm(),
        ),
        lambda b: (_rand(b, 1, 32),),
        lambda m, x: m(*x).audio_values,
        # 2 quantizers x (in_proj, out_proj); encoder conv1, conv2, 2 blocks x (conv1 + 3 x 2);
        # decoder conv1, conv2, 2 blocks x 3 x 2 and a ConvTranspose1d each.
        {("Conv1d", 0): 2 * 2 + 2 + 2 * 7 + 2 + 2 * 6, ("ConvTranspose1d", 0): 2},
    ),
    "VitsModel": Case(
        lambda: _built(
            transformers.VitsModel,
            transformers.VitsConfig(
                vocab_size=20,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                ffn_dim=8,
                flow_size=8,
                spectrogram_bins=9,
                upsample_initial_channel=8,
                upsample_rates=[2, 2],
                upsample_kernel_sizes=[4, 4],
                resblock_kernel_sizes=[3],
                resblock_dilation_sizes=[[1, 3]],
                prior_encoder_num_flows=1,
                prior_encoder_num_wavenet_layers=1,
                posterior_encoder_num_wavenet_layers=1,
                duration_predictor_num_flows=1,
                duration_predictor_filter_channels=8,
                depth_separable_num_layers=1,
                duration_predictor_flow_bins=2,
                wavenet_dilation_rate=1,
                noise_scale=0.0,
                noise_scale_duration=0.0,
            ),
            lambda m: m.decoder.apply_weight_norm(),
        ),
        lambda b: (torch.randint(0, 20, (b, 5), generator=torch.Generator().manual_seed(b)),),
        lambda m, x: m(*x).waveform,  # noise scales 0: VITS samples nothing
        # decoder: 2 stages x 1 kernel x (2 + 2) resblock convs, 2 upsamplers; WaveNets of the
        # flow and the posterior encoder: one in_layer and one res_skip_layer each, built normed.
        {("Conv1d", 0): 8 + 2 * 2, ("ConvTranspose1d", 0): 2},
    ),
    "Wav2Vec2Model": Case(
        lambda: _built(
            transformers.Wav2Vec2Model,
            transformers.Wav2Vec2Config(
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=8,
                conv_dim=(4, 4),
                conv_stride=(5, 2),
                conv_kernel=(10, 3),
                num_conv_pos_embeddings=4,
                num_conv_pos_embedding_groups=2,
            ),
        ),
        lambda b: (_rand(b, 80),),
        lambda m, x: m(*x).last_hidden_state,
        {("Conv1d", 2): 1},  # the positional conv embedding: one g per kernel tap
    ),
}

NAMES = list(CASES)


def _output(case: Case, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return case.output(model, inputs)


@pytest.mark.parametrize("name", NAMES)
def test_normalizations_are_the_ones_torch_registered(name):
    case = CASES[name]
    model = case.build()
    registered = torch_norms(model)
    assert (
        Counter((kind_type, dim) for _kind, kind_type, dim in registered.values()) == case.expected
    )
    infos = pn.normalizations(model)
    assert {i.path: (i.kind, type(model.get_submodule(i.path)).__name__.removeprefix("Parametrized"), i.dim)
            for i in infos} == registered  # fmt: skip
    assert {(i.name, i.implementation) for i in infos} == {("weight", "torch")}
    entries = [e for e in detect(model.state_dict()) if e.kind is not None]
    assert {e.name: (e.layout, e.kind, e.dim) for e in entries} == {
        f"{path}.weight": ("parametrizations", kind, dim)
        for path, (kind, _, dim) in registered.items()
    }


@pytest.mark.parametrize("name", NAMES)
def test_fold_is_bit_exact_and_equals_torchs_removal(name):
    case = CASES[name]
    model = case.build()
    x = case.inputs(2)
    before = _output(case, model, x)
    by_torch = torch_removed(model)
    folded = pn.fold(copy.deepcopy(model))
    assert pn.normalizations(folded) == []
    assert torch.equal(_output(case, folded, x), before)
    assert torch.equal(_output(case, by_torch, x), before)
    torch_sd, folded_sd = by_torch.state_dict(), folded.state_dict()
    assert list(folded_sd) == list(torch_sd)
    assert all(torch.equal(folded_sd[k], torch_sd[k]) for k in torch_sd)


@pytest.mark.parametrize("name", NAMES)
def test_convert_every_direction_and_load_strict(name):
    case = CASES[name]
    model = case.build()
    x = case.inputs(2)
    before = _output(case, model, x)
    sd = model.state_dict()

    legacy = convert(sd, to="legacy")
    twin = legacy_twin(model)
    assert set(legacy) == set(twin.state_dict())
    twin.load_state_dict(legacy, strict=True)
    assert torch.equal(_output(case, twin, x), before)

    back = convert(legacy, to="parametrizations")
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

    folded_sd = pn.fold(copy.deepcopy(model)).state_dict()
    for source in (sd, legacy):
        plain = convert(source, to="plain")
        assert list(plain) == list(folded_sd) and all(
            torch.equal(plain[k], folded_sd[k]) for k in plain
        )
    plain_model = torch_removed(model)
    plain_model.load_state_dict(plain, strict=True)
    assert torch.equal(_output(case, plain_model, x), before)

    # The legacy state dict of torch's own hooks converts the same way.
    ours = convert(twin.state_dict(), to="parametrizations")
    assert all(torch.equal(ours[k], sd[k]) for k in sd)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_file_through_the_cli(name, tmp_path, capsys):
    """save_pretrained's model.safetensors: inspect --json names each weight norm; convert to
    plain loads into torch's unnormalized model; legacy and back is bit-exact."""
    from safetensors.torch import load_file

    case = CASES[name]
    model = case.build()
    model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    stored = load_file(path)
    assert main(["inspect", str(path), "--json", "--methods", "reshape"]) == 0
    report = json.loads(capsys.readouterr().out)
    normalized = {layer["name"] for layer in report["layers"] if layer["normalization"]}
    assert normalized == {f"{p}.weight" for p in torch_norms(model)}

    assert main(["convert", str(path), str(tmp_path / "legacy.safetensors"), "--to", "legacy"]) == 0
    assert main(["convert", str(tmp_path / "legacy.safetensors"), str(tmp_path / "back.safetensors"),
                 "--to", "parametrizations"]) == 0  # fmt: skip
    back = load_file(tmp_path / "back.safetensors")
    assert set(back) == set(stored) and all(torch.equal(back[k], stored[k]) for k in stored)
    assert main(["convert", str(path), str(tmp_path / "plain.safetensors"), "--to", "plain"]) == 0
    plain_model = torch_removed(model)
    missing, unexpected = plain_model.load_state_dict(
        load_file(tmp_path / "plain.safetensors"), strict=False
    )
    assert unexpected == [] and set(missing) <= _tied(plain_model)
    x = case.inputs(2)
    assert torch.equal(_output(case, plain_model, x), _output(case, model, x))


def _tied(model: nn.Module) -> set[str]:
    """Keys save_pretrained leaves out as duplicates of another (tied weights)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen:
            tied.add(key)
        seen.setdefault(tensor.data_ptr(), key)
    return tied


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SpeechT5HifiGan", "EncodecModel", "Wav2Vec2Model"])
def test_lipschitz_report_bounds_the_dense_operator(name):
    """(Three of the models: the estimators are the same for the others, and slow on 2 cores.)"""
    case = CASES[name]
    model = case.build()
    report = pn.lipschitz_report(model, case.inputs(1))
    normalized = {layer.name for layer in report.layers if layer.normalization}
    assert normalized == set(torch_norms(model))
    check_report(report, model)


@pytest.mark.parametrize("name", NAMES)
def test_data_dependent_init_standardizes_what_it_initializes(name):
    case = CASES[name]
    model = case.build()
    batch = case.inputs(4)
    summaries = pn.data_dependent_init(model, batch)
    registered = torch_norms(model)
    assert {s.path for s in summaries} == set(registered)
    by_status: dict[str, list[str]] = {}
    for s in summaries:
        by_status.setdefault(s.status, []).append(s.path)
    # g is one per output channel only for dim=0 of a Conv (dim 1 of a ConvTranspose): torch's
    # default dim=0 on a ConvTranspose, or Wav2Vec2's dim=2, can only be set partly, and it says so.
    common = {
        p
        for p, (_, layer, dim) in registered.items()
        if dim != (1 if layer.startswith("ConvTranspose") else 0)
    }
    assert common == set(by_status.get("partial", [])), [str(s) for s in summaries]
    for s in summaries:
        if s.path in common:
            assert f"dim={registered[s.path][2]} does not index the output units" in s.detail, str(
                s
            )
    initialized = by_status.get("initialized", [])
    assert set(initialized) | common | set(by_status.get("skipped", [])) == set(registered)
    assert (
        len(initialized) >= len(registered) - len(common) - 2
    )  # VITS' posterior encoder is not run
    stats = channel_stats(model, initialized + sorted(common), lambda: case.output(model, batch))
    check_standardized(stats, initialized, sorted(common))
