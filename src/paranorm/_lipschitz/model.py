"""``lipschitz_report``: each weighted layer's sigmas at the input shape it really sees.

For each layer with a weight: the reshaped-kernel sigma (what torch's spectral_norm divides
by, Miyato et al. 2018), the sigma of the layer's true linear operator at its input shape
(power iteration: a lower estimate, Gouk et al. 2021) and a certified upper bound (Gram
iteration, Delattre et al. 2023/2024, or the exact FFT value of a circular convolution, Sedghi
et al. 2019). Every number carries what it guarantees: "lower", "exact" or "upper".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrize

from .._errors import ParanormError, entry_point
from .._normalization import find_normalization
from .._sigma.gram import check_tolerance
from .._sigma.layer import CONV, CONV_TRANSPOSE, LINEAR, OPERATOR_LAYERS
from .._torch_compat import own_tensor
from .chain import chain_bound
from .columns import (
    DEFAULT_METHODS,
    check_methods,
    estimate,
    gram_options,
    layer_method,
    unestimated,
    weight_problem,
    withdraw_contradicted,
)
from .results import Estimate, LayerReport, LipschitzReport

__all__ = ["cuda_devices", "lipschitz_report"]


def _describe_normalization(module: nn.Module, name: str = "weight") -> str | None:
    found = find_normalization(module, name)
    if found is None:
        return None
    details: list[str] = [found.implementation]
    p = found.parametrization
    if p is not None and found.implementation == "paranorm":
        if getattr(p, "method", None):
            details.append(f"method={p.method}")
        if getattr(p, "coeff", None) is not None:
            details.append(f"coeff={p.coeff}")
    return f"{found.kind} ({', '.join(details)})"


def _type_name(module: nn.Module) -> str:
    return parametrize.type_before_parametrizations(module).__name__


def _sample_shape(module: nn.Module, x: Any) -> tuple[int, ...] | None:
    """One sample's shape (no batch) of the tensor a layer received; None if not a tensor."""
    if not isinstance(x, torch.Tensor):
        return None
    if isinstance(module, CONV + CONV_TRANSPOSE):
        batched_ndim = len(module.kernel_size) + 2
        return (
            tuple(x.shape) if x.ndim == batched_ndim - 1 else tuple(x.shape[1:])
        )  # unbatched or batched
    if x.ndim <= 1:
        return tuple(x.shape)
    return tuple(x.shape[1:])


