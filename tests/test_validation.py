"""Bad input: a ParanormError naming the module, the tensor and the fix; the module untouched."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter
from torch.nn.utils import parametrizations as torch_param
from torch.nn.utils import parametrize

import paranorm as pn
from paranorm import AlreadyNormalizedError, ParanormError

HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def snapshot(module: nn.Module) -> dict[str, Any]:
    """Everything a failed normalization could have changed on ``module``."""
    state = {}
    for key, value in module.state_dict(keep_vars=True).items():
        lazy = isinstance(value, UninitializedParameter)
        state[key] = (value, None if lazy else value.detach().clone())
    return {
        "class": type(module),
        "state": state,
        "parametrized": parametrize.is_parametrized(module),
        "parametrizations": (
            {n: [type(p) for p in ps] for n, ps in module.parametrizations.items()}
            if parametrize.is_parametrized(module)
            else None
        ),
        "hooks": {h: list(getattr(module, h).values()) for h in HOOK_DICTS},
        "attributes": set(vars(module)),
        "training": module.training,
    }


def assert_unchanged(module: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(module)
    assert after["class"] is before["class"]
    assert list(after["state"]) == list(before["state"])
    for key, (tensor, value) in after["state"].items():
        old_tensor, old_value = before["state"][key]
        assert tensor is old_tensor, key  # the same Parameter/buffer object, not a replacement
        if value is not None:
            assert torch.equal(value, old_value), key
    for field in ("parametrized", "parametrizations", "hooks", "attributes", "training"):
        assert after[field] == before[field], field


def check_refused(
    module: nn.Module,
    apply: Callable[[nn.Module], object],
    fragments: list[str],
    error: type[ParanormError] = ParanormError,
) -> str:
    """``apply(module)`` raises ``error`` with every fragment in its message; module unchanged."""
    before = snapshot(module)
    with pytest.raises(error) as info:
        apply(module)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert_unchanged(module, before)
    return message


NORMS = {"weight_norm": pn.weight_norm, "spectral_norm": pn.spectral_norm}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_missing_parameter(norm):
    check_refused(
        nn.Linear(2, 3),
        lambda m: NORMS[norm](m, name="weigth"),
        [norm, "Linear", "'weigth'", "found: bias, weight", "Pass name="],
    )


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_not_a_string_name(norm):
    check_refused(nn.Linear(2, 3), lambda m: NORMS[norm](m, name=0), ["Linear", "named 0"])


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_not_a_module(norm):
    with pytest.raises(ParanormError, match=rf"{norm}: expected an nn.Module, got Tensor"):
        NORMS[norm](torch.randn(3, 3))


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_non_floating_buffer(norm):
    module = nn.Linear(2, 3)
    module.register_buffer("index", torch.arange(3))
    check_refused(
        module,
        lambda m: NORMS[norm](m, name="index"),
        [norm, "Linear.index", "torch.int64", "floating", "module.index = module.index.float()"],
    )


def test_the_suggested_fix_for_a_non_floating_buffer_works():
    module = nn.Linear(2, 3)
    module.register_buffer("index", torch.arange(1, 4))
    module.index = module.index.float()
    pn.weight_norm(module, name="index")
    assert parametrize.is_parametrized(module, "index")


@pytest.mark.parametrize(
    ("norm", "dim", "fragment"),
    [
        ("weight_norm", 2, "dim=2 is out of range for Linear.weight, which has 2 dimension(s)"),
        ("weight_norm", -3, "expected a dim in [-2, 1]"),
        ("spectral_norm", 3, "dim=3 is out of range for Linear.weight"),
        ("spectral_norm", -3, "expected a dim in [-2, 1]"),
        ("weight_norm", 0.5, "dim must be an int or None, got 0.5 for Linear.weight"),
        ("spectral_norm", "0", "dim must be an int or None, got '0' for Linear.weight"),
        ("weight_norm", True, "dim must be an int or None, got True"),
    ],
)
def test_bad_dim(norm, dim, fragment):
    check_refused(nn.Linear(2, 3), lambda m: NORMS[norm](m, dim=dim), [norm, fragment])


def test_weight_norm_dim_minus_one_is_ambiguous_and_explained():
    check_refused(
        nn.Conv1d(2, 3, 3),
        lambda m: pn.weight_norm(m, dim=-1),
        [
            "dim=-1 is ambiguous for Conv1d.weight",
            "torch reads it as dim=None",
            "Pass dim=None or dim=2",
        ],
    )


def test_spectral_norm_accepts_dim_minus_one_as_the_last_axis():
    # torch's spectral_norm reads -1 as the last axis (not as None): paranorm does the same.
    module = pn.spectral_norm(nn.Conv1d(2, 3, 3), dim=-1)
    assert module.parametrizations.weight[0].dim == 2


@pytest.mark.parametrize(
    ("n", "fragment"),
    [
        (0, "n_power_iterations must be >= 1, got 0 for Linear.weight"),
        (-2, "n_power_iterations must be >= 1, got -2"),
        (1.5, "n_power_iterations must be an int, got 1.5 for Linear.weight"),
        (True, "n_power_iterations must be an int, got True"),
        ("3", "n_power_iterations must be an int, got '3'"),
        (10**9, "n_power_iterations must be at most 10000 (steps on every training forward), got 1000000000"),
    ],
)
def test_bad_n_power_iterations(n, fragment):
    check_refused(
        nn.Linear(2, 3),
        lambda m: pn.spectral_norm(m, n_power_iterations=n),
        [fragment, "n_power_iterations=1"],
    )


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("eps", [-1e-12, -1, math.nan, math.inf, "1e-12", None])
def test_bad_eps(norm, eps):
    check_refused(
        nn.Linear(2, 3),
        lambda m: NORMS[norm](m, eps=eps),
        [
            f"{norm}: eps must be a non-negative number, got eps={eps!r} for Linear.weight",
            "eps=1e-12",
        ],
    )


def test_weight_norm_zero_slice_without_eps():
    module = nn.Linear(3, 4)
    with torch.no_grad():
        module.weight[1:3] = 0
    check_refused(
        module,
        pn.weight_norm,
        ["Linear.weight has zero norm over 2 slice(s) along dim=0", "NaN", "eps=1e-12"],
    )
    pn.weight_norm(module, eps=1e-12)  # the suggested fix works


def test_weight_norm_all_zero_with_dim_none():
    module = nn.Linear(3, 4)
    nn.init.zeros_(module.weight)
    check_refused(
        module, lambda m: pn.weight_norm(m, dim=None), ["zero norm over the whole tensor"]
    )


@pytest.mark.parametrize("coeff", [0, -1.0, math.nan, math.inf, True, "0.5"])
def test_bad_coeff(coeff):
    check_refused(
        nn.Linear(2, 3),
        lambda m: pn.spectral_norm(m, coeff=coeff),
        [
            "coeff must be None (hard W / sigma) or a positive number",
            f"got coeff={coeff!r}",
            "Linear.weight",
        ],
    )


def test_unknown_spectral_method():
    message = check_refused(
        nn.Conv2d(2, 3, 3),
        lambda m: pn.spectral_norm(m, method="no-such-method"),
        ["unknown method 'no-such-method' for Conv2d.weight", "expected one of", "reshape"],
    )
    from paranorm._spectral_norm import PARAMETRIZATIONS as METHODS

    for name in METHODS:
        assert name in message


def test_unknown_method_option():
    check_refused(
        nn.Linear(2, 3),
        lambda m: pn.spectral_norm(m, not_an_option=1),
        ["method='reshape' got unexpected option(s) not_an_option for Linear.weight", "Drop them"],
    )


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_lazy_parameter(norm):
    check_refused(
        nn.LazyLinear(3),
        NORMS[norm],
        [norm, "LazyLinear.weight is a lazy, uninitialized parameter", "Run one forward pass"],
    )


def test_lazy_module_after_the_suggested_forward_works():
    module = nn.LazyLinear(3)
    module(torch.randn(2, 4))
    pn.spectral_norm(module)
    assert module.parametrizations.weight.original.shape == (3, 4)


def test_unknown_norm_name():
    check_refused(
        nn.Conv1d(2, 3, 1),
        lambda m: pn.apply_parametrization_norm(m, "weightnorm"),
        ["unknown norm 'weightnorm' for Conv1d", "'none', 'weight_norm', 'spectral_norm'"],
    )


FIRST = {
    "paranorm weight_norm": pn.weight_norm,
    "paranorm spectral_norm": pn.spectral_norm,
    "torch weight_norm": torch_param.weight_norm,
    "torch spectral_norm": torch_param.spectral_norm,
    "torch legacy weight_norm": torch.nn.utils.weight_norm,
    "torch legacy spectral_norm": torch.nn.utils.spectral_norm,
}


@pytest.mark.parametrize("first", sorted(FIRST))
@pytest.mark.parametrize("second", sorted(NORMS))
def test_same_tensor_twice(first, second):
    torch.manual_seed(0)
    module = FIRST[first](nn.Conv1d(2, 3, 3))
    kind = first.rsplit(" ", 1)[-1]
    implementation = {"paranorm": "paranorm", "torch": "torch"}[first.split()[0]]
    if "legacy" in first:
        implementation = "torch-legacy"
    x = torch.randn(1, 2, 5)
    check_refused(  # in training mode: a spectral norm's u, v must not take a power step either
        module,
        NORMS[second],
        [
            f"{second}: Conv1d.weight already has a {kind} ({implementation})",
            "paranorm.remove(module, 'weight')",
        ],
        AlreadyNormalizedError,
    )
    module.eval()
    y = module(x)
    with pytest.raises(AlreadyNormalizedError):
        NORMS[second](module)
    assert torch.equal(module(x), y)


def test_after_the_suggested_remove_the_norm_applies():
    module = torch_param.weight_norm(nn.Linear(3, 2))
    with pytest.raises(AlreadyNormalizedError):
        pn.spectral_norm(module)
    pn.remove(module, "weight")
    pn.spectral_norm(module)
    assert module.parametrizations.weight[0].kind == "spectral_norm"


def test_another_tensor_of_a_normalized_module_can_be_normalized():
    module = pn.weight_norm(nn.Linear(3, 2))
    pn.weight_norm(module, name="bias", dim=None)
    assert set(module.parametrizations) == {"weight", "bias"}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_plain_tensor_attribute(norm):
    module = nn.Linear(2, 3)
    module.scale = torch.randn(3)
    check_refused(
        module,
        lambda m: NORMS[norm](m, name="scale"),
        [
            "Linear has no parameter or buffer named 'scale'",
            "plain tensor attribute",
            "register_buffer",
        ],
    )
