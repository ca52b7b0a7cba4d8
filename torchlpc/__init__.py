"""Fast, differentiable, time-varying all-pole (LPC) filtering for PyTorch."""

from .functional import linear_recurrence, sample_wise_lpc

__all__ = ["sample_wise_lpc", "linear_recurrence"]
__version__ = "0.8.0.dev0"
