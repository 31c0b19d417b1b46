"""paranorm on the layer layouts and checkpoint files of vocoders that need torchaudio.

BigVGAN and vocos cannot be installed beside the pinned torch (they require torchaudio), so
each is reproduced here in plain torch: the same module tree, the same normalizations (torch's
LEGACY weight_norm/spectral_norm hooks, as those packages call them) and so the same state-dict
keys, with tiny channel counts. For each: the normalizations paranorm lists are those torch
registered; fold is bit-exact and equal to torch's own removal; ``paranorm convert`` on the
training files they write keeps every other entry and round-trips bit for bit; ``paranorm
inspect`` bounds lie above the dense operator's sigma; data_dependent_init says what it could
not set. (descript-audio-codec's ``{"state_dict", "metadata"}`` file is covered by
tests/checkpoint/test_training_checkpoints.py, and its layers by transformers' DacModel in
test_transformers_vocoders.py.)
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paranorm as pn
from models import normalize
from paranorm.checkpoint import detect
from paranorm.cli import main
from real._checks import (
    channel_stats,
    check_report,
    check_standardized,
    dense_sigma,
    torch_norms,
    torch_removed,
)

# BigVGAN's and vocos's discriminators call torch.stft without a window, as their sources do.
pytestmark = pytest.mark.filterwarnings("ignore:A window was not provided:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny layers gain nothing from threads, and two pytest workers each spinning torch's
    threads on a shared 2-core machine run ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ----------------------------------------------------------------------------- BigVGAN


def _kaiser_sinc(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """BigVGAN's kaiser_sinc_filter1d (alias_free_activation/torch/filter.py): a Kaiser-windowed
    sinc low-pass, (1, 1, kernel_size)."""
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False)
    time = torch.arange(-half, half) + 0.5 if kernel_size % 2 == 0 else torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (taps / taps.sum()).view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """BigVGAN's alias_free_activation/torch/resample.py UpSample1d (ratio 2, 12 taps): a
    ``filter`` buffer in the state dict."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio, self.pad = ratio, kernel_size // ratio - 1
        self.pad_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.pad_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", _kaiser_sinc(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)
        return x[..., self.pad_left : -self.pad_right]


class LowPassFilter1d(nn.Module):
    """BigVGAN's LowPassFilter1d (stride 2, 12 taps, replicate padding)."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.stride, self.pad_left, self.pad_right = ratio, kernel_size // 2 - 1, kernel_size // 2
        self.register_buffer("filter", _kaiser_sinc(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(channels, -1, -1), stride=self.stride, groups=channels)


class DownSample1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Snake(nn.Module):
    """BigVGAN's activations.Snake (alpha_logscale=False): x + 1/alpha sin^2(alpha x), one
    learnable alpha per channel (Ziyin et al. 2020, arXiv 2006.08195)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + 1.0 / (alpha + 1e-9) * torch.sin(x * alpha).pow(2)


