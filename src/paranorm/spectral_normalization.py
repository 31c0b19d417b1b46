"""Spectral normalization as a parametrization: W / sigma(W), or softly W / max(1, sigma / c).

Miyato et al., "Spectral Normalization for Generative Adversarial Networks", 2018,
https://arxiv.org/abs/1802.05957; soft variant: Behrmann et al., "Invertible Residual
Networks", ICML 2019. A drop-in for :func:`torch.nn.utils.parametrizations.spectral_norm`:
``method="reshape"`` (the default) has its signature, keys (``parametrizations.<name>.original``,
``...0._u``, ``...0._v``) and numbers on the same seed.

How sigma is estimated is a choice of parametrization class, registered in ``METHODS``; every
class shares the division (hard or soft) in :class:`SpectralNorm`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ._base import Normalization, autocast_off, float32_or_wider
from ._fast import spectral_fast_ok, spectral_normalize
from ._load_hooks import spectral_norm_keys_hook as _legacy_keys_hook
from ._scaled import install_scaled_forward
from ._validate import check_dim, check_eps, check_normalizable, label
from .errors import ParanormError
from .estimators import power_iteration_, reshape_sigma, weight_to_matrix
from .once import key_cache_by_instance

__all__ = ["METHODS", "ReshapeSpectralNorm", "SpectralNorm", "spectral_norm"]

#: Power iterations run at registration, as torch does, so the first forward's sigma is
#: already close to the truth instead of a random vector's Rayleigh quotient.
WARMUP_ITERATIONS = 15


class SpectralNorm(Normalization, abc.ABC):
    """Base of the spectral normalizations: ``forward(W) = W / scale(sigma(W))``.

    scale = sigma (hard, ``coeff=None``) or max(1, sigma / coeff) (soft: only shrinks).
    Subclasses implement :meth:`sigma`, which may update their state in training mode.
    """

    kind = "spectral_norm"
    method: ClassVar[str]

    def __init__(self, *, dim: int, eps: float, coeff: float | None) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.coeff = coeff

    @abc.abstractmethod
    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """sigma(W) (a 0-dim tensor, differentiable in W); may update state in training mode."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with autocast_off(weight):  # sigma in float32 or wider, also under autocast
            sigma = self.sigma(weight)
            if self.coeff is None:
                return weight / sigma
            return weight / torch.clamp(sigma / self.coeff, min=1.0)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        soft = "" if self.coeff is None else f", coeff={self.coeff}"
        return f"method={self.method!r}, dim={self.dim}, eps={self.eps}{soft}"


