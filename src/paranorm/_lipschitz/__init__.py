"""Per-layer spectral norms of a model or a checkpoint, and a network Lipschitz bound where one
provably holds (:mod:`.model`, :mod:`.state_dict`; the columns in :mod:`.columns`, the
1-Lipschitz catalogue in :mod:`.catalogue`, the chain bound in :mod:`.chain`, the looks in
:mod:`.render`)."""

from .columns import DEFAULT_METHODS as DEFAULT_METHODS
from .model import lipschitz_report as lipschitz_report
from .results import Estimate as Estimate
from .results import LayerReport as LayerReport
from .results import LipschitzReport as LipschitzReport
from .results import NetworkBound as NetworkBound
from .state_dict import state_dict_report as state_dict_report

__all__ = [
    "DEFAULT_METHODS",
    "Estimate",
    "LayerReport",
    "LipschitzReport",
    "NetworkBound",
    "lipschitz_report",
    "state_dict_report",
]