class SnakeBeta(nn.Module):
    """BigVGAN's activations.SnakeBeta: x + 1/beta sin^2(alpha x), learnable alpha and beta."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha.unsqueeze(0).unsqueeze(-1), self.beta.unsqueeze(0).unsqueeze(-1)
        return x + 1.0 / (beta + 1e-9) * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """BigVGAN's anti-aliased activation (alias_free_activation/torch/act.py): upsample 2x, act,
    low-pass and downsample 2x."""

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.act, self.upsample, self.downsample = activation, UpSample1d(), DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """BigVGAN's bigvgan.py AMPBlock1: per dilation, x + c2(a2(c1(a1(x)))), legacy weight norm."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], activation: str, impl: str) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            normalize(nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_padding(kernel, d)), "weight_norm", impl)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            normalize(nn.Conv1d(channels, channels, kernel, 1, padding=_padding(kernel)), "weight_norm", impl)
            for _ in dilations
        )
        act = Snake if activation == "snake" else SnakeBeta
        self.activations = nn.ModuleList(Activation1d(act(channels)) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts1, acts2 = self.activations[::2], self.activations[1::2]
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, acts1, acts2, strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x


class BigVGAN(nn.Module):
    """NVIDIA/BigVGAN's bigvgan.py BigVGAN (v2 config: snakebeta, ``use_bias_at_final=False``,
    ``use_tanh_at_final=False``), tiny: mel (B, 8, T) -> waveform (B, 1, 4T). BigVGAN's
    ``init_weights`` after weight_norm writes to the computed ``weight``, which the next forward
    overwrites, so it is left out."""

    def __init__(self, impl: str = "legacy", activation: str = "snakebeta", rates: tuple[int, ...] = (2, 2),
                 channels: int = 16, kernels: tuple[int, ...] = (3,), dilations: tuple[int, ...] = (1, 3, 5)) -> None:  # fmt: skip
        super().__init__()
        self.conv_pre = normalize(nn.Conv1d(8, channels, 7, 1, padding=3), "weight_norm", impl)
        self.ups = nn.ModuleList(  # kernel 2u, stride u, padding (k - u) // 2
            nn.ModuleList([normalize(nn.ConvTranspose1d(channels // 2**i, channels // 2 ** (i + 1), 2 * u, u, padding=u // 2), "weight_norm", impl)])
            for i, u in enumerate(rates)
        )
        self.resblocks = nn.ModuleList(
            AMPBlock1(channels // 2 ** (i + 1), k, dilations, activation, impl) for i in range(len(rates)) for k in kernels
        )
        self.num_kernels = len(kernels)
        last = channels // 2 ** len(rates)
        self.activation_post = Activation1d(Snake(last) if activation == "snake" else SnakeBeta(last))
        self.conv_post = normalize(nn.Conv1d(last, 1, 7, 1, padding=3, bias=False), "weight_norm", impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, ups in enumerate(self.ups):
            for up in ups:
                x = up(x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.clamp(self.conv_post(self.activation_post(x)), min=-1.0, max=1.0)


class DiscriminatorP(nn.Module):
    """BigVGAN's discriminators.py DiscriminatorP with ``use_spectral_norm=True`` (legacy
    spectral_norm), ``discriminator_channel_mult`` 1/16: 2, 8, 32, 64, 64 channels."""

    def __init__(self, period: int, impl: str = "legacy", mult: float = 1 / 16) -> None:
        super().__init__()
        self.period = period
        chans = [1, *(int(c * mult) for c in (32, 128, 512, 1024, 1024))]
        self.convs = nn.ModuleList(
            normalize(nn.Conv2d(cin, cout, (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)), "spectral_norm", impl)
            for i, (cin, cout) in enumerate(itertools.pairwise(chans))
        )
        self.conv_post = normalize(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)), "spectral_norm", impl)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
        x = x.view(b, c, -1, self.period)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class DiscriminatorR(nn.Module):
    """BigVGAN's DiscriminatorR with ``use_spectral_norm=True``: a magnitude STFT, then square
    32 -> 32 Conv2d layers (here ``mrd_channel_mult`` 1/4: 8 -> 8), whose spectral-norm dim the
    shapes cannot tell."""

    def __init__(self, resolution: tuple[int, int, int], impl: str = "legacy", mult: float = 1 / 4) -> None:
        super().__init__()
        self.resolution = resolution
        sn, c = "spectral_norm", int(32 * mult)
        self.convs = nn.ModuleList([
            normalize(nn.Conv2d(1, c, (3, 9), padding=(1, 4)), sn, impl),
            *(normalize(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4)), sn, impl) for _ in range(3)),
            normalize(nn.Conv2d(c, c, (3, 3), padding=(1, 1)), sn, impl),
        ])
        self.conv_post = normalize(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)), sn, impl)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        n_fft, hop, win = self.resolution
        x = F.pad(x, ((n_fft - hop) // 2, (n_fft - hop) // 2), mode="reflect").squeeze(1)
        x = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, center=False, return_complex=True)
        return torch.norm(torch.view_as_real(x), p=2, dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.spectrogram(x).unsqueeze(1)
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, impl: str = "legacy", periods: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, impl) for p in periods)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> list[torch.Tensor]:
        return [d(w)[0] for d in self.discriminators for w in (y, y_hat)]


class MultiResolutionDiscriminator(nn.Module):
    RESOLUTIONS = ((32, 8, 32), (64, 16, 64), (16, 4, 16))

    def __init__(self, impl: str = "legacy") -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorR(r, impl) for r in self.RESOLUTIONS)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> list[torch.Tensor]:
        return [d(w)[0] for d in self.discriminators for w in (y, y_hat)]


def _seeded(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MEL = _seeded(1, 2, 8, 8)  # BigVGAN's input: (batch, mels, frames); the waveform is 4x longer
WAVE = _seeded(2, 2, 1, 64)


def bigvgan_files(tmp_path, steps: int = 10):
    """g_00000010 and do_00000010 as BigVGAN's train.py writes them, after ``steps`` of its
    training loop (D forward, D step, then D forward again for G's loss, G step: the saved u, v
    are the power step on the saved weights)."""
    torch.manual_seed(0)
    generator, mpd, mrd = BigVGAN(), MultiPeriodDiscriminator(), MultiResolutionDiscriminator()
    optim_g = torch.optim.AdamW(generator.parameters(), 2e-4, betas=(0.8, 0.99))
    optim_d = torch.optim.AdamW([*mpd.parameters(), *mrd.parameters()], 2e-4, betas=(0.8, 0.99))
    for _ in range(steps):
        fake = generator(MEL)
        optim_d.zero_grad()
        loss_d = sum(((1 - s) ** 2).mean() for s in mpd(WAVE, fake.detach())[::2] + mrd(WAVE, fake.detach())[::2])
        loss_d.backward()
        optim_d.step()
        optim_g.zero_grad()
        loss_g = sum(((1 - s) ** 2).mean() for s in mpd(WAVE, fake)[1::2] + mrd(WAVE, fake)[1::2])
        loss_g.backward()
        optim_g.step()
    name = f"{steps:08d}"
    torch.save({"generator": generator.state_dict()}, tmp_path / f"g_{name}")
    do = {"mpd": mpd.state_dict(), "mrd": mrd.state_dict(), "optim_g": optim_g.state_dict(),
          "optim_d": optim_d.state_dict(), "steps": steps, "epoch": 0}  # fmt: skip
    torch.save(do, tmp_path / f"do_{name}")
    with torch.no_grad():  # eval: legacy hooks recompute each weight outside autograd (deepcopy-able)
        generator.eval()(MEL), mpd.eval()(WAVE, WAVE), mrd.eval()(WAVE, WAVE)
    return generator, mpd, mrd


# ----------------------------------------------------------------------------- vocos


class VocosDiscriminatorP(nn.Module):
    """gemelo-ai/vocos's vocos/discriminators.py DiscriminatorP (legacy weight norm, a
    conditioning Embedding), channels 32, 128, 512, 1024, 1024 scaled by 1/16."""

    def __init__(self, period: int, impl: str = "legacy", num_embeddings: int = 4) -> None:
        super().__init__()
        self.period = period
        chans = (1, 2, 8, 32, 64, 64)
        self.convs = nn.ModuleList(
            normalize(nn.Conv2d(cin, cout, (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)), "weight_norm", impl)
            for i, (cin, cout) in enumerate(itertools.pairwise(chans))
        )
        self.emb = nn.Embedding(num_embeddings, chans[-1])
        nn.init.zeros_(self.emb.weight)
        self.conv_post = normalize(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)), "weight_norm", impl)

    def forward(self, x: torch.Tensor, cond_embedding_id: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), "reflect")
        x = x.view(b, c, -1, self.period)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        h = (self.emb(cond_embedding_id).view(1, -1, 1, 1) * x).sum(dim=1, keepdim=True)
        return torch.flatten(self.conv_post(x) + h, 1, -1)


