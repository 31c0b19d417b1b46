"""The fast paths: faster training steps that agree with torch's to rounding, opt-in.

- :mod:`.switch`: ``paranorm.fast_paths()`` / ``set_fast_paths``, read at every forward;
- :mod:`.fused`: spectral norm's W / sigma with a two-pass backward;
- :mod:`.scaled`: weight norm and spectral norm as a scale on a layer's activations, no
  normalized weight at all;
- :mod:`.once`: ``paranorm.normalize_once()``, one normalized weight per training step.

The normalizations ask :mod:`.fused` whether it applies; :mod:`.scaled` asks a normalization
for its :class:`paranorm._normalization.ScaleForm`. Neither reads a parametrization's state.
"""

from .once import normalize_once as normalize_once
from .switch import fast_paths as fast_paths
from .switch import fast_paths_enabled as fast_paths_enabled
from .switch import set_fast_paths as set_fast_paths

__all__ = ["fast_paths", "fast_paths_enabled", "normalize_once", "set_fast_paths"]
