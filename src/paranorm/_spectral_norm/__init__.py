"""Spectral normalization as a parametrization: W / sigma(W), or softly W / max(1, sigma / c).

Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018,
https://arxiv.org/abs/1802.05957; soft variant: Behrmann et al., "Invertible Residual
Networks", ICML 2019. A drop-in for :func:`torch.nn.utils.parametrizations.spectral_norm`:
``method="reshape"`` (the default) has its signature, keys (``parametrizations.<name>.original``,
``...0._u``, ``...0._v``) and numbers on the same seed.

How sigma is estimated is a method of :data:`paranorm._sigma.METHODS`; each trainable one has
a parametrization class here (:data:`PARAMETRIZATIONS`), all sharing the division of
:class:`.base.SpectralNorm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from .._errors import ParanormError, entry_point
from .._register import register
from .._sigma import METHODS
from .._sigma.layer import default_dim
from .._validate import (
    check_dim,
    check_eps,
    check_normalizable,
    check_plain_range,
    label,
    plain_range_problem,
    refuse_out_of_range_loads,
)
from .base import Settings, SpectralNorm
from .operator import FFTSpectralNorm, GramSpectralNorm, PowerSpectralNorm
from .reshape import ReshapeSpectralNorm

__all__ = [
    "MAX_POWER_ITERATIONS",
    "PARAMETRIZATIONS",
    "RANGE_FIX",
    "ReshapeSpectralNorm",
    "SpectralNorm",
    "spectral_norm",
]

#: The most power steps per training forward: torch's default and Miyato et al.'s is 1; a
#: number past this one makes every forward take seconds (and 10**9 would never end).
MAX_POWER_ITERATIONS = 10_000
#: What to do with a weight outside the range torch's power step handles ("reshape").
RANGE_FIX = (
    "Rescale the weights into that range, keep the layer in float64 (module.double()), or use "
    "method='fft', 'gram' or 'power', which rescale the weight exactly and take any finite one."
)

#: The parametrization class of each trainable sigma method.
PARAMETRIZATIONS: dict[str, type[SpectralNorm]] = {
    cls.method: cls
    for cls in (ReshapeSpectralNorm, PowerSpectralNorm, FFTSpectralNorm, GramSpectralNorm)
}
assert set(PARAMETRIZATIONS) == {m for m, e in METHODS.items() if e.trainable}


def _check_settings(cls: type[SpectralNorm], where: str, settings: Settings) -> None:
    """Refuse what ``cls``'s method would ignore: an unused argument is a mistake to report."""
    method, n_power_iterations, eps = cls.method, settings.n_power_iterations, settings.eps
    unknown = sorted(set(settings.options) - cls.options)
    if unknown:
        takes = f"its options are {', '.join(sorted(cls.options))}" if cls.options else "it takes no extra options"
        raise ParanormError(
            f"method={method!r} got unexpected option(s) {', '.join(unknown)} for {where}; "
            f"{takes}. Drop them, or pick a method that uses them (\"gram\" takes iterations=)."
        )
    if not cls.uses_power_iterations and n_power_iterations != 1:
        raise ParanormError(
            f"method={method!r} computes sigma directly and runs no power iteration, so "
            f"n_power_iterations={n_power_iterations} would be ignored for {where}. Drop it"
            + (", or pass iterations= for the Gram steps." if "iterations" in cls.options else ".")
        )
    if not cls.uses_eps and eps != 1e-12:
        raise ParanormError(
            f"method={method!r} takes no eps (it normalizes no power-iteration vector), got "
            f"eps={eps!r} for {where}. Drop eps."
        )
    if not cls.uses_input_shape and settings.input_shape is not None:
        raise ParanormError(
            f"input_shape is used by the methods that measure the layer's operator (power, fft, "
            f"gram); method={method!r} does not depend on the input size. Drop input_shape for "
            f"{where}, or pick one of those methods."
        )