class VocosDiscriminatorR(nn.Module):
    """vocos's DiscriminatorR: a rectangular-window magnitude STFT, then strided Conv2d layers
    with legacy weight norm (channels 64 -> 8)."""

    def __init__(self, resolution: tuple[int, int, int], impl: str = "legacy", channels: int = 8) -> None:
        super().__init__()
        self.resolution = resolution
        wn = "weight_norm"
        self.convs = nn.ModuleList([
            normalize(nn.Conv2d(1, channels, (7, 5), (2, 2), padding=(3, 2)), wn, impl),
            normalize(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1)), wn, impl),
            normalize(nn.Conv2d(channels, channels, (5, 3), (2, 2), padding=(2, 1)), wn, impl),
            normalize(nn.Conv2d(channels, channels, 3, (2, 1), padding=1), wn, impl),
            normalize(nn.Conv2d(channels, channels, 3, (2, 2), padding=1), wn, impl),
        ])
        self.conv_post = normalize(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)), wn, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_fft, hop, win = self.resolution
        x = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window=None, center=True,
                       return_complex=True).abs().unsqueeze(1)  # fmt: skip
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
        return torch.flatten(self.conv_post(x), 1, -1)


class VocosDiscriminators(nn.Module):
    """The discriminator half of vocos's experiment.py VocosExp: ``multiperioddisc`` and
    ``multiresddisc`` (its keys in the Lightning checkpoint's state_dict), on waveforms (B, T)."""

    def __init__(self, impl: str = "legacy") -> None:
        super().__init__()
        self.multiperioddisc = nn.Module()
        self.multiperioddisc.discriminators = nn.ModuleList(VocosDiscriminatorP(p, impl) for p in (2, 3))
        self.multiresddisc = nn.Module()
        self.multiresddisc.discriminators = nn.ModuleList(
            VocosDiscriminatorR(r, impl) for r in ((64, 16, 64), (32, 8, 32))
        )

    def forward(self, y: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:
        mpd = [d(y, bandwidth_id) for d in self.multiperioddisc.discriminators]
        mrd = [d(y) for d in self.multiresddisc.discriminators]
        return torch.cat(mpd + mrd, dim=1)


VOCOS_WAVE = _seeded(3, 2, 96)
BANDWIDTH = torch.tensor(1)


# ----------------------------------------------------------------------------- the checks

#: Each fixture model, built fresh (seeded, eval), its example input and its output tensor.
MODELS = {
    "bigvgan.generator": (lambda impl="legacy": BigVGAN(impl), lambda m: m(MEL)),
    "bigvgan.mpd": (lambda impl="legacy": MultiPeriodDiscriminator(impl), lambda m: torch.cat(m(WAVE, -WAVE), 1)),
    "bigvgan.mrd": (lambda impl="legacy": MultiResolutionDiscriminator(impl), lambda m: torch.cat(m(WAVE, -WAVE), 1)),
    "vocos": (lambda impl="legacy": VocosDiscriminators(impl), lambda m: m(VOCOS_WAVE, BANDWIDTH)),
}
#: (kind, layer type, dim) -> how many, counted from the source files reproduced.
EXPECTED = {
    # conv_pre + 2 stages x (3 convs1 + 3 convs2) + conv_post; 2 upsamplers (torch's default dim=0).
    "bigvgan.generator": {("weight_norm", "Conv1d", 0): 14, ("weight_norm", "ConvTranspose1d", 0): 2},
    "bigvgan.mpd": {("spectral_norm", "Conv2d", 0): 2 * 6},  # 2 periods x (5 convs + conv_post)
    "bigvgan.mrd": {("spectral_norm", "Conv2d", 0): 3 * 6},  # 3 resolutions x (5 convs + conv_post)
    "vocos": {("weight_norm", "Conv2d", 0): 2 * 6 + 2 * 6},
}
NAMES = list(MODELS)


def _build(name: str, impl: str = "legacy") -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0](impl).eval()


