"""The network bound: Lip(f) <= prod ||L_i|| for a chain of layers and 1-Lipschitz maps.

If f = L_n o a_{n-1} o L_{n-1} o ... o a_1 o L_1 with every a_i 1-Lipschitz, then
Lip(f) <= prod_i ||L_i||_2 (l2 norms of the flattened input and output; biases shift but do
not stretch). It holds only for an ``nn.Sequential`` chain of such layers and of known
1-Lipschitz maps; otherwise the report says why there is none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import nn

from .._sigma.layer import OPERATOR_LAYERS
from .catalogue import one_lipschitz_reason
from .results import LayerReport, NetworkBound

__all__ = ["chain_bound"]


def _sequential_items(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | str:
    """The items of a chain of (nested) plain nn.Sequential, or the reason it is not one."""
    items: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            if type(child).forward is not nn.Sequential.forward:
                return f"{path} ({type(child).__name__}) overrides Sequential.forward, so it may not be a chain"
            inner = _sequential_items(child, f"{path}.")
            if isinstance(inner, str):
                return inner
            items.extend(inner)
        else:
            items.append((path, child))
    return items


def _chain_items(model: nn.Module) -> list[tuple[str, nn.Module]] | str:
    """The chain's items (path, module), or why the model is not a chain."""
    if isinstance(model, OPERATOR_LAYERS):
        return [("", model)]
    if not isinstance(model, nn.Sequential):
        return (
            f"the model is a {type(model).__name__}, not an nn.Sequential chain: its forward may add "
            "residuals, branches or attention, which the product of layer norms does not bound"
        )
    if type(model).forward is not nn.Sequential.forward:
        return f"{type(model).__name__} overrides Sequential.forward, so it may not be a chain"
    return _sequential_items(model)


def chain_bound(
    model: nn.Module,
    layers: Sequence[LayerReport],
    call_log: Sequence[str],
    shapes: Mapping[str, list[tuple[int, ...] | None]],
    single_input: bool,
) -> NetworkBound:
    if not single_input:
        return NetworkBound(
            None, False, "the model takes several inputs; a chain bound needs one input tensor"
        )
    items = _chain_items(model)
    if isinstance(items, str):
        return NetworkBound(None, False, items)
    by_name = {layer.name: layer for layer in layers}
    product, n_layers = 1.0, 0
    for path, item in items:
        if isinstance(item, OPERATOR_LAYERS):
            layer = by_name.get(path or "(model)")
            bound = None if layer is None else layer.bound
            if bound is None:
                certified = [
                    m for m in ("bound", "gram", "fft", "svd") if layer and m in layer.estimates
                ]
                why = "see its notes" if certified else "methods has none of bound, gram, fft, svd"
                return NetworkBound(
                    None, False, f"layer {path or '(model)'} has no certified sigma ({why})"
                )
            product *= bound.value  # type: ignore[operator]
            n_layers += 1
            continue
        shape_list = shapes.get(path) or [None]
        reason = one_lipschitz_reason(item, shape_list[0])
        if reason is not None:
            return NetworkBound(
                None,
                False,
                f"{path}: {reason}, so the product of layer norms does not bound the network",
            )
    chain = [path for path, _ in items]
    called = [name for name in call_log if name in set(chain)]
    if called != chain:
        return NetworkBound(
            None,
            False,
            "the forward did not call the chain's items once each, in order (shared or skipped layers)",
        )
    if n_layers == 0:
        return NetworkBound(None, False, "the model has no Linear or convolution layer")
    if not math.isfinite(product):
        return NetworkBound(
            None,
            False,
            f"the product of the {n_layers} layers' certified bounds is past the largest float "
            "(each is finite, their product is not), so it bounds nothing; see the layers' values",
        )
    return NetworkBound(
        product,
        True,
        f"product of {n_layers} layers' certified bounds; holds for the model in eval mode, l2 norm of "
        "the flattened input and output, because it is an nn.Sequential chain of these layers with "
        "1-Lipschitz maps between them (biases do not matter)",
    )