def _check_iterations(n_power_iterations: Any, where: str) -> int:
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int):
        raise ParanormError(
            f"n_power_iterations must be an int, got {n_power_iterations!r} "
            f"for {where}. Pass a whole number >= 1, e.g. n_power_iterations=1 (the default)."
        )
    if n_power_iterations < 1:
        raise ParanormError(
            f"n_power_iterations must be >= 1, got {n_power_iterations} for "
            f"{where}. Pass n_power_iterations=1 (the default) for one step per training "
            "forward, or more."
        )
    if n_power_iterations > MAX_POWER_ITERATIONS:
        raise ParanormError(
            f"n_power_iterations must be at most {MAX_POWER_ITERATIONS} (steps on every "
            f"training forward), got {n_power_iterations} for {where}. Pass "
            "n_power_iterations=1 (the default; torch's and Miyato et al.'s), or a few."
        )
    return n_power_iterations


def _check_coeff(coeff: Any, where: str) -> float | None:
    bad = isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not coeff > 0
    if coeff is not None and (bad or not math.isfinite(coeff)):
        raise ParanormError(
            f"coeff must be None (hard W / sigma) or a positive number (soft "
            f"W / max(1, sigma / coeff); finite: an infinite coeff would never normalize), got "
            f"coeff={coeff!r} for {where}."
        )
    return None if coeff is None else float(coeff)


@entry_point("spectral_norm")
def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: int | None = None,
    *,
    method: str = "reshape",
    coeff: float | None = None,
    input_shape: Sequence[int] | None = None,
    **method_options: Any,
) -> nn.Module:
    """Apply spectral normalization to ``module.<name>``: W / sigma(W).

    sigma is the largest singular value, estimated as ``method`` says ("reshape": the weight
    viewed as a matrix with ``dim`` first, by power iteration, torch's behaviour; "power",
    "fft", "gram": the layer's true operator, see :mod:`paranorm._spectral_norm.operator`). With
    ``coeff=c`` the normalization is soft, W / max(1, sigma / c): a layer already below c is
    left unchanged. Gradients flow through sigma.

    Args:
        module: the layer holding the tensor.
        name: the tensor to normalize.
        n_power_iterations: power steps per training forward (1 to MAX_POWER_ITERATIONS,
            10000); none in eval mode. Used by "reshape" and "power"; "fft" and "gram" refuse
            any other value than 1.
        eps: the floor used when normalizing u and v (finite, >= 0); "fft" and "gram" take none.
        dim: the axis of the output features: None means 1 for ConvTranspose, else 0.
        method: how sigma is estimated: "reshape", "power", "fft" or "gram".
        coeff: None for W / sigma, or a finite c > 0 for W / max(1, sigma / c).
        input_shape: one input sample's shape, for the methods that measure the layer's
            operator ("power", "fft", "gram"); None: the shape of the first forward.
        **method_options: options of the chosen method ("gram": ``iterations``; "power",
            "fft", "gram": ``allow_large=True`` to accept an input shape past the cost limits
            of :mod:`paranorm._sigma.cost`, 1 GiB and 1e11 multiply-adds for the warm-up
            and a forward's sigma, which are otherwise refused when the shape is given or
            first seen).

    Magnitudes (``benchmarks/scale_range.py``, a Conv1d(4, 6, 3) weight, three training
    steps): "reshape" is torch's power step, unscaled, bit for bit; it normalizes correctly
    while max|W| lies in about [eps, 9e18] for float32 and bfloat16 ([eps, 7e153] for
    float64; float16 its whole range), and registration and ``load_state_dict`` into the
    module refuse a weight outside [4 eps sqrt(numel), sqrt(max / 4 numel)] (float32,
    numel = 1000: 1.3e-10 .. 2.9e17), naming the tensor. "power", "fft" and "gram" take sigma
    of W / 2^k (exact) and divide in that unit, so they normalize every finite weight: float32
    1.4e-45 .. 1.7e38, bfloat16 9.2e-41 .. 1.7e38, float64 4.9e-324 .. 9.0e307 (the smallest
    subnormal to the largest power of two below the dtype's maximum), float16 its whole range.
    Not guarded: weights that training moves out of "reshape"'s range (a check on every step
    would cost a host sync).

    Returns:
        ``module``, parametrized.

    Raises:
        ParanormError, AlreadyNormalizedError: on bad input (an empty, float8, complex or
            sparse weight, a "reshape" weight outside its range, eps or coeff not finite, an
            input shape past the cost limits), or an option the method does not use; the
            module is then unchanged.

    Example:
        >>> import torch, paranorm as pn
        >>> _ = torch.manual_seed(0)
        >>> m = pn.spectral_norm(torch.nn.Linear(20, 40), n_power_iterations=100)
        >>> round(torch.linalg.matrix_norm(m.weight.detach(), ord=2).item(), 3)
        1.0
    """
    weight = check_normalizable(module, name, "spectral_norm")
    eps = check_eps(module, name, eps)
    where = label(module, name)
    if weight.ndim > 1 and weight.device.type != "meta" and not bool(weight.any()):
        # u = normalize(W v) = 0 and v = normalize(W^H u) = 0 would stay zero for good: sigma
        # = 0 and W / sigma = NaN on every later forward, whatever W becomes.
        raise ParanormError(
            f"{where} is all zeros; the power iteration's u, v would collapse to "
            "zero and stay there (W / sigma = NaN ever after). Initialize the weight to non-zero "
            "values first (e.g. the layer's reset_parameters()), then normalize."
        )
    n_power_iterations = _check_iterations(n_power_iterations, where)
    dim = default_dim(module) if dim is None else check_dim(module, name, dim, weight.ndim)
    coeff = _check_coeff(coeff, where)
    cls = PARAMETRIZATIONS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ParanormError(
            f"unknown method {method!r} for {where}; expected one of "
            f"{', '.join(sorted(PARAMETRIZATIONS))}."
        )
    settings = Settings(n_power_iterations, dim, eps, coeff, input_shape, method_options)
    _check_settings(cls, where, settings)
    if cls is ReshapeSpectralNorm:
        _check_reshape_range(module, name, weight, dim, eps)
    parametrization = cls.from_module(module, name, weight, settings)
    register(module, name, parametrization)
    parametrization.attach(module)  # e.g. "power" learns the input shape from the forward
    if cls is ReshapeSpectralNorm:
        refuse_out_of_range_loads(
            module, name, ReshapeSpectralNorm, _load_problem, "torch's spectral_norm power step",
            RANGE_FIX,
        )
    return module


