"""Small real architectures with weight/spectral norm, for tests (importable: ``from models import ...``).

Written from the published descriptions, with small channel counts so tests are fast:

- HiFi-GAN (Kong et al. 2020, arXiv 2010.05646): generator = weight-normed conv_pre, weight-normed
  ConvTranspose1d upsamplers each followed by multi-receptive-field fusion (ResBlock1: dilated
  convs 1, 3, 5 each followed by a dilation-1 conv, leaky ReLU 0.1, residual), conv_post, tanh.
  Multi-period discriminator: the waveform reshaped to (T/p, p) for periods 2, 3, 5, 7, 11,
  Conv2d stacks with (k, 1) kernels, weight norm. Multi-scale discriminator: three Conv1d
  stacks on raw, 2x and 4x average-pooled audio, grouped strided convs; the first scale uses
  spectral norm, the others weight norm.
- EnCodec's SEANet (Defossez et al. 2022, arXiv 2210.13438): encoder = conv, then per ratio a
  residual unit (ELU, dilated k=3 conv to dim/2, ELU, 1x1 conv back; identity skip) and a
  strided conv with kernel 2*ratio doubling channels; ELU and a final conv. Decoder mirrors it
  with ConvTranspose1d. Weight norm through Norm layers whose keys are ``conv.conv.weight_*``.
- Wav2Vec2's positional conv embedding (Baevski et al. 2020, arXiv 2006.11477): a grouped
  Conv1d over time with kernel K and padding K/2, weight norm with dim=2 (one g per kernel
  tap), the extra frame dropped for even K, GELU.

``impl`` picks who normalizes: "legacy" (torch.nn.utils.weight_norm/spectral_norm),
"parametrizations" (torch.nn.utils.parametrizations), "paranorm", or "plain" (no norm): the
same architecture and the same state_dict key prefixes, so checkpoints move between them.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as P

import paranorm as pn

IMPLS = ("legacy", "parametrizations", "paranorm", "plain")
#: HiFi-GAN's leaky ReLU slope, written as a literal 0.1 in forward() so TorchScript compiles it.
LRELU_SLOPE = 0.1


def normalize(module: nn.Module, kind: str, impl: str, **kwargs) -> nn.Module:
    """Apply ``kind`` ('weight_norm' or 'spectral_norm') to ``module`` as ``impl`` does it."""
    if impl == "plain":
        return module
    if impl == "legacy":
        fn = nn.utils.weight_norm if kind == "weight_norm" else nn.utils.spectral_norm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return fn(module, **kwargs)
    if impl == "parametrizations":
        return (P.weight_norm if kind == "weight_norm" else P.spectral_norm)(module, **kwargs)
    if impl == "paranorm":
        return (pn.weight_norm if kind == "weight_norm" else pn.spectral_norm)(module, **kwargs)
    raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")


def padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


# ----------------------------------------------------------------------------- HiFi-GAN


class ResBlock1(nn.Module):
    """HiFi-GAN's ResBlock1: x + conv2(lrelu(conv1(lrelu(x)))) for dilations 1, 3, 5."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], impl: str) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            normalize(nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=padding(kernel, d)), "weight_norm", impl)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            normalize(nn.Conv1d(channels, channels, kernel, 1, padding=padding(kernel)), "weight_norm", impl)
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            y = c1(F.leaky_relu(x, 0.1))
            x = x + c2(F.leaky_relu(y, 0.1))
        return x


