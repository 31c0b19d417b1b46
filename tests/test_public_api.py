"""The public API: names, signatures, defaults and result fields, pinned.

paranorm's users see ``paranorm``, ``paranorm.nn``, ``paranorm.checkpoint`` and
``paranorm.distributed``; everything else is private and may move. A change here is a change
users feel: add a name or an option if you must, never rename or re-default one silently.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import paranorm as pn

MODULES = {"pn": pn, "pn.nn": pn.nn, "pn.checkpoint": pn.checkpoint, "pn.distributed": pn.distributed}

#: name -> signature (functions), ("class", constructor signature, dataclass fields) or "module".
PUBLIC = {
    'pn.AlreadyNormalizedError': ['class', None, None],
    'pn.CheckpointError': ['class', None, None],
    # status and detail added (partial and skipped layers), with defaults: old calls still work
    'pn.InitSummary': ['class', "(path: 'str', layer: 'str', units: 'int', mean_before: 'float', std_before: 'float', mean_after: 'float', std_after: 'float', status: 'Status' = 'initialized', detail: 'str' = '') -> None", ['detail', 'layer', 'mean_after', 'mean_before', 'path', 'status', 'std_after', 'std_before', 'units']],
    'pn.LipschitzReport': ['class', "(source: 'str', methods: 'tuple[str, ...]', layers: 'tuple[LayerReport, ...]', network: 'NetworkBound', notes: 'tuple[str, ...]' = ()) -> None", ['layers', 'methods', 'network', 'notes', 'source']],
    'pn.NormalizationInfo': ['class', "(path: 'str', name: 'str', kind: 'Kind', implementation: 'Implementation', dim: 'int | None' = None, method: 'str | None' = None, n_power_iterations: 'int | None' = None) -> None", ['dim', 'implementation', 'kind', 'method', 'n_power_iterations', 'name', 'path']],
    'pn.NotNormalizedError': ['class', None, None],
    'pn.ParanormError': ['class', None, None],
    'pn.SigmaResult': ['class', "(value: 'torch.Tensor', kind: 'Guarantee', method: 'str', iterations: 'int | None') -> None", ['iterations', 'kind', 'method', 'value']],
    'pn.apply_parametrization_norm': "(module: 'nn.Module', norm: 'str' = 'none', **norm_kwargs: 'Any') -> 'nn.Module'",
    'pn.checkpoint': 'module',
    'pn.checkpoint.CheckpointWarning': ['class', None, None],
    'pn.checkpoint.Entry': ['class', "(name: 'str', layout: 'Layout', kind: 'Kind | None', keys: 'tuple[str, ...]', dim: 'int | None' = None, dim_candidates: 'tuple[int | None, ...]' = (), version: 'int | None' = None) -> None", ['dim', 'dim_candidates', 'keys', 'kind', 'layout', 'name', 'version']],
    'pn.checkpoint.LAYOUTS': None,
    'pn.checkpoint.convert': "(state_dict: 'Mapping[str, Any]', to: 'Layout' = 'parametrizations', *, dims: 'Mapping[str, int | None] | None' = None, normalize: 'Mapping[str, Kind] | None' = None, keep_unconverted: 'bool' = False) -> 'OrderedDict[str, Any]'",
    'pn.checkpoint.detect': "(state_dict: 'Mapping[str, Any]') -> 'list[Entry]'",
    'pn.data_dependent_init': "(model: 'nn.Module', batch: 'Any', *, strict: 'bool' = False) -> 'list[InitSummary]'",
    'pn.distributed': 'module',
    'pn.distributed.check_not_sharded': "(module: 'nn.Module', name: 'str', norm: 'str', tensor: 'torch.Tensor') -> 'None'",
    'pn.distributed.destroy_process_group': "() -> 'None'",
    'pn.distributed.fully_shard': "(model: 'nn.Module', **fsdp_kwargs: 'Any') -> 'nn.Module'",
    'pn.distributed.is_sharded': "(tensor: 'torch.Tensor') -> 'bool'",
    'pn.fast_paths': "(enabled: 'bool' = True) -> 'Iterator[None]'",
    'pn.fast_paths_enabled': "() -> 'bool'",
    'pn.fold': "(model: 'nn.Module') -> 'nn.Module'",
    'pn.is_normalized': "(module: 'nn.Module', name: 'str' = 'weight') -> 'bool'",
    'pn.lipschitz_report': "(model: 'nn.Module', example_input: 'torch.Tensor | Sequence[torch.Tensor]', *, methods: 'Sequence[str]' = ('reshape', 'power', 'bound'), seed: 'int' = 0, on_layer: 'Callable[[int, int, str], None] | None' = None, allow_large: 'bool' = False, tolerance: 'float | None' = None) -> 'LipschitzReport'",
    'pn.nn': 'module',
    'pn.nn.CONV_NORMALIZATIONS': None,
    'pn.nn.ConvLayerNorm': ['class', "(normalized_shape: 'int | list[int] | tuple[int, ...] | torch.Size', **kwargs: 'Any') -> 'None'", None],
    'pn.nn.MODULE_NORMS': None,
    'pn.nn.NormConv1d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormConv2d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormConv3d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormConvTranspose1d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormConvTranspose2d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormConvTranspose3d': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.NormLinear': ['class', "(*args: 'Any', causal: 'bool' = False, norm: 'str' = 'none', norm_kwargs: 'Mapping[str, Any] | None' = None, **kwargs: 'Any') -> 'None'", None],
    'pn.nn.apply_parametrization_norm': "(module: 'nn.Module', norm: 'str' = 'none', **norm_kwargs: 'Any') -> 'nn.Module'",
    'pn.nn.get_norm_module': "(module: 'nn.Module', causal: 'bool' = False, norm: 'str' = 'none', **norm_kwargs: 'Any') -> 'nn.Module'",
    'pn.normalizations': "(model: 'nn.Module') -> 'list[NormalizationInfo]'",
    'pn.normalize_once': "() -> 'Iterator[None]'",
    'pn.register_norm': "(name: 'str', fn: 'NormFn', *, overwrite: 'bool' = False) -> 'None'",
    'pn.remove': "(module: 'nn.Module', name: 'str' = 'weight') -> 'nn.Module'",
    'pn.set_fast_paths': "(enabled: 'bool') -> 'bool'",
    'pn.sigma': "(module_or_weight: 'nn.Module | torch.Tensor', method: 'str' = 'power', input_shape: 'Sequence[int] | None' = None, iterations: 'int | None' = None, *, allow_large: 'bool' = False, tolerance: 'float | None' = None, **layer_args: 'Any') -> 'SigmaResult'",
    'pn.spectral_norm': "(module: 'nn.Module', name: 'str' = 'weight', n_power_iterations: 'int' = 1, eps: 'float' = 1e-12, dim: 'int | None' = None, *, method: 'str' = 'reshape', coeff: 'float | None' = None, input_shape: 'Sequence[int] | None' = None, **method_options: 'Any') -> 'nn.Module'",
    'pn.state_dict_report': "(state_dict: 'Mapping[str, Any]', *, source: 'str' = 'state_dict', methods: 'Sequence[str]' = ('reshape', 'power', 'bound'), seed: 'int' = 0, on_layer: 'Callable[[int, int, str], None] | None' = None, allow_large: 'bool' = False, tolerance: 'float | None' = None) -> 'LipschitzReport'",
    'pn.weight_norm': "(module: 'nn.Module', name: 'str' = 'weight', dim: 'int | None' = 0, *, eps: 'float' = 0.0) -> 'nn.Module'",
}


def describe(obj: object) -> object:
    if inspect.ismodule(obj):
        return "module"
    try:
        signature = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        signature = None
    if inspect.isclass(obj):
        fields = getattr(obj, "__dataclass_fields__", None)
        return ["class", signature, sorted(fields) if fields else None]
    return signature


def test_every_public_name_keeps_its_signature_and_fields():
    found = {
        f"{prefix}.{name}": describe(getattr(module, name))
        for prefix, module in MODULES.items()
        for name in module.__all__
    }
    assert found == {k: list(v) if isinstance(v, tuple) else v for k, v in PUBLIC.items()}


def test_import_paranorm_needs_neither_rich_nor_matplotlib():
    code = (
        "import sys; import paranorm, paranorm.nn, paranorm.checkpoint, paranorm.distributed; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
