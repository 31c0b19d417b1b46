"""Spectral normalization by the layer's true operator norm: methods "power", "fft", "gram".

``pn.spectral_norm(conv, method=...)`` divides the weight by sigma of the linear map
x -> conv(x) (bias left out) instead of the reshaped kernel's (Miyato et al. 2018), so the
normalized layer is really 1-Lipschitz (or c-Lipschitz with ``coeff=c``):

- "power": a persistent input-shaped unit vector per input shape (buffer ``_x_<C>x<H>x<W>``,
  ``_x_<in_features>`` for Linear), advanced by ``n_power_iterations`` steps of
  x <- A^T A x / ||A^T A x|| per training forward, sigma = ||A x|| with x held constant (a lower
  estimate, like torch's u^T W v; Gouk et al. 2021). Only the layer knows its input size: it is
  ``input_shape=`` (fixed), or else every shape the module sees on its forward (a forward
  pre-hook), each new one getting its own vector, warmed up. With inputs of many sizes (audio
  of varying length) pass ``input_shape``: for zero padding at stride 1 the operator at a
  shorter input is a compression of the one at a longer input, so the longest size's sigma
  bounds the shorter ones.
- "fft": Sedghi et al. 2019 at the current input size: exact for circular padding at stride 1,
  a certified upper bound otherwise (see :mod:`paranorm._sigma.fourier`). Stateless, differentiable.
- "gram": Gram iteration (Delattre et al. 2023/2024): an upper bound; for zero padding the
  kernel-domain bound that holds for every input size. Stateless, differentiable.

Before a convolution has seen any input (and with no ``input_shape``), "power" and "fft" divide
by the size-independent "gram" bound, so the layer is never more than 1-Lipschitz meanwhile.
"fft" and "gram" take neither ``n_power_iterations`` nor ``eps`` (passing them is an error);
"gram" takes ``iterations=`` (Gram steps).

Magnitudes: each method takes sigma of W / 2^k, 2^k a power of two near max|W| (exact, and
the gradient is unchanged), and divides in that unit, (W / 2^k) / sigma(W / 2^k), so any
finite weight is normalized correctly, from subnormal entries to the largest, also where
sigma itself is past the dtype's range (see ``benchmarks/scale_range.py``). Costs: the work
and memory of the warm-up and of each forward at an input shape are estimated when the shape
is given or first seen, and a shape past the limits of :mod:`paranorm._sigma.cost` (1 GiB,
1e11 multiply-adds) is refused unless ``allow_large=True``; a shape first seen by the
forward is refused there, by the forward pre-hook.
The bounds are computed in the weight's precision (float32 at least) on every forward, so
they hold up to its rounding; :func:`paranorm.sigma` takes them in float64 and rounds up.

state_dict: "fft" and "gram" keep only ``parametrizations.<name>.original``, so they load each
other's state_dicts; "power" loads theirs too (keeping its own vectors) and creates the
``_x_*`` buffers it finds in a "power" checkpoint. Vectors that mean something else (the
reshape method's ``_u``/``_v``, of the reshaped matrix; ``_x_*`` into a stateless method) are
refused by name, under strict=False too; drop those keys to load the weight. (Loading into
"reshape" follows torch: its ``_u``/``_v`` must be in the checkpoint.)

Example:
    >>> import torch, paranorm as pn
    >>> _ = torch.manual_seed(0)
    >>> conv = pn.spectral_norm(torch.nn.Conv2d(3, 8, 3, padding=1), method="gram")
    >>> float(pn.sigma(conv, "svd", input_shape=(3, 8, 8))) <= 1.0  # 1-Lipschitz at any size
    True
    >>> float(pn.sigma(pn.spectral_norm(torch.nn.Conv2d(3, 8, 3, padding=1)), "svd", input_shape=(3, 8, 8))) > 1.2
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError
from .._sigma.cost import MAX_NORMALIZATION_WORK, Cost, check_cost, fft_cost, gram_cost, power_cost
from .._sigma.fourier import fft_estimate
from .._sigma.geometry import Geometry, check_input_shape
from .._sigma.gram import GRAM_MAX_ITERATIONS, check_iterations, gram_estimate, gram_iterations
from .._sigma.layer import Layer, layer_of
from .._sigma.matrix import divide_by_scale
from .._sigma.operator import apply, apply_adjoint
from .._sigma.power import operator_power_iteration_, operator_sigma, warm_start, warm_start_applies
from .._sigma.precision import autocast_off, float32_or_wider
from .._sigma.scale import scaled
from .base import Settings, SpectralNorm

__all__ = ["FFTSpectralNorm", "GramSpectralNorm", "OperatorSpectralNorm", "PowerSpectralNorm"]

#: Power steps for a new input shape's vector, from the Fourier warm start.
POWER_WARMUP_ITERATIONS = 30
#: Multiply-adds allowed to the last product of the kernel-domain Gram bound per forward
#: (it picks the default number of steps; ``iterations=`` overrides it): the bound is
#: recomputed on every forward, so it gets a twentieth of pn.sigma's budget.
GRAM_BUDGET = 2e8
_X_KEY = re.compile(r"_x_(\d+(?:x\d+)*)$")


def _buffer_name(shape: Sequence[int]) -> str:
    return "_x_" + "x".join(str(s) for s in shape)


class OperatorSpectralNorm(SpectralNorm):
    """Base of the methods that need the layer's operator: its geometry and input shape."""

    uses_input_shape = True
    options = frozenset({"allow_large"})

    def __init__(
        self,
        weight: torch.Tensor,
        n_power_iterations: int,
        dim: int,
        eps: float,
        *,
        coeff: float | None,
        geometry: Geometry,
        input_shape: tuple[int, ...] | None,
        where: str,
        allow_large: bool = False,
    ) -> None:
        super().__init__(dim=dim, eps=eps, coeff=coeff)
        if not isinstance(allow_large, bool):
            raise ParanormError(f"allow_large must be True or False, got {allow_large!r} for {where}.")
        self.n_power_iterations = n_power_iterations
        self.geometry = geometry
        self.where = where
        self.allow_large = allow_large
        self.input_shape: tuple[int, ...] | None = input_shape
        # A given input_shape is fixed; without one, every new shape the layer sees is taken.
        self.tracks_input = input_shape is None and not geometry.is_matrix
        if geometry.is_matrix:
            self.input_shape = (weight.shape[1],)
        self._name = "weight"
        self._pre_hook: Any = None

    @classmethod
    def from_module(cls, module: nn.Module, name: str, weight: torch.Tensor, settings: Settings) -> OperatorSpectralNorm:
        """Build from the (not yet parametrized) layer, checking that its operator is known."""
        if name != "weight":
            raise ParanormError(
                f"method={cls.method!r} measures the layer's operator, which is "
                f"defined by its 'weight', not {name!r}. Use method='reshape' for other tensors."
            )
        layer = layer_of(module)
        shape = check_input_shape(layer.weight, layer.geo, settings.input_shape, layer.where)
        norm = cls(
            weight, settings.n_power_iterations, settings.dim, settings.eps, coeff=settings.coeff,
            geometry=layer.geo, input_shape=shape, where=layer.where, **settings.options,
        )
        norm.check_cost(weight, norm.input_shape)  # "power" checked it before its warm-up
        norm._name = name
        return norm

    def attach(self, module: nn.Module) -> None:
        """Watch the module's inputs (a forward pre-hook) to learn the input shape."""
        if self.tracks_input:
            self._pre_hook = module.register_forward_pre_hook(self._see_input)

    def _see_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], torch.Tensor):
            return
        holders = getattr(module, "parametrizations", {})
        if self._name not in holders or not any(p is self for p in holders[self._name]):
            return  # removed from the module since (paranorm.remove, remove_parametrizations)
        x = args[0]
        shape = tuple(x.shape[1:]) if x.ndim == self.geometry.spatial + 2 else tuple(x.shape)
        if shape == self.input_shape:
            return
        weight = module.parametrizations[self._name].original  # type: ignore[union-attr,index]
        try:
            checked = check_input_shape(weight, self.geometry, shape, self.where)
        except ParanormError:
            return  # a wrong input: the layer's own forward raises torch's error
        if checked is not None:
            self.observe(weight, checked)

    def observe(self, weight: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Make ``shape`` the current input shape (after checking what it will cost)."""
        self.check_cost(weight, shape)
        self.input_shape = shape

    def cost(self, weight: torch.Tensor, shape: tuple[int, ...] | None) -> Cost:
        """The memory and work of one forward's sigma at ``shape`` (and of any warm-up)."""
        return gram_cost(self.layer(weight), None, self._fallback_iterations(weight))

    def check_cost(self, weight: torch.Tensor, shape: tuple[int, ...] | None) -> None:
        """Refuse a shape whose sigma is past the cost limits, unless ``allow_large``."""
        check_cost(
            self.cost(weight, shape), self.method, self.where, shape, self.allow_large,
            MAX_NORMALIZATION_WORK,
        )

    def _fallback_iterations(self, weight: torch.Tensor) -> int:
        return gram_iterations(self.layer(weight), None, None, GRAM_BUDGET)

    def layer(self, weight: torch.Tensor) -> Layer:
        return Layer(weight, self.geometry, self.dim, self.where)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # sigma of W / 2^k, and the division in that unit (_sigma.matrix.divide_by_scale):
        # W / sigma is of order one even where sigma itself would overflow the dtype.
        with autocast_off(weight):
            unit, scale = scaled(weight)
            return divide_by_scale(weight, unit, scale, self.sigma(unit), self.coeff)

    def fallback_sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The size-independent Gram bound, used until a conv has seen its input size."""
        return gram_estimate(self.layer(weight), None, None, precise=False, budget=GRAM_BUDGET).value

    def _foreign_keys(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        own = {prefix + n for n, _ in self.named_buffers(recurse=False)}
        return [k for k in state_dict if k.startswith(prefix) and k not in own and "." not in k[len(prefix):]]

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # torch passes strict=True to every submodule whatever the caller asked, so, like the
        # layout hooks (paranorm.checkpoint.load_hooks), this refuses under strict=False too: a silent
        # skip would hide that the checkpoint was saved with another method.
        foreign = self._foreign_keys(state_dict, prefix)
        if foreign:
            names = ", ".join(repr(k) for k in foreign)
            origin = (
                "the reshape method's power-iteration vectors (of the weight viewed as a matrix)"
                if any(k.endswith(("._u", "._v")) for k in foreign)
                else "another method's state"
            )
            error_msgs.append(
                f"state_dict has {names}: {origin}, but {self.where} is spectrally normalized with "
                f"method={self.method!r}, for which they mean nothing. Drop those keys (the weight "
                f"'{prefix[:-2]}original' loads as is), or normalize the layer with the method "
                "that saved them."
            )
            for key in foreign:
                state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", input_shape={self.input_shape}"


class PowerSpectralNorm(OperatorSpectralNorm):
    """W / sigma, sigma by persistent power iteration on the true operator (a lower estimate)."""

    method = "power"

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(weight, n_power_iterations, dim, eps, **kwargs)
        if self.input_shape is not None:
            self.observe(weight, self.input_shape)

    def observe(self, weight: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().observe(weight, shape)
        if not hasattr(self, _buffer_name(shape)):
            self._add_vector(weight, shape)

    def cost(self, weight: torch.Tensor, shape: tuple[int, ...] | None) -> Cost:
        """A new shape's warm-up (the Fourier start's SVDs, POWER_WARMUP_ITERATIONS steps),
        which costs more than a forward's n_power_iterations steps; or the fallback's."""
        if shape is None:
            return super().cost(weight, shape)
        layer = self.layer(weight)
        itemsize = torch.empty((), dtype=float32_or_wider(weight)).element_size()
        steps = POWER_WARMUP_ITERATIONS + self.n_power_iterations + 1
        power = power_cost(layer, shape, steps, 1, itemsize)
        if self.geometry.is_matrix or not warm_start_applies(weight, self.geometry, shape):
            return power
        start = fft_cost(layer, shape)
        return Cost(max(power.bytes, start.bytes), power.work + start.work, power.what)

    @torch.no_grad()
    def _add_vector(self, weight: torch.Tensor, shape: tuple[int, ...]) -> None:
        # On W / 2^k (exact): the vector is the same, and no square overflows or underflows.
        work, _ = scaled(weight.detach().to(float32_or_wider(weight)))
        x = warm_start(work, self.geometry, shape)
        self._iterate(work, x, POWER_WARMUP_ITERATIONS)
        self.register_buffer(_buffer_name(shape), x)

    def _iterate(self, weight: torch.Tensor, x: torch.Tensor, n: int) -> None:
        geo, shape = self.geometry, tuple(x.shape[1:])
        w = weight.detach()
        operator_power_iteration_(
            lambda t: apply(w, geo, t), lambda t: apply_adjoint(w, geo, t, shape), x, n, self.eps
        )

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            return self.fallback_sigma(weight)
        x = getattr(self, _buffer_name(self.input_shape))
        work = weight if weight.dtype == x.dtype else weight.to(x.dtype)
        # sigma(W) = 2^k sigma(W / 2^k), exactly: no overflow of A x for large weights, no
        # underflow for small ones; one max and one division over the weight, no host sync.
        work, scale = scaled(work)
        if self.training:
            self._iterate(work, x, self.n_power_iterations)
        # A clone, as torch does: a second forward's in-place step must not change the x that
        # the first forward's graph saved.
        x = x.clone(memory_format=torch.contiguous_format)
        return operator_sigma(lambda t: apply(work, self.geometry, t), x) * scale

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        weight_key = prefix[: -len("0.")] + "original"
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            match = _X_KEY.fullmatch(key[len(prefix):])
            if match is None:
                continue
            shape = tuple(int(s) for s in match.group(1).split("x"))
            value = state_dict[key]
            if tuple(value.shape[1:]) != shape or value.shape[0] != 1:
                continue  # torch reports the size mismatch
            if not hasattr(self, _buffer_name(shape)):
                template = state_dict.get(weight_key)
                dtype = value.dtype if template is None else float32_or_wider(template)
                self.register_buffer(_buffer_name(shape), torch.zeros_like(value, dtype=dtype))
                if self.input_shape is None:
                    self.input_shape = shape
        n_missing = len(missing_keys)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # A checkpoint of "fft"/"gram" (or one saved before this shape was seen) has no vector
        # for a shape: keep ours, it is only a start for the iteration.
        new = missing_keys[n_missing:]
        missing_keys[n_missing:] = [k for k in new if not _X_KEY.fullmatch(k[len(prefix):])]


class FFTSpectralNorm(OperatorSpectralNorm):
    """W / sigma, sigma by the Fourier method at the current input size (exact or upper)."""

    method = "fft"
    uses_power_iterations = False
    uses_eps = False

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(weight, n_power_iterations, dim, eps, **kwargs)

    def cost(self, weight: torch.Tensor, shape: tuple[int, ...] | None) -> Cost:
        return super().cost(weight, shape) if shape is None else fft_cost(self.layer(weight), shape)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            return self.fallback_sigma(weight)
        return fft_estimate(self.layer(weight), self.input_shape, precise=False).value


class GramSpectralNorm(OperatorSpectralNorm):
    """W / sigma_hat, sigma_hat a Gram-iteration upper bound (size-independent for zero padding)."""

    method = "gram"
    options = frozenset({"iterations", "allow_large"})
    uses_power_iterations = False
    uses_eps = False

    def __init__(
        self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12,
        *, iterations: int | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(weight, n_power_iterations, dim, eps, **kwargs)
        if iterations is not None:
            check_iterations(iterations, 1, GRAM_MAX_ITERATIONS)
        self.iterations = iterations

    def cost(self, weight: torch.Tensor, shape: tuple[int, ...] | None) -> Cost:
        layer = self.layer(weight)
        return gram_cost(layer, shape, gram_iterations(layer, shape, self.iterations, GRAM_BUDGET))

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        layer = self.layer(weight)
        return gram_estimate(layer, self.input_shape, self.iterations, precise=False, budget=GRAM_BUDGET).value

