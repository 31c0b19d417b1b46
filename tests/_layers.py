"""Hypothesis strategies for small random Linear/Conv/ConvTranspose layers and their inputs."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@st.composite
def layers(draw, *, modes=("zeros", "circular", "reflect", "replicate"), max_entries=900):
    """(module in float64, input_shape): a small layer that torch accepts, with an input small
    enough for the dense oracle."""
    kind = draw(st.sampled_from(["linear", "conv", "conv", "conv", "transposed"]))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if kind == "linear":
        m = nn.Linear(draw(st.integers(1, 12)), draw(st.integers(1, 12)), bias=draw(st.booleans()))
        return m.double(), (m.in_features,)
    spatial = draw(st.sampled_from([1, 1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kernel = draw(st.integers(1, 4 if spatial < 3 else 2))
    stride = draw(st.integers(1, 3 if spatial < 3 else 2))
    dilation = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    sizes = tuple(draw(st.integers(3, 9 if spatial == 1 else 6 if spatial == 2 else 3)) for _ in range(spatial))
    if kind == "transposed":
        out_pad = draw(st.integers(0, max(stride, dilation) - 1))
        m = CONV_T[spatial](
            c_in, c_out, kernel, stride=stride, padding=pad, output_padding=out_pad,
            groups=groups, dilation=dilation, bias=draw(st.booleans()),
        )
    else:
        mode = draw(st.sampled_from(modes))
        m = CONV[spatial](
            c_in, c_out, kernel, stride=stride, padding=pad, groups=groups, dilation=dilation,
            padding_mode=mode, bias=draw(st.booleans()),
        )
    shape = (c_in, *sizes)
    # Keep the dense oracle small; torch itself must accept the input.
    try:
        out = m(torch.zeros(1, *shape))
    except RuntimeError:
        return draw(st.nothing())
    if math.prod(shape) * out.numel() > max_entries * 20 or out.numel() == 0:
        return draw(st.nothing())
    return m.double(), shape


@st.composite
def layers_and_dims(draw, *, allow_minus_one=True):
    """(layer, dim): a tiny Linear/Conv1-3d/ConvTranspose1-2d and a dim (None or an axis).

    ``allow_minus_one=False`` leaves out -1, which weight_norm refuses as ambiguous (torch reads
    it as None).
    """
    kind = draw(st.sampled_from(["linear", "conv1d", "conv2d", "conv3d", "convtr1d", "convtr2d"]))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if kind == "linear":
        layer = nn.Linear(c_in, c_out)
    else:
        spatial = int(kind[-2])
        k = tuple(draw(st.integers(1, 3)) for _ in range(spatial))
        layer = (CONV_T if kind.startswith("convtr") else CONV)[spatial](c_in, c_out, k)
    ndim = layer.weight.ndim
    axes = st.integers(-ndim, ndim - 1)
    if not allow_minus_one:
        axes = axes.filter(lambda d: d != -1)
    return layer, draw(st.one_of(st.none(), axes))