class Generator(nn.Module):
    """HiFi-GAN generator: mel (B, n_mels, T) -> waveform (B, 1, T * prod(rates))."""

    def __init__(
        self,
        impl: str,
        n_mels: int = 6,
        channels: int = 16,
        rates: tuple[int, ...] = (4, 2),
        kernels: tuple[int, ...] = (3, 5),
        dilations: tuple[int, ...] = (1, 3, 5),
    ) -> None:
        super().__init__()
        self.conv_pre = normalize(nn.Conv1d(n_mels, channels, 7, 1, padding=3), "weight_norm", impl)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()  # one ModuleList of len(kernels) blocks per upsampler
        for i, rate in enumerate(rates):
            cin, cout = channels // 2**i, channels // 2 ** (i + 1)
            self.ups.append(
                normalize(nn.ConvTranspose1d(cin, cout, 2 * rate, rate, padding=rate // 2 + rate % 2, output_padding=rate % 2), "weight_norm", impl)
            )
            self.resblocks.append(nn.ModuleList(ResBlock1(cout, k, dilations, impl) for k in kernels))
        self.num_kernels = len(kernels)
        self.conv_post = normalize(nn.Conv1d(channels // 2 ** len(rates), 1, 7, 1, padding=3), "weight_norm", impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for up, blocks in zip(self.ups, self.resblocks, strict=True):
            x = up(F.leaky_relu(x, 0.1))
            xs = torch.zeros_like(x)  # multi-receptive-field fusion: the mean of the blocks
            for block in blocks:
                xs = xs + block(x)
            x = xs / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


class DiscriminatorP(nn.Module):
    """One period of the multi-period discriminator: Conv2d stack with (k, 1) kernels."""

    def __init__(self, period: int, impl: str, kind: str = "weight_norm", channels: tuple[int, ...] = (1, 4, 8, 8)) -> None:
        super().__init__()
        self.period = period
        self.convs = nn.ModuleList(
            normalize(nn.Conv2d(cin, cout, (5, 1), (3, 1), padding=(padding(5), 0)), kind, impl)
            for cin, cout in itertools.pairwise(channels)
        )
        self.conv_post = normalize(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)), kind, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        if t % self.period != 0:
            pad = self.period - t % self.period
            x = F.pad(x, (0, pad), "reflect")
            t = t + pad
        x = x.view(b, c, t // self.period, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x.flatten(1))
        features.append(self.conv_post(x).flatten(1))
        return torch.cat(features, dim=1)


class MultiPeriodDiscriminator(nn.Module):
    """Periods 2, 3, 5, 7, 11; returns every score and feature map, flattened and concatenated."""

    def __init__(self, impl: str, periods: tuple[int, ...] = (2, 3, 5, 7, 11)) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, impl) for p in periods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([d(x) for d in self.discriminators], dim=1)


class DiscriminatorS(nn.Module):
    """One scale of the multi-scale discriminator: grouped, strided Conv1d stack."""

    def __init__(self, impl: str, kind: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            normalize(nn.Conv1d(1, 4, 15, 1, padding=7), kind, impl),
            normalize(nn.Conv1d(4, 8, 9, 4, groups=4, padding=4), kind, impl),
            normalize(nn.Conv1d(8, 8, 9, 2, groups=2, padding=4), kind, impl),
            normalize(nn.Conv1d(8, 8, 5, 1, padding=2), kind, impl),
        ])
        self.conv_post = normalize(nn.Conv1d(8, 1, 3, 1, padding=1), kind, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x.flatten(1))
        features.append(self.conv_post(x).flatten(1))
        return torch.cat(features, dim=1)


class MultiScaleDiscriminator(nn.Module):
    """Three scales: spectral norm on the raw waveform, weight norm on the pooled ones."""

    def __init__(self, impl: str) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [DiscriminatorS(impl, "spectral_norm"), DiscriminatorS(impl, "weight_norm"), DiscriminatorS(impl, "weight_norm")]
        )
        self.meanpool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                x = self.meanpool(x)
            outputs.append(d(x))
        return torch.cat(outputs, dim=1)


# ----------------------------------------------------------------------------- EnCodec SEANet


class NormConv1d(nn.Module):
    """EnCodec's NormConv1d layout: the conv as ``self.conv``, then ``self.norm``."""

    def __init__(self, *args, impl: str, **kwargs) -> None:
        super().__init__()
        self.conv = normalize(nn.Conv1d(*args, **kwargs), "weight_norm", impl)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class NormConvTranspose1d(nn.Module):
    """EnCodec's NormConvTranspose1d layout: the layer as ``self.convtr``, then ``self.norm``."""

    def __init__(self, *args, impl: str, **kwargs) -> None:
        super().__init__()
        self.convtr = normalize(nn.ConvTranspose1d(*args, **kwargs), "weight_norm", impl)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.convtr(x))


def norm_conv(impl: str, *args, transposed: bool = False, **kwargs) -> nn.Module:
    """A weight-normed (transposed) conv in EnCodec's key layout; paranorm's own Norm layers for impl='paranorm'."""
    if impl == "paranorm":
        cls = pn.nn.NormConvTranspose1d if transposed else pn.nn.NormConv1d
        return cls(*args, norm="weight_norm", **kwargs)
    return (NormConvTranspose1d if transposed else NormConv1d)(*args, impl=impl, **kwargs)