def _output(name: str, model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return MODELS[name][1](model)


def _dims_the_shapes_allow(kind: str, shape: torch.Size, dim: int) -> tuple[int, ...]:
    """Legacy spectral norm stores u of shape[dim] entries, and weight norm g of shape[dim] at
    axis dim and 1 elsewhere: every axis that gives the same sizes fits (both axes of a square
    conv; axes 0 and 3 of a conv_post's (1, C, 3, 1) weight)."""
    if kind == "spectral_norm":
        return tuple(d for d, n in enumerate(shape) if n == shape[dim])

    def g_shape(d: int) -> tuple[int, ...]:
        return tuple(n if i == d else 1 for i, n in enumerate(shape))

    return tuple(d for d in range(len(shape)) if g_shape(d) == g_shape(dim))


@pytest.mark.parametrize("name", NAMES)
def test_normalizations_are_the_ones_torch_registered(name):
    model = _build(name)
    registered = torch_norms(model)
    assert Counter(registered.values()) == EXPECTED[name]
    infos = pn.normalizations(model)
    assert {i.path: (i.kind, type(model.get_submodule(i.path)).__name__, i.dim) for i in infos} == registered
    assert {(i.name, i.implementation) for i in infos} == {("weight", "torch-legacy")}
    entries = {e.name: e for e in detect(model.state_dict()) if e.kind is not None}
    assert {n: (e.layout, e.kind) for n, e in entries.items()} == {
        f"{path}.weight": ("legacy", kind) for path, (kind, _, _) in registered.items()
    }
    for path, (kind, _, dim) in registered.items():
        entry = entries[f"{path}.weight"]
        fits = _dims_the_shapes_allow(kind, model.get_submodule(path).weight.shape, dim)
        assert entry.dim_candidates == fits, entry
        assert entry.dim == (dim if len(fits) == 1 else None), entry


@pytest.mark.parametrize("name", NAMES)
def test_fold_is_bit_exact_and_equals_torchs_removal(name):
    model = _build(name)
    before = _output(name, model)  # eval: the legacy spectral hook computes W / (u^T W v)
    by_torch = torch_removed(model)
    folded = pn.fold(copy.deepcopy(model))
    assert pn.normalizations(folded) == [] and torch_norms(folded) == {}
    assert torch.equal(_output(name, folded), before)
    assert torch.equal(_output(name, by_torch), before)
    torch_sd, folded_sd = by_torch.state_dict(), folded.state_dict()
    assert list(folded_sd) == list(torch_sd)
    assert all(torch.equal(folded_sd[k], torch_sd[k]) for k in torch_sd)


def _cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _equal_state(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _equal_optimizer(a: dict, b: dict) -> bool:
    return a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys() and all(
        a["state"][i].keys() == b["state"][i].keys() and all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])
        for i in a["state"]
    )  # fmt: skip


