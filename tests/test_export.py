"""Export after fold: TorchScript (script, trace), torch.export and ONNX match the eager model."""

from __future__ import annotations

import pytest
import torch

import paranorm as pn
from models import MODELS, build, example

# torch 2.13 deprecates TorchScript (in favour of torch.export) but still ships and runs it.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace_method` is deprecated:DeprecationWarning"),
    # MPD pads by the input length: a trace is specialised to the traced length, as usual.
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

SCRIPTABLE = list(MODELS)  # pn.nn's Norm layers (SEANet) script too once folded
# torch's ONNX exporter trips an internal FutureWarning (pytree LeafSpec) under warnings-as-errors.
ONNX_WARNING = r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"


def folded(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = build(name, "paranorm")
    x = example(name)
    with torch.no_grad():
        expected = model(x)
    pn.fold(model)
    assert not pn.normalizations(model)  # nothing left to recompute at run time
    return model, x, expected


@pytest.mark.parametrize("name", SCRIPTABLE)
def test_folded_model_scripts(name):
    model, x, expected = folded(name)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_folded_model_traces_and_exports(name):
    model, x, expected = folded(name)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,))
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", [pn.weight_norm, pn.spectral_norm])
def test_unfolded_script_fails_with_the_fold_hint(norm):
    model = torch.nn.Sequential(norm(torch.nn.Conv1d(3, 4, 3))).eval()
    with pytest.raises(pn.ParanormError, match=r"paranorm\.fold\(model\), then script"):
        torch.jit.script(model)


@pytest.mark.parametrize("name", ["hifigan_generator", "multi_scale_discriminator"])
def test_unfolded_trace_and_export_work_in_eval(name):
    model = build(name, "paranorm")
    x = example(name)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, rtol=1e-6, atol=1e-7)


def onnx_run(model: torch.nn.Module, x: torch.Tensor):
    pytest.importorskip("onnx", reason="ONNX export needs onnx (the dev extras install it)")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    from onnx.reference import ReferenceEvaluator

    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ReferenceEvaluator(program.model_proto)
    return torch.from_numpy(session.run(None, {session.input_names[0]: x.numpy()})[0])


@pytest.mark.slow
@pytest.mark.filterwarnings(ONNX_WARNING)
@pytest.mark.parametrize("name", ["hifigan_generator", "multi_scale_discriminator", "wav2vec2_pos_conv"])
def test_folded_model_exports_to_onnx(name):
    model, x, expected = folded(name)
    torch.testing.assert_close(onnx_run(model, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings(ONNX_WARNING)
def test_unfolded_model_exports_to_onnx_too():
    model = build("multi_scale_discriminator", "paranorm")
    x = example("multi_scale_discriminator")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(onnx_run(model, x), expected, rtol=1e-5, atol=1e-5)
