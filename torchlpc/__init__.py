"""Fast, differentiable, time-varying all-pole (LPC) filtering for PyTorch."""

from . import core, nn, recurrence
from .analysis import levinson_durbin, lpc_analysis, upsample_coefficients
from .coefficients import (
    is_stable,
    lpc_to_reflection,
    lpc_to_roots,
    reflection_to_lpc,
    roots_to_lpc,
    sos_to_lpc,
)
from .core import LPC
from .filters import lfilter
from .functional import empty_cpu_cache, linear_recurrence, sample_wise_lpc
from .recurrence import Recurrence

EXTENSION_LOADED = True
"""torchlpc 0.7's flag, kept for code that reads it. In 0.7 it told whether the
compiled extension, and with it ``torch.ops.torchlpc.lpc`` and
``torch.ops.torchlpc.scan``, had loaded. Here those two ops are registered at
import, always, so it is always true. It says nothing about which backend runs
(see ``TORCHLPC_BACKEND``); no extension is compiled."""

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
    "LPC",
    "Recurrence",
    "EXTENSION_LOADED",
    "core",
    "recurrence",
]
__version__ = "0.8.0.dev0"