@pytest.fixture(scope="module")
def bigvgan(tmp_path_factory):
    """BigVGAN's training files after 10 steps, and the models that wrote them (eval)."""
    tmp = tmp_path_factory.mktemp("bigvgan")
    return tmp, *bigvgan_files(tmp)


def test_bigvgan_files_convert_to_parametrizations_and_back_bit_exactly(bigvgan, tmp_path, capsys):
    src, generator, mpd, mrd = bigvgan
    models = {"generator": generator, "mpd": mpd, "mrd": mrd}
    names = {"generator": "bigvgan.generator", "mpd": "bigvgan.mpd", "mrd": "bigvgan.mrd"}
    for file, keys in (("g_00000010", ["generator"]), ("do_00000010", ["mpd", "mrd"])):
        code, out, err = _cli(capsys, "convert", src / file, tmp_path / f"{file}.param", "--to", "parametrizations", "--json")
        assert code == 0, err
        assert json.loads(out)["state_dicts"] == keys
        # Trained u, v single out the square convs' dim: no --dim needed.
        code, _, err = _cli(capsys, "convert", tmp_path / f"{file}.param", tmp_path / file, "--to", "legacy")
        assert code == 0, err
        old = torch.load(src / file, weights_only=True)
        param = torch.load(tmp_path / f"{file}.param", weights_only=True)
        back = torch.load(tmp_path / file, weights_only=True)
        assert set(back) == set(param) == set(old)
        for key in keys:
            assert _equal_state(back[key], old[key]), key
            # The parametrizations layout loads (strict) into torch's parametrized twin.
            twin = _build(names[key], "parametrizations")
            twin.load_state_dict(param[key], strict=True)
            torch.testing.assert_close(_output(names[key], twin), _output(names[key], models[key]), rtol=0, atol=0)
        for out_file in (param, back):
            for key in set(old) - set(keys):  # optim_g, optim_d, steps, epoch
                if key.startswith("optim"):
                    assert _equal_optimizer(out_file[key], old[key]), key
                else:
                    assert out_file[key] == old[key], key
    assert back["steps"] == 10 and back["epoch"] == 0


