"""sigma, the largest singular value of a layer's linear map: every method, in one place.

Pure tensor math, no module state: the weight viewed as a matrix (:mod:`.matrix`), the layer's
operator and its geometry (:mod:`.geometry`, :mod:`.operator`, :mod:`.layer`), and one module
per method of estimating sigma (:mod:`.power`, :mod:`.fourier`, :mod:`.gram`, :mod:`.dense`),
listed in one table, :data:`.methods.METHODS`, that ``paranorm.sigma``,
``paranorm.spectral_norm`` and the Lipschitz report all read. Around them: what a weight must be
before a kernel sees it (:mod:`.checks`), exact power-of-two rescaling so that no magnitude
overflows or underflows (:mod:`.scale`), and what a method costs before it starts
(:mod:`.cost`).
"""

from .methods import METHODS as METHODS
from .methods import Method as Method
from .methods import sigma as sigma
from .result import Guarantee as Guarantee
from .result import SigmaResult as SigmaResult

__all__ = ["METHODS", "Guarantee", "Method", "SigmaResult", "sigma"]
