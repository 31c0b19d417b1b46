"""``paranorm inspect``: per-layer spectral norms of a checkpoint or a model, and what they guarantee.

A checkpoint file gives what its tensors can (:func:`paranorm.state_dict_report`); reading it
never runs code. A model, named with ``--model path/to/file.py:factory`` or ``--model
package.module:factory``, is imported (its code runs) and run once on a random input of
``--input-shape`` to learn what each layer sees (:func:`paranorm.lipschitz_report`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._errors import ParanormError
from .._lipschitz import DEFAULT_METHODS, LipschitzReport, lipschitz_report, state_dict_report
from .._sigma.gram import GRAM_FAST_TOLERANCE
from ..checkpoint.io import Checkpoint, read_checkpoint


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "inspect",
        help="per-layer sigma (reshaped, true operator, certified bound) of a checkpoint or model",
        description=(
            "For each layer with a weight: its normalization, the reshaped-kernel sigma torch "
            "divides by, the true operator's sigma at the input shape the layer sees (power "
            "iteration: a lower estimate) and a certified upper bound (gram, or fft where exact); "
            "for an nn.Sequential chain with 1-Lipschitz activations, the network's Lipschitz "
            "bound. A state_dict file alone gives what its tensors can, and says what it cannot."
        ),
    )
    parser.add_argument(
        "target",
        metavar="CHECKPOINT",
        nargs="?",
        help=(
            "a state_dict file (.pt, .pth, .bin, .ckpt; .safetensors with safetensors installed); "
            "reading it runs no code. (A path/to/file.py:factory that exists is read as --model.)"
        ),
    )
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help=(
            "inspect a model instead: 'path/to/file.py:factory' or 'package.module:factory', "
            "where factory is an nn.Module or a function of no arguments returning one. This "
            "IMPORTS AND RUNS that Python code: name only code you trust"
        ),
    )
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        action="append",
        help=(
            "with --model: one sample's shape without the batch, e.g. 3,32,32; repeat it for a "
            "model of several inputs"
        ),
    )
    parser.add_argument(
        "--input-dtype",
        metavar="DTYPE",
        action="append",
        help=(
            "with --model: the dtype of the random example input, e.g. int64 for token ids "
            "(default: the model's float dtype); repeat it per input, or give it once for all"
        ),
    )
    parser.add_argument(
        "--input-range",
        metavar="LOW,HIGH",
        help=(
            "with --model: the values of an integer or bool example input, drawn from [LOW, HIGH), "
            "e.g. 0,100 for token ids of a vocabulary of 100 (default 0,2)"
        ),
    )
    parser.add_argument(
        "--weights",
        metavar="CHECKPOINT",
        help="with --model: load this state_dict file into the model first (strict)",
    )
    parser.add_argument(
        "--key",
        metavar="NAME",
        help=(
            "the state dict to use from a training checkpoint that holds several (e.g. "
            "generator, mpd, state_dict); default: all of them (and, with --weights, the only one)"
        ),
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=(
            "comma-separated columns among reshape, power, gram, fft, svd, bound "
            f"(default {','.join(DEFAULT_METHODS)}; bound = fft where exact, else gram)"
        ),
    )
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help=(
            "compute estimates that would take more than 1 GiB of memory or about a minute of "
            "work for one layer (by default such a layer's column reads n/a and says why)"
        ),
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            "compute each conv's bound within 5%% of a lower estimate instead of 1%%: "
            "often twice as fast; still a certified upper bound"
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    parser.add_argument(
        "--plot", metavar="PATH", help="write a bar chart of the sigmas per layer (PNG, log scale)"
    )
    parser.set_defaults(func=run, parser=parser)
    return parser


def parse_shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32); every entry a positive int."""
    parts = [p.strip() for p in text.split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise ParanormError(
            f"--input-shape {text!r} is not a shape: expected positive ints separated by commas, "
            "one sample without the batch, e.g. --input-shape 3,32,32."
        )
    return shape


def _import(source: str) -> Any:
    """The module ``source`` names: a Python file (``path/to/file.py``) or an importable name."""
    module: Any = None
    if source.endswith(".py"):
        if not os.path.isfile(source):
            raise ParanormError(f"no such file: {source!r}.")
        name = "_paranorm_inspect_" + os.path.splitext(os.path.basename(source))[0]
        module_spec = importlib.util.spec_from_file_location(name, source)
        if module_spec is None or module_spec.loader is None:
            raise ParanormError(f"cannot load {source!r} as Python.")
        module = importlib.util.module_from_spec(module_spec)
    # The user's code may fail in any way; one line names what failed instead of a traceback.
    cwd_added = os.getcwd() not in sys.path
    if cwd_added:
        sys.path.insert(0, os.getcwd())  # as `python -m` would, so ./mypkg imports
    try:
        if module is None:
            return importlib.import_module(source)
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    except Exception as error:
        raise ParanormError(
            f"importing {source!r} failed: {type(error).__name__}: {_first_line(error)}."
        ) from None
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())