def _reshape_floor(weight_shape: Sequence[int], eps: float) -> float:
    """The smallest largest entry for which F.normalize's floor eps leaves u, v unit vectors:
    sigma >= max|W|, and a random start's ||W v|| is about ||W||_F / sqrt(cols) >= max|W| /
    sqrt(numel), which must stay 4 eps above eps."""
    return 4 * eps * math.sqrt(math.prod(weight_shape))


def _load_problem(parametrization: Any, incoming: dict[str, Any]) -> tuple[str, str] | None:
    """(key, why) for an incoming weight torch's power step would get wrong, or None."""
    weight = incoming.get("original")
    problem = None if weight is None else _reshape_range_problem(weight, parametrization.eps)
    return None if problem is None else ("original", problem)


def _reshape_range_problem(weight: Any, eps: float) -> str | None:
    # The power step squares W v and W^T u, whose norms reach sigma <= sqrt(numel) max|W|: the
    # range of one slice of numel entries; a 1-D weight is normalized exactly, ||w||.
    return plain_range_problem(weight, None, whole=True, floor=_reshape_floor(weight.shape, eps))


def _check_reshape_range(module: nn.Module, name: str, weight: Any, dim: int, eps: float) -> None:
    """torch's power step (the default path, bit for bit and no slower, so unscaled) computes
    sigma correctly only for weights in a range: refuse the others at registration."""
    check_plain_range(
        module, name, weight, None, "torch's spectral_norm power step", RANGE_FIX,
        whole=True, floor=_reshape_floor(weight.shape, eps),
    )