def test_bigvgan_files_to_plain_equal_the_folded_weights(bigvgan, tmp_path, capsys):
    src, generator, mpd, mrd = bigvgan
    for file, models in (("g_00000010", {"generator": generator}), ("do_00000010", {"mpd": mpd, "mrd": mrd})):
        code, _, err = _cli(capsys, "convert", src / file, tmp_path / file, "--to", "plain")
        assert code == 0, err
        plain = torch.load(tmp_path / file, weights_only=True)
        for key, model in models.items():
            folded = pn.fold(copy.deepcopy(model)).state_dict()
            assert _equal_state(plain[key], folded), key


def test_key_converts_only_that_state_dict(bigvgan, tmp_path, capsys):
    src = bigvgan[0]
    code, out, err = _cli(capsys, "convert", src / "do_00000010", tmp_path / "do", "--to", "parametrizations",
                          "--key", "mpd", "--json")  # fmt: skip
    assert code == 0, err
    assert {row["tensor"] for row in json.loads(out)["changed"]} == {f"{p}.weight" for p in torch_norms(bigvgan[2])}
    old = torch.load(src / "do_00000010", weights_only=True)
    new = torch.load(tmp_path / "do", weights_only=True)
    assert _equal_state(new["mrd"], old["mrd"])  # untouched
    assert all(".parametrizations.weight." in k for k in new["mpd"] if "weight" in k)
    twin = _build("bigvgan.mpd", "parametrizations")
    twin.load_state_dict(new["mpd"], strict=True)


def test_a_fresh_discriminators_square_convs_need_dim(tmp_path, capsys):
    """Before any training forward, legacy spectral norm's u and v are random: the shapes of a
    square conv allow dim 0 and dim 1, and nothing else tells them apart."""
    model = _build("bigvgan.mrd")
    torch.save({"mrd": model.state_dict(), "steps": 0}, tmp_path / "do_00000000")
    code, _, err = _cli(capsys, "convert", tmp_path / "do_00000000", tmp_path / "plain", "--to", "plain")
    assert code == 1 and "ambiguous" in err and "--dim" in err
    assert not (tmp_path / "plain").exists()
    code, _, err = _cli(capsys, "convert", tmp_path / "do_00000000", tmp_path / "plain", "--to", "plain", "--dim", "0")
    assert code == 0, err
    _output("bigvgan.mrd", model)  # eval: the hooks compute W / (u^T W v) without a power step
    folded = pn.fold(copy.deepcopy(model)).state_dict()
    assert _equal_state(torch.load(tmp_path / "plain", weights_only=True)["mrd"], folded)


@pytest.mark.slow
def test_inspect_mrd_bounds_lie_above_the_dense_operator(bigvgan, capsys):
    src, _generator, _mpd, mrd = bigvgan
    code, out, err = _cli(capsys, "inspect", src / "do_00000010", "--key", "mrd", "--json", "--methods", "reshape,bound")
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    assert {n for n, layer in layers.items() if layer["normalization"]} == {f"{p}.weight" for p in torch_norms(mrd)}
    checked = 0
    for name, layer in layers.items():
        bound, reshape = layer["certified_bound"], layer["estimates"]["reshape"]["value"]
        if bound is None or reshape is None:
            continue
        assert bound >= reshape * (1 - 1e-4), layer
        # The state-dict bound holds at any input size with zero padding: compare with the
        # dense operator of the layer (its effective weight) at a small one.
        conv = mrd.get_submodule(name.removesuffix(".weight"))
        sigma = dense_sigma(conv, (conv.in_channels, 5, 12))
        assert bound >= sigma * (1 - 1e-4), (name, bound, sigma)
        checked += 1
    assert checked == len(torch_norms(mrd))


