"""paranorm: weight normalization, spectral normalization and honest Lipschitz bounds.

Drop-in for torch.nn.utils.parametrizations.weight_norm/spectral_norm and EnCodec's
apply_parametrization_norm, built on torch.nn.utils.parametrize.
"""

from .apply import apply_parametrization_norm as apply_parametrization_norm
from .apply import register_norm as register_norm
from . import nn as nn
from .errors import AlreadyNormalizedError as AlreadyNormalizedError
from .errors import CheckpointError as CheckpointError
from .errors import NotNormalizedError as NotNormalizedError
from .errors import ParanormError as ParanormError
from .init import InitSummary as InitSummary
from .init import data_dependent_init as data_dependent_init
from .sigma import SigmaResult as SigmaResult
from .sigma import sigma as sigma
from .spectral_norm import spectral_norm as spectral_norm
from .weight_norm import weight_norm as weight_norm

__version__ = "0.1.0"

__all__ = [
    "AlreadyNormalizedError",
    "CheckpointError",
    "NotNormalizedError",
    "InitSummary",
    "ParanormError",
    "apply_parametrization_norm",
    "data_dependent_init",
    "register_norm",
    "sigma",
    "SigmaResult",
    "spectral_norm",
    "weight_norm",
]
