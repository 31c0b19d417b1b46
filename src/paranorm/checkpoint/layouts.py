"""The three key layouts of a weight-normed or spectrally normed tensor, as key tables.

=================  ===========================================  ==========================================
layout             weight norm (w = g v / ||v||)                spectral norm (w = W / u^T W v)
=================  ===========================================  ==========================================
legacy             ``<name>_g``, ``<name>_v``                   ``<name>_orig``, ``<name>_u``, ``<name>_v``
parametrizations   ``parametrizations.<name>.original0``/``1``  ``parametrizations.<name>.original``,
                                                                ``...0._u``, ``...0._v``
plain              ``<name>`` (the effective weight)            ``<name>``
=================  ===========================================  ==========================================

Legacy is torch.nn.utils.weight_norm/spectral_norm (forward pre-hooks); parametrizations is
torch.nn.utils.parametrizations and paranorm. A version-0 legacy spectral norm (torch < 1.1)
stored ``<name>_orig``, ``<name>`` (W / sigma) and ``<name>_u`` but no ``<name>_v``. These
tables are read by the load hooks (:mod:`.load_hooks`) and by detection and conversion
(:mod:`.detect`, :mod:`.convert`), so the two always agree.
"""

from __future__ import annotations

from typing import Literal

import torch

from .._normalization import Kind
from .._sigma.matrix import weight_to_matrix

__all__ = [
    "LAYOUTS",
    "Layout",
    "Role",
    "convert_command",
    "legacy_keys",
    "parametrization_keys",
    "solve_version0_v",
]

Layout = Literal["legacy", "parametrizations", "plain"]
LAYOUTS: tuple[Layout, ...] = ("legacy", "parametrizations", "plain")
#: The tensors of a normalized group: weight norm's g and v; spectral norm's unnormalized
#: weight and its power-iteration vectors u and v.
Role = Literal["g", "v", "weight", "u"]


def legacy_keys(kind: Kind, base: str) -> dict[str, str]:
    """Role -> key of a tensor ``base`` (``prefix + name``) in torch's legacy hook layout."""
    if kind == "weight_norm":
        return {"g": f"{base}_g", "v": f"{base}_v"}
    return {"weight": f"{base}_orig", "u": f"{base}_u", "v": f"{base}_v"}


def parametrization_keys(kind: Kind, base: str) -> dict[str, str]:
    """Role -> key of a tensor ``base`` (``prefix + name``) in the parametrizations layout."""
    prefix, _, name = base.rpartition(".")
    root = f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"
    if kind == "weight_norm":
        return {"g": f"{root}.original0", "v": f"{root}.original1"}
    return {"weight": f"{root}.original", "u": f"{root}.0._u", "v": f"{root}.0._v"}


def convert_command(layout: str, extra: str = "") -> str:
    """The shell command a message points to: ``paranorm convert IN OUT --to <layout>``."""
    return f"`paranorm convert CHECKPOINT OUT --to {layout}{extra}`"


@torch.no_grad()
def solve_version0_v(
    weight_orig: torch.Tensor, weight: torch.Tensor, u: torch.Tensor, dim: int
) -> torch.Tensor:
    """The v a version-0 legacy spectral norm implies, as torch's own load hook computes it.

    Version 0 stored W_orig, W = W_orig / sigma and u = normalize(W_orig v). With
    sigma = mean(W_orig / W), solve W_orig x = u by the pseudo-inverse (least squares) and
    rescale so that u^T W_orig v = sigma. Half precision is solved in float32 (pinverse has no
    half kernels) and cast back.
    """
    work = torch.float32 if weight_orig.dtype in (torch.float16, torch.bfloat16) else weight_orig.dtype
    w_orig, w, u_work = weight_orig.to(work), weight.to(work), u.to(work)
    sigma = (w_orig / w).mean()
    matrix = weight_to_matrix(w_orig, dim)
    v = torch.linalg.multi_dot([matrix.t().mm(matrix).pinverse(), matrix.t(), u_work.unsqueeze(1)]).squeeze(1)
    v = v * (sigma / torch.dot(u_work, torch.mv(matrix, v)))
    return v.to(u.dtype)
