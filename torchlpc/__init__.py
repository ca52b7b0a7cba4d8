"""Fast, differentiable, time-varying all-pole (LPC) filtering for PyTorch."""

from . import nn
from .analysis import levinson_durbin, lpc_analysis, upsample_coefficients
from .coefficients import (
    is_stable,
    lpc_to_reflection,
    lpc_to_roots,
    reflection_to_lpc,
    roots_to_lpc,
    sos_to_lpc,
)
from .filters import lfilter
from .functional import empty_cpu_cache, linear_recurrence, sample_wise_lpc

__all__ = [
    "sample_wise_lpc",
    "linear_recurrence",
    "lfilter",
    "reflection_to_lpc",
    "lpc_to_reflection",
    "is_stable",
    "roots_to_lpc",
    "lpc_to_roots",
    "sos_to_lpc",
    "levinson_durbin",
    "lpc_analysis",
    "upsample_coefficients",
    "nn",
    "empty_cpu_cache",
]
__version__ = "0.8.0.dev0"
