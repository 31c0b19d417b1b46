"""paranorm: weight normalization, spectral normalization and honest Lipschitz bounds.

Drop-in for torch.nn.utils.parametrizations.weight_norm/spectral_norm and EnCodec's
apply_parametrization_norm, built on torch.nn.utils.parametrize.
"""

from . import checkpoint as checkpoint
from . import distributed as distributed
from . import nn as nn
from ._fast import fast_paths as fast_paths
from ._fast import fast_paths_enabled as fast_paths_enabled
from ._fast import set_fast_paths as set_fast_paths
from .apply import apply_parametrization_norm as apply_parametrization_norm
from .apply import register_norm as register_norm
from .errors import AlreadyNormalizedError as AlreadyNormalizedError
from .errors import CheckpointError as CheckpointError
from .errors import NotNormalizedError as NotNormalizedError
from .errors import ParanormError as ParanormError
from .folding import NormalizationInfo as NormalizationInfo
from .folding import fold as fold
from .folding import is_normalized as is_normalized
from .folding import normalizations as normalizations
from .folding import remove as remove
from .init import InitSummary as InitSummary
from .init import data_dependent_init as data_dependent_init
from .measure import SigmaResult as SigmaResult
from .measure import sigma as sigma
from .once import normalize_once as normalize_once
from .report import LipschitzReport as LipschitzReport
from .report import lipschitz_report as lipschitz_report
from .report import state_dict_report as state_dict_report
from .spectral_normalization import spectral_norm as spectral_norm
from .weight_normalization import weight_norm as weight_norm

__version__ = "0.1.0"

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
