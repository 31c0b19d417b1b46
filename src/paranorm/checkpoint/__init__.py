"""Detect and convert the layout of weight-normed and spectrally normed tensors in a state_dict.

Pure functions over state dicts (no module needed), for loaders that rename keys themselves
(Hugging Face, HiFi-GAN and EnCodec checkpoints) and for ``paranorm convert``. The layouts:

- ``legacy``: torch.nn.utils.weight_norm (``<n>_g``, ``<n>_v``) and spectral_norm
  (``<n>_orig``, ``<n>_u``, ``<n>_v``; version 0 stored ``<n>`` instead of ``<n>_v``);
- ``parametrizations``: torch.nn.utils.parametrizations and paranorm
  (``parametrizations.<n>.original0``/``original1``; ``...original``, ``...0._u``, ``...0._v``);
- ``plain``: the effective weight ``<n>``: g v / ||v|| (Salimans & Kingma 2016) or
  W / (u^T W v) (Miyato et al. 2018), computed as torch computes them in eval mode.

``<n>_v`` is the direction in legacy weight norm but the right singular vector in legacy
spectral norm: its siblings (``<n>_g`` or ``<n>_orig``/``<n>_u``) decide.

Example:
    >>> import torch, paranorm as pn
    >>> from paranorm.checkpoint import convert, detect
    >>> legacy = {"weight_g": torch.ones(2, 1), "weight_v": torch.tensor([[3.0, 4.0], [0.0, 2.0]])}
    >>> [(e.name, e.layout, e.kind, e.dim) for e in detect(legacy)]
    [('weight', 'legacy', 'weight_norm', 0)]
    >>> sorted(convert(legacy, to="parametrizations"))
    ['parametrizations.weight.original0', 'parametrizations.weight.original1']
    >>> convert(legacy, to="plain")["weight"]
    tensor([[0.6000, 0.8000],
            [0.0000, 1.0000]])
"""

from .convert import CheckpointWarning as CheckpointWarning
from .convert import convert as convert
from .detect import Entry as Entry
from .detect import detect as detect
from .layouts import LAYOUTS as LAYOUTS

__all__ = ["LAYOUTS", "CheckpointWarning", "Entry", "convert", "detect"]