def _weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding a tensor named ``weight`` (parametrized or by a legacy hook), in order."""
    found = []
    for path, module in model.named_modules():
        if ".parametrizations" in f".{path}" or isinstance(module, parametrize.ParametrizationList):
            continue
        has_weight = (
            own_tensor(module, "weight") is not None
            or parametrize.is_parametrized(module, "weight")
            or find_normalization(module, "weight") is not None
        )
        if has_weight:
            found.append((path, module))
    return found



def _report_layer(
    path: str,
    module: nn.Module,
    input_shapes: list[tuple[int, ...] | None],
    methods: tuple[str, ...],
    allow_large: bool = False,
    tolerance: float | None = None,
) -> list[LayerReport]:
    name = path or "(model)"
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # found as a tensor
    shape = tuple(weight.shape)
    normalization = _describe_normalization(module)
    if not isinstance(module, OPERATOR_LAYERS):
        why = f"{_type_name(module)} is not a Linear, Conv or ConvTranspose layer; paranorm estimates sigma only for those"
        estimates = {c: Estimate(layer_method(module, c), None, None, None, why) for c in methods}
        return [
            LayerReport(
                name,
                _type_name(module),
                shape,
                (input_shapes or [None])[0],
                normalization,
                estimates,
                len(input_shapes),
            )
        ]
    problem = weight_problem(repr(name), weight)
    if problem is not None:
        return [
            LayerReport(
                name, _type_name(module), shape, (input_shapes or [None])[0], normalization,
                unestimated(methods, module, problem), len(input_shapes),
            )
        ]
    rows = []
    for input_shape in dict.fromkeys(input_shapes or [None]):  # one row per distinct input shape
        estimates = {}
        for column in methods:
            method = layer_method(module, column)
            needs_shape = isinstance(module, CONV + CONV_TRANSPOSE) and method not in ("reshape",)
            if needs_shape and input_shape is None and method != "gram":
                why = "example_input never reached this layer, so its input shape is unknown"
                estimates[column] = Estimate(method, None, None, None, why)
                continue
            shape_arg = input_shape if needs_shape else None
            options = gram_options(method, tolerance)
            estimates[column] = estimate(
                module, method, input_shape=shape_arg, allow_large=allow_large, **options
            )
        estimates = withdraw_contradicted(estimates, isinstance(module, LINEAR), weight.dtype)
        rows.append(
            LayerReport(
                name,
                _type_name(module),
                shape,
                input_shape,
                normalization,
                estimates,
                len(input_shapes),
            )
        )
    return rows


@entry_point("lipschitz_report")
def lipschitz_report(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    on_layer: Callable[[int, int, str], None] | None = None,
    allow_large: bool = False,
    tolerance: float | None = None,
) -> LipschitzReport:
    """Report each weighted layer's sigmas at the input shape it sees, and a chain bound if one holds.

    ``example_input`` is run once through ``model`` (eval mode, no_grad) only to learn each
    layer's input shape; afterwards the model's train/eval flags and buffers (u, v included)
    are exactly as before, and the global RNG too (the estimators run under ``seed``).
    Columns (``methods``): "reshape" (torch's reshaped-kernel sigma), "power" (the operator's
    sigma by power iteration, a lower estimate), "bound" (fft where exact, else gram: a
    certified upper bound), or any of "gram", "fft", "svd". The network bound is the product
    of the layers' smallest certified values, given only when the model is an nn.Sequential
    chain of Linear/conv layers and known 1-Lipschitz maps (ReLU, Tanh, non-overlapping
    pooling, Flatten, ...).

    Args:
        model: the network.
        example_input: a batch (or a tuple of inputs) the model accepts.
        methods: the columns to compute.
        seed: seeds the estimators' random starts, for reproducible numbers.
        on_layer: called as ``on_layer(done, total, name)`` after each layer (progress bars).
        allow_large: compute estimates past the cost limits of :func:`paranorm.sigma` (1 GiB,
            1e12 multiply-adds); off, such an estimate is n/a and says what it would cost.
        tolerance: the stopping tolerance of the "gram" column (and of a gram "bound"), as
            for :func:`paranorm.sigma`; None: its default (1%).

    Returns:
        a :class:`LipschitzReport`: print it, or ``to_dict()`` for JSON.

    Raises:
        ParanormError: not a module, uninitialized (lazy) parameters, unknown method, or the
            model failed on ``example_input``; the model is left as it was.

    Example:
        >>> import torch, paranorm as pn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> report = pn.lipschitz_report(net, torch.randn(1, 4))
        >>> [layer.name for layer in report.layers], report.network.holds
        (['0', '2'], True)
        >>> w0, w2 = (torch.linalg.matrix_norm(m.weight.detach(), ord=2) for m in (net[0], net[2]))
        >>> bool(report.network.value >= (w0 * w2).item() * (1 - 1e-4))
        True
    """
    if not isinstance(model, nn.Module):
        raise ParanormError(
            f"expected an nn.Module, got {type(model).__name__}. Pass the network itself."
        )
    methods = check_methods(methods)
    tolerance = check_tolerance(tolerance)
    for path, param in model.named_parameters():
        if isinstance(param, UninitializedParameter):
            raise ParanormError(
                f"parameter {path!r} is uninitialized (a lazy module); run one "
                "forward to materialize it before asking for its sigma."
            )
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    weighted = _weighted_modules(model)
    training = {module: module.training for module in model.modules()}
    buffers = {path: b.detach().clone() for path, b in model.named_buffers()}
    with ExitStack() as stack:
        stack.callback(_restore, model, training, buffers)
        stack.enter_context(torch.random.fork_rng(devices=cuda_devices()))
        stack.enter_context(torch.no_grad())
        torch.manual_seed(seed)
        model.eval()
        shapes, call_log = _trace(model, inputs)
        layers: list[LayerReport] = []
        with parametrize.cached():
            for i, (path, module) in enumerate(weighted):
                layers.extend(_report_layer(
                    path, module, shapes.get(path, []), methods, allow_large, tolerance
                ))
                if on_layer is not None:
                    on_layer(i + 1, len(weighted), path or "(model)")
        network = chain_bound(model, layers, call_log, shapes, single_input=len(inputs) == 1)
    notes = []
    if not weighted:
        notes.append("the model has no layer with a weight")
    unreached = [layer.name for layer in layers if layer.calls == 0]
    if unreached:
        notes.append(f"example_input never reached {', '.join(unreached)}")
    return LipschitzReport(type(model).__name__, methods, tuple(layers), network, tuple(notes))


def _trace(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[dict[str, list[tuple[int, ...] | None]], list[str]]:
    """Run ``model`` once on ``inputs``: each module's input shapes (by path), and the call order."""
    names = {module: path for path, module in model.named_modules()}
    shapes: dict[str, list[tuple[int, ...] | None]] = {}
    call_log: list[str] = []

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        path = names.get(module)
        if path is None:
            return
        call_log.append(path)
        shapes.setdefault(path, []).append(_sample_shape(module, args[0]) if args else None)

    handles = [module.register_forward_pre_hook(pre_hook) for module in model.modules()]
    try:
        model(*inputs)
    except ParanormError:
        raise
    except (RuntimeError, TypeError, ValueError) as error:
        got = ", ".join(
            str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs
        )
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ParanormError(
            f"{type(model).__name__} failed on example_input of shape {got}: "
            f"{first}. Pass an input the model accepts (check the channels and sizes)."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return shapes, call_log


def cuda_devices() -> list[int]:
    """Every CUDA device: torch.manual_seed seeds them all, so all their RNGs are saved too."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@torch.no_grad()
def _restore(
    model: nn.Module, training: Mapping[nn.Module, bool], buffers: Mapping[str, torch.Tensor]
) -> None:
    """Put back every module's train/eval flag and any buffer the run changed."""
    for module, flag in training.items():
        module.training = flag
    for path, buffer in model.named_buffers():
        saved = buffers.get(path)
        if saved is not None and saved.shape == buffer.shape and not torch.equal(saved, buffer):
            buffer.copy_(saved)


# --- checkpoints without a model ----------------------------------------------------------