class SConv1d(nn.Module):
    """EnCodec's SConv1d: a NormConv1d as ``self.conv`` with 'same'-style reflect padding."""

    def __init__(self, impl: str, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = norm_conv(impl, cin, cout, kernel, stride, dilation=dilation)
        self.pad_total = (kernel - 1) * dilation - (stride - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.pad_total // 2
        return self.conv(F.pad(x, (self.pad_total - right, right), "reflect"))


class SConvTranspose1d(nn.Module):
    """EnCodec's SConvTranspose1d: a NormConvTranspose1d as ``self.convtr``, trimmed to T * stride."""

    def __init__(self, impl: str, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.convtr = norm_conv(impl, cin, cout, kernel, stride, transposed=True)
        self.trim = kernel - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr(x)
        right = self.trim // 2
        return y[..., self.trim - right : y.shape[-1] - right]


class SEANetResnetBlock(nn.Module):
    def __init__(self, impl: str, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // 2
        self.block = nn.Sequential(nn.ELU(), SConv1d(impl, dim, hidden, 3, dilation=dilation), nn.ELU(), SConv1d(impl, hidden, dim, 1))
        self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SEANetEncoder(nn.Module):
    def __init__(self, impl: str, channels: int = 1, dimension: int = 8, n_filters: int = 4, ratios: tuple[int, ...] = (4, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = [SConv1d(impl, channels, n_filters, 7)]
        mult = 1
        for ratio in reversed(ratios):
            layers += [SEANetResnetBlock(impl, mult * n_filters, 1), nn.ELU(),
                       SConv1d(impl, mult * n_filters, mult * n_filters * 2, 2 * ratio, stride=ratio)]
            mult *= 2
        layers += [nn.ELU(), SConv1d(impl, mult * n_filters, dimension, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoder(nn.Module):
    def __init__(self, impl: str, channels: int = 1, dimension: int = 8, n_filters: int = 4, ratios: tuple[int, ...] = (4, 2)) -> None:
        super().__init__()
        mult = 2 ** len(ratios)
        layers: list[nn.Module] = [SConv1d(impl, dimension, mult * n_filters, 7)]
        for ratio in ratios:
            layers += [nn.ELU(), SConvTranspose1d(impl, mult * n_filters, mult * n_filters // 2, 2 * ratio, ratio),
                       SEANetResnetBlock(impl, mult * n_filters // 2, 1)]
            mult //= 2
        layers += [nn.ELU(), SConv1d(impl, n_filters, channels, 7)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ----------------------------------------------------------------------------- Wav2Vec2


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    """x (B, T, hidden) -> GELU(conv(x)) with the extra frame of an even kernel dropped."""

    def __init__(self, impl: str, hidden: int = 8, kernel: int = 8, groups: int = 2) -> None:
        super().__init__()
        self.conv = normalize(nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=groups), "weight_norm", impl, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.remove:
            y = y[:, :, : y.shape[-1] - self.remove]
        return F.gelu(y).transpose(1, 2)


#: name -> (builder(impl), example input shape, uses spectral norm)
MODELS: dict[str, tuple[Callable[[str], nn.Module], tuple[int, ...], bool]] = {
    "hifigan_generator": (Generator, (1, 6, 5), False),
    "multi_period_discriminator": (MultiPeriodDiscriminator, (1, 1, 66), False),
    "multi_scale_discriminator": (MultiScaleDiscriminator, (1, 1, 64), True),
    "seanet_encoder": (SEANetEncoder, (1, 1, 32), False),
    "seanet_decoder": (SEANetDecoder, (1, 8, 4), False),
    "wav2vec2_pos_conv": (Wav2Vec2PositionalConvEmbedding, (1, 10, 8), False),
}


def build(name: str, impl: str, *, seed: int = 0, train_steps: int = 2) -> nn.Module:
    """Model ``name`` normalized by ``impl``, in eval mode; spectral-norm models first run
    ``train_steps`` training forwards so that u, v advance as in real training."""
    builder, shape, spectral = MODELS[name]
    torch.manual_seed(seed)
    model = builder(impl)
    if spectral and impl != "plain":
        model.train()
        with torch.no_grad():
            for _ in range(train_steps):
                model(torch.randn(shape))
    return model.eval()


def example(name: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(MODELS[name][1], generator=torch.Generator().manual_seed(seed))