class ReshapeSpectralNorm(SpectralNorm):
    """sigma of the weight reshaped to a matrix (``dim`` first), by persistent power iteration.

    Exactly torch's ``_SpectralNorm``: u, v drawn from the same RNG calls, 15 warm-up steps,
    ``n_power_iterations`` steps per training forward (none in eval), u and v cloned before use
    so two forwards in one step can both backpropagate. A 1-D weight is normalized exactly:
    sigma = ||w||. Half-precision weights iterate in float32.
    """

    method = "reshape"
    _u: torch.Tensor
    _v: torch.Tensor

    def __init__(
        self,
        weight: torch.Tensor,
        n_power_iterations: int = 1,
        dim: int = 0,
        eps: float = 1e-12,
        *,
        coeff: float | None = None,
    ) -> None:
        super().__init__(dim=dim, eps=eps, coeff=coeff)
        self.n_power_iterations = n_power_iterations
        self._warm_up_pending = False  # set when a checkpoint without u, v is loaded
        if weight.ndim > 1:
            matrix = weight_to_matrix(weight, dim)
            h, w = matrix.shape
            u = matrix.new_empty(h).normal_(0, 1)
            v = matrix.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
            self._power_method(matrix, WARMUP_ITERATIONS)

    def _power_method(self, matrix: torch.Tensor, n_iterations: int) -> None:
        if matrix.dtype == self._u.dtype == float32_or_wider(matrix):
            power_iteration_(matrix, self._u, self._v, n_iterations, self.eps)
            return
        work = float32_or_wider(matrix)
        u, v = self._u.to(work), self._v.to(work)
        power_iteration_(matrix.detach().to(work), u, v, n_iterations, self.eps)
        with torch.no_grad():
            self._u.copy_(u)
            self._v.copy_(v)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return torch.linalg.vector_norm(weight).clamp_min(self.eps)
        matrix = weight_to_matrix(weight, self.dim)
        if self.training:
            self._power_method(matrix, self.n_power_iterations)
        # Clones: the in-place power step of a second forward in the same step must not
        # change the u, v that the first forward's graph saved.
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        work = float32_or_wider(matrix)
        if work != matrix.dtype:
            return reshape_sigma(matrix.to(work), u.to(work), v.to(work))
        return reshape_sigma(matrix, u, v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1 and self.coeff is None:
            return F.normalize(weight, dim=0, eps=self.eps)  # torch's exact 1-D path
        if self._warm_up_pending:
            self._power_method(weight_to_matrix(weight, self.dim), WARMUP_ITERATIONS)
            self._warm_up_pending = False
        # A 1-D weight has no _u, _v buffers (its sigma is ||w||, exact): test ndim first.
        if weight.ndim > 1 and spectral_fast_ok(weight, self._u):  # opt-in: paranorm.fast_paths()
            return spectral_normalize(
                weight, self._u, self._v, dim=self.dim, eps=self.eps, coeff=self.coeff,
                n_power_iterations=self.n_power_iterations, training=self.training,
            )
        return super().forward(weight)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, local_metadata: Any, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # "power" checkpoints carry input-shaped vectors of the true operator: they mean nothing
        # for the reshaped matrix, so they are refused by name (torch hands submodules
        # strict=True whatever the caller asked, so this holds under strict=False too).
        foreign = [k for k in state_dict if k.startswith(prefix + "_x_")]
        if foreign:
            error_msgs.append(
                f"state_dict has {', '.join(repr(k) for k in foreign)}: the power method's "
                f"vectors of the true operator, but this tensor is spectrally normalized with "
                f"method='reshape', for which they mean nothing. Drop those keys (the weight "
                f"'{prefix[:-2]}original' loads as is), or normalize with method='power'."
            )
            for key in foreign:
                state_dict.pop(key)
        u_key, v_key = prefix + "_u", prefix + "_v"
        if hasattr(self, "_u") and u_key not in state_dict and v_key not in state_dict:
            # A stateless method ("fft", "gram") saved no u, v. They are only the power
            # iteration's start: keep ours and warm up on the loaded weight at the next forward
            # (torch hands this module only its own keys, so the weight is not visible here).
            state_dict[u_key], state_dict[v_key] = self._u.clone(), self._v.clone()
            self._warm_up_pending = True
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_power_iterations={self.n_power_iterations}"


#: method name -> parametrization class; each takes (weight, n_power_iterations, dim, eps,
#: coeff=..., **method_options) and keeps its state as buffers of its own.
METHODS: dict[str, type[SpectralNorm]] = {"reshape": ReshapeSpectralNorm}


def _default_dim(module: nn.Module) -> int:
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if isinstance(module, transposed) else 0


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
    "fft", "gram": the layer's true operator, see :mod:`paranorm.operator_norms`). With
    ``coeff=c`` the normalization is soft, W / max(1, sigma / c): a layer already below c is
    left unchanged. Gradients flow through sigma.

    Args:
        module: the layer holding the tensor.
        name: the tensor to normalize.
        n_power_iterations: power steps per training forward (>= 1); none in eval mode.
        eps: the floor used when normalizing u and v (>= 0).
        dim: the axis of the output features: None means 1 for ConvTranspose, else 0.
        method: how sigma is estimated, a key of ``paranorm.spectral_normalization.METHODS``.
        coeff: None for W / sigma, or c > 0 for W / max(1, sigma / c).
        input_shape: one input sample's shape, for the methods that measure the layer's
            operator ("power", "fft", "gram"; see :mod:`paranorm.operator_norms`); None: the
            shape of the first forward.
        **method_options: options of the chosen method.

    Returns:
        ``module``, parametrized.

    Raises:
        ParanormError, AlreadyNormalizedError: on bad input; the module is then unchanged.

    Example:
        >>> import torch, paranorm as pn
        >>> _ = torch.manual_seed(0)
        >>> m = pn.spectral_norm(torch.nn.Linear(20, 40), n_power_iterations=100)
        >>> round(torch.linalg.matrix_norm(m.weight.detach(), ord=2).item(), 3)
        1.0
    """
    weight = check_normalizable(module, name, "spectral_norm")
    eps = check_eps(module, name, "spectral_norm", eps)
    where = label(module, name)
    if weight.ndim > 1 and weight.device.type != "meta" and not bool(weight.any()):
        # u = normalize(W v) = 0 and v = normalize(W^H u) = 0 would stay zero for good: sigma
        # = 0 and W / sigma = NaN on every later forward, whatever W becomes.
        raise ParanormError(
            f"spectral_norm: {where} is all zeros; the power iteration's u, v would collapse to "
            "zero and stay there (W / sigma = NaN ever after). Initialize the weight to non-zero "
            "values first (e.g. the layer's reset_parameters()), then normalize."
        )
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int):
        raise ParanormError(
            f"spectral_norm: n_power_iterations must be an int, got {n_power_iterations!r} "
            f"for {where}. Pass a whole number >= 1, e.g. n_power_iterations=1 (the default)."
        )
    if n_power_iterations < 1:
        raise ParanormError(
            f"spectral_norm: n_power_iterations must be >= 1, got {n_power_iterations} for "
            f"{where}. Pass n_power_iterations=1 (the default) for one step per training "
            "forward, or more."
        )
    if dim is None:
        dim = _default_dim(module)
    else:
        dim = check_dim(module, name, "spectral_norm", dim, weight.ndim)
    bad_coeff = isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not coeff > 0
    if coeff is not None and bad_coeff:
        raise ParanormError(
            f"spectral_norm: coeff must be None (hard W / sigma) or a positive number (soft "
            f"W / max(1, sigma / coeff)), got coeff={coeff!r} for {where}."
        )
    if method not in METHODS:
        raise ParanormError(
            f"spectral_norm: unknown method {method!r} for {where}; expected one of "
            f"{', '.join(sorted(METHODS))}."
        )
    # Every method class takes (weight, n_power_iterations, dim, eps, coeff=..., **options);
    # those that measure the layer's operator build from the module (``from_module``).
    make: Callable[..., SpectralNorm] = METHODS[method]
    from_module = getattr(make, "from_module", None)
    if from_module is None and input_shape is not None:
        raise ParanormError(
            f"spectral_norm: input_shape is used by the methods that measure the layer's "
            f"operator (power, fft, gram); method={method!r} does not depend on the input size. "
            f"Drop input_shape for {where}, or pick one of those methods."
        )
    try:
        if from_module is not None:
            parametrization = from_module(
                module,
                name,
                weight,
                n_power_iterations,
                dim,
                eps,
                coeff=None if coeff is None else float(coeff),
                input_shape=input_shape,
                **method_options,
            )
        else:
            parametrization = make(
                weight,
                n_power_iterations,
                dim,
                eps,
                coeff=None if coeff is None else float(coeff),
                **method_options,
            )
    except TypeError as error:
        raise ParanormError(
            f"spectral_norm: bad options for method={method!r} on {where}: {error}"
        ) from None
    parametrize.register_parametrization(module, name, parametrization)
    key_cache_by_instance(module, name)  # normalize_once: deep copies get their own weight
    if name == "weight":  # fast_paths(): scale activations instead of materializing W
        install_scaled_forward(module)
    parametrization._load_hook = module._register_load_state_dict_pre_hook(
        _legacy_keys_hook(name), with_module=True
    )
    attach = getattr(parametrization, "attach", None)
    if attach is not None:  # e.g. "power" learns the input shape from the module's forward
        attach(module)
    return module


# The operator-norm methods ("power", "fft", "gram") subclass SpectralNorm and add themselves
# to METHODS; imported last so that either module may be imported first.
from . import operator_norms as _operator_norms  # noqa: F401
