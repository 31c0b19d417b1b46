"""paranorm: weight normalization, spectral normalization and honest Lipschitz bounds.

Drop-in for torch.nn.utils.parametrizations.weight_norm/spectral_norm and EnCodec's
apply_parametrization_norm, built on torch.nn.utils.parametrize. The public API is what this
module exports, and the modules ``paranorm.nn`` (EnCodec-layout layers),
``paranorm.checkpoint`` (layouts of state dicts) and ``paranorm.distributed``; every other
module is private.
"""

from . import checkpoint as checkpoint
from . import distributed as distributed
from . import nn as nn
from ._apply import apply_parametrization_norm as apply_parametrization_norm
from ._apply import register_norm as register_norm
from ._errors import AlreadyNormalizedError as AlreadyNormalizedError
from ._errors import CheckpointError as CheckpointError
from ._errors import NotNormalizedError as NotNormalizedError
from ._errors import ParanormError as ParanormError
from ._fast import fast_paths as fast_paths
from ._fast import fast_paths_enabled as fast_paths_enabled
from ._fast import normalize_once as normalize_once
from ._fast import set_fast_paths as set_fast_paths
from ._fold import NormalizationInfo as NormalizationInfo
from ._fold import fold as fold
from ._fold import is_normalized as is_normalized
from ._fold import normalizations as normalizations
from ._fold import remove as remove
from ._init import InitSummary as InitSummary
from ._init import data_dependent_init as data_dependent_init
from ._lipschitz import LipschitzReport as LipschitzReport
from ._lipschitz import lipschitz_report as lipschitz_report
from ._lipschitz import state_dict_report as state_dict_report
from ._sigma import SigmaResult as SigmaResult
from ._sigma import sigma as sigma
from ._spectral_norm import spectral_norm as spectral_norm
from ._weight_norm import weight_norm as weight_norm

__version__ = "0.2.0"

__all__ = [
    "AlreadyNormalizedError",
    "CheckpointError",
    "InitSummary",
    "LipschitzReport",
    "NormalizationInfo",
    "NotNormalizedError",
    "ParanormError",
    "SigmaResult",
    "apply_parametrization_norm",
    "checkpoint",
    "data_dependent_init",
    "distributed",
    "fast_paths",
    "fast_paths_enabled",
    "fold",
    "is_normalized",
    "lipschitz_report",
    "nn",
    "normalizations",
    "normalize_once",
    "register_norm",
    "remove",
    "set_fast_paths",
    "sigma",
    "spectral_norm",
    "state_dict_report",
    "weight_norm",
]