def load_model(spec: str) -> nn.Module:
    """The model that ``package.module:attr`` or ``path/to/file.py:attr`` names (calling a factory)."""
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ParanormError(
            f"{spec!r} is not a model spec: write package.module:factory or file.py:factory."
        )
    obj: Any = _import(source)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParanormError(
                f"{source!r} has no attribute {attr!r}; name the model or its factory after ':'."
            )
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise ParanormError(
            f"{spec!r} is a {type(obj).__name__}; expected an nn.Module or a factory returning one."
        )
    try:
        model = obj()
    except Exception as error:
        raise ParanormError(
            f"calling {attr}() from {source!r} failed: {type(error).__name__}: {_first_line(error)}. "
            "The factory must take no arguments."
        ) from None
    if not isinstance(model, nn.Module):
        raise ParanormError(
            f"{attr}() from {source!r} returned a {type(model).__name__}, not an nn.Module."
        )
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _model_spec(args: argparse.Namespace) -> str | None:
    """The model to import, or None for a checkpoint; a file path is never taken for code."""
    target: str | None = args.target
    if args.model is not None:
        if target is not None:
            raise ParanormError(
                f"give a CHECKPOINT or --model, not both (got {target!r} and --model "
                f"{args.model!r}); to load a checkpoint into the model, pass --weights {target}."
            )
        return str(args.model)
    if target is None:
        parser: argparse.ArgumentParser = args.parser
        parser.error(
            "nothing to inspect: give a CHECKPOINT file, or --model path/to/file.py:factory "
            "--input-shape C,H,W"
        )
    source, colon, _ = target.rpartition(":")
    if colon and source.endswith(".py") and os.path.isfile(source) and not os.path.lexists(target):
        return target  # an existing Python file, named with its factory: explicit enough
    if colon and not os.path.lexists(target):
        raise ParanormError(
            f"no such file: {target!r}. To inspect a model defined in Python code, name it with "
            f"--model {target} (this imports and runs that code)."
        )
    return None


def _merged(checkpoint: Checkpoint) -> dict[str, Any]:
    """The state dicts of a training checkpoint as one, each key under its state dict's name
    ("mpd/convs.0.weight"); legacy spectral norm's per-module versions follow their keys."""
    if checkpoint.parts == ((),) or len(checkpoint.parts) == 1:
        return checkpoint.state_dict  # type: ignore[return-value]
    merged: OrderedDict[str, Any] = OrderedDict()
    metadata: dict[str, Any] = {}
    for name, state in checkpoint.state_dicts.items():
        merged.update((f"{name}/{key}", value) for key, value in state.items())
        for module, local in (getattr(state, "_metadata", None) or {}).items():
            metadata[f"{name}/{module}" if module else name] = local
    merged._metadata = metadata  # type: ignore[attr-defined]
    return merged


def _without_ddp_prefix(state_dict: Mapping[str, Any], model: nn.Module) -> Mapping[str, Any]:
    """DDP saves ``module.``-prefixed keys; a bare model's have none."""
    keys = [k for k in state_dict if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys) and not any(k.startswith("module.") for k in model.state_dict()):
        return OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict


def _load_weights(model: nn.Module, path: str, key: str | None) -> None:
    """Load the checkpoint ``path`` into ``model`` (strict), saying which keys do not fit."""
    checkpoint = read_checkpoint(path)
    if key is not None:
        checkpoint = checkpoint.select(key)
    state_dict = _without_ddp_prefix(checkpoint.state_dict, model)
    name = type(model).__name__
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise ParanormError(
            f"loading {path!r} into {name} failed: {' '.join(details) or _first_line(error)}"
        ) from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:

        def listed(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

        parts = ([f"missing keys {listed(missing)}"] if missing else [])
        parts += [f"unexpected keys {listed(unexpected)}"] if unexpected else []
        raise ParanormError(
            f"{path!r} does not fit {name}: {'; '.join(parts)}. Pass the checkpoint saved from "
            "this model; if it nests the state_dict or stores another layout (weight_g/weight_v, "
            "plain weights), convert it first with paranorm convert."
        )


def build_report(
    args: argparse.Namespace, on_layer: Any = None
) -> tuple[LipschitzReport, list[str]]:
    """The report ``args`` asks for, and notes on how it was made."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    shapes = [parse_shape(text) for text in args.input_shape or []]
    notes: list[str] = []
    spec = _model_spec(args)
    if spec is None:
        if args.weights:
            raise ParanormError(
                "--weights loads a checkpoint into a model; name the model with --model "
                "path/to/file.py:factory, or inspect the checkpoint alone."
            )
        checkpoint = read_checkpoint(args.target)
        if args.key is not None:
            checkpoint = checkpoint.select(args.key)
        state_dict = _merged(checkpoint)
        if shapes:
            notes.append(
                "--input-shape is not used for a state_dict: it stores no stride, padding, dilation "
                "or groups, so the operator at that shape is unknown; pass --model to use it"
            )
        report = state_dict_report(
            state_dict, source=os.path.basename(args.target), methods=methods, on_layer=on_layer,
            allow_large=args.allow_large, tolerance=GRAM_FAST_TOLERANCE if args.fast else None,
        )
        return report, notes
    if not shapes:
        raise ParanormError(
            f"a model needs --input-shape to run (one sample's shape without the batch), e.g. "
            f"paranorm inspect --model {spec} --input-shape 3,32,32."
        )
    model = load_model(spec)
    if args.weights:
        _load_weights(model, args.weights, args.key)
    inputs = _example_inputs(model, shapes, args.input_dtype or [], args.input_range)
    try:
        report = lipschitz_report(
            model, inputs[0] if len(inputs) == 1 else tuple(inputs), methods=methods, on_layer=on_layer,
            allow_large=args.allow_large, tolerance=GRAM_FAST_TOLERANCE if args.fast else None,
        )
    except ParanormError as error:
        if "failed on example_input" not in error.detail or args.input_dtype:
            raise
        raise ParanormError(
            f"{error.detail} If the model takes integer inputs (token ids) or masks, give their "
            "dtype and values: --input-dtype int64 --input-range 0,VOCAB_SIZE."
        ) from error
    return report, notes


#: The dtypes --input-dtype takes, by the names torch prints.
_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
}


def _input_range(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 2
    parts = text.split(",")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        low, high = 0, 0
    if len(parts) != 2 or not low < high:
        raise ParanormError(
            f"--input-range {text!r} is not a range: expected two ints LOW,HIGH with LOW < HIGH "
            "(values are drawn from [LOW, HIGH)), e.g. --input-range 0,100."
        )
    return low, high


def _example_inputs(
    model: nn.Module, shapes: list[tuple[int, ...]], dtype_names: list[str], value_range: str | None
) -> list[torch.Tensor]:
    """One random batch of one sample per --input-shape: normal floats, or integers (and bools)
    drawn uniformly from --input-range; seeded, on the model's device."""
    unknown = [n for n in dtype_names if n.removeprefix("torch.") not in _DTYPES]
    if unknown:
        raise ParanormError(
            f"--input-dtype {unknown[0]!r} is not a dtype paranorm draws inputs in; use one of "
            f"{', '.join(_DTYPES)}."
        )
    if len(dtype_names) > 1 and len(dtype_names) != len(shapes):
        raise ParanormError(
            f"{len(dtype_names)} --input-dtype for {len(shapes)} --input-shape: give one dtype for "
            "all inputs, or one per input in the same order."
        )
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    default = torch.get_default_dtype() if reference is None else reference.dtype
    device = None if reference is None else reference.device
    low, high = _input_range(value_range)
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for i, shape in enumerate(shapes):
        name = dtype_names[min(i, len(dtype_names) - 1)] if dtype_names else None
        dtype = _DTYPES[name.removeprefix("torch.")] if name else default
        if dtype.is_floating_point:
            x = torch.randn(1, *shape, generator=generator, dtype=dtype)
        elif dtype == torch.bool:
            x = torch.randint(0, 2, (1, *shape), generator=generator).bool()
        else:
            x = torch.randint(low, high, (1, *shape), generator=generator, dtype=torch.int64).to(dtype)
        inputs.append(x.to(device))
    return inputs


#: Without a progress bar (stderr not a terminal, or --json), a line on stderr this often.
LOG_EVERY_S = 5.0


def run(args: argparse.Namespace) -> int:
    """Run ``paranorm inspect`` as ``args`` says; return the exit code."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    )
    task = progress.add_task("sigma per layer", total=None)
    started = last = time.monotonic()

    def on_layer(done: int, total: int, name: str) -> None:
        nonlocal last
        progress.update(task, completed=done, total=total, description=f"sigma: {name}")
        now = time.monotonic()
        if progress.disable and now - last >= LOG_EVERY_S:  # logs, pipes: a plain line now and then
            last = now
            print(f"paranorm inspect: {done} of {total} layers in {now - started:.0f} s (last: {name})",
                  file=sys.stderr, flush=True)

    with progress:
        report, notes = build_report(args, on_layer)
    if args.plot:
        report.save_plot(args.plot)
    if args.json:
        data = report.to_dict()
        data["notes"] = data["notes"] + notes
        data["plot"] = args.plot
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = Console()
    out.print(report)
    for note in notes:
        out.print(f"note: {note}", style="dim")
    if args.plot:
        out.print(f"plot written to {args.plot}")
    return 0