@pytest.mark.slow
def test_lipschitz_report_of_one_resolution_bounds_the_dense_operator():
    torch.manual_seed(0)
    model = DiscriminatorR((16, 4, 16)).eval()
    report = pn.lipschitz_report(model, (WAVE[:1, :, :32],))
    assert {layer.name for layer in report.layers if layer.normalization} == set(torch_norms(model))
    check_report(report, model)


def test_data_dependent_init_of_the_bigvgan_generator():
    model = _build("bigvgan.generator")
    batch = _seeded(4, 16, 8, 8)
    summaries = pn.data_dependent_init(model, batch)
    registered = torch_norms(model)
    assert sorted(s.path for s in summaries) == sorted(registered)
    status = {s.path: s for s in summaries}
    ups = {p for p, (_, layer, _) in registered.items() if layer == "ConvTranspose1d"}
    assert ups == {"ups.0.0", "ups.1.0"}
    for path in ups:  # torch's default dim=0 on a ConvTranspose scales its input channels
        assert status[path].status == "partial", str(status[path])
        assert "weight norm dim=0 does not index the output units" in status[path].detail
    post = status["conv_post"]  # BigVGAN v2: use_bias_at_final=False
    assert post.status == "partial" and post.detail == "no bias: the mean is left as it is", str(post)
    initialized = [p for p in registered if p not in ups and p != "conv_post"]
    assert all(status[p].status == "initialized" for p in initialized), [str(s) for s in summaries]
    stats = channel_stats(model, [*registered], lambda: model(batch))
    check_standardized(stats, initialized, sorted(ups))
    _, std = stats["conv_post"]  # scaled to std 1, its mean left where the data put it
    assert abs(std.item() - 1) < 1e-4


def test_vocos_lightning_checkpoint_converts_and_keeps_every_other_entry(tmp_path, capsys):
    """vocos trains with Lightning: VocosExp's state_dict (``multiperioddisc.``,
    ``multiresddisc.``) inside a .ckpt beside optimizer states and hyper-parameters."""
    model = _build("vocos").train()
    optim = torch.optim.AdamW(model.parameters(), 2e-4)
    model(VOCOS_WAVE, BANDWIDTH).square().mean().backward()
    optim.step()
    model.eval()
    _output("vocos", model)  # recompute each weight outside autograd, so the model can be deepcopied
    ckpt = {"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.1.0", "state_dict": model.state_dict(),
            "optimizer_states": [optim.state_dict()], "lr_schedulers": [], "hyper_parameters": {"sample_rate": 24000}}  # fmt: skip
    torch.save(ckpt, tmp_path / "last.ckpt")
    for to in ("parametrizations", "plain"):
        code, _, err = _cli(capsys, "convert", tmp_path / "last.ckpt", tmp_path / f"{to}.ckpt", "--to", to)
        assert code == 0, err
    code, _, err = _cli(capsys, "convert", tmp_path / "parametrizations.ckpt", tmp_path / "back.ckpt", "--to", "legacy")
    assert code == 0, err
    param, plain, back = (torch.load(tmp_path / f"{n}.ckpt", weights_only=True) for n in ("parametrizations", "plain", "back"))
    assert _equal_state(back["state_dict"], ckpt["state_dict"])
    assert _equal_state(plain["state_dict"], pn.fold(copy.deepcopy(model)).state_dict())
    for out in (param, plain, back):
        assert {k: v for k, v in out.items() if k not in ("state_dict", "optimizer_states")} == {
            k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer_states")
        }
        assert _equal_optimizer(out["optimizer_states"][0], ckpt["optimizer_states"][0])
    twin = _build("vocos", "parametrizations")
    twin.load_state_dict(param["state_dict"], strict=True)
    assert torch.equal(_output("vocos", twin), _output("vocos", model))
