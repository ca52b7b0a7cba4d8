"""Which numba kernel, and which path, a CPU call takes: decided from shapes alone.

Kept apart from :mod:`.cpu_numba` so that deciding does not import numba (see
:mod:`.cpu_compile`, which decides whether a call's kernels are compiled yet).
"""

from __future__ import annotations

import torch

# Lags carried in registers from this order on (two below it).
REGISTER_LAGS = 8

# Kernel families: each has its own loops, and a call compiles only its own.
FAMILIES = (1, 2, 3, 8)

# Sequences shorter than this stay on one thread: below it the extra pass and
# the hand-offs cost more than the threads give back.
SPLIT_MIN_STEPS = 1 << 15
# Orders up to which a time-invariant sequence is split over threads: the
# second pass costs N multiply-adds per sample.
SPLIT_MAX_INVARIANT_ORDER = 32


def family_of(N: int) -> int:
    """The kernel family of order N: 1, 2, 3 (for 3 to 7) or 8 (8 and up)."""
    return 1 if N == 1 else 2 if N == 2 else 3 if N < REGISTER_LAGS else 8


def split_over_time(B: int, T: int, N: int) -> bool:
    """Whether each time-invariant sequence runs over the threads rather than one
    thread a sequence. (First-order time-varying sequences gain nothing from it
    here: they are bound by memory traffic, which the second pass adds to.)"""
    return B < torch.get_num_threads() and T >= SPLIT_MIN_STEPS and N <= SPLIT_MAX_INVARIANT_ORDER
