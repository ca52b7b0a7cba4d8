"""torchlpc 0.7's ``torchlpc.recurrence``: ``Recurrence`` and its alias ``RecurrenceCUDA``.

``Recurrence.apply(decay, impulse, initial_state)`` is
:func:`torchlpc.linear_recurrence` with 0.7's argument names; 0.7's helpers
(``_cuda_recurrence``, ``_cpu_recurrence``, the runners) have no counterpart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import _linear_recurrence

__all__ = ["Recurrence", "RecurrenceCUDA"]


class Recurrence(torch.autograd.Function):
    """torchlpc 0.7's autograd Function for ``y[t] = decay[t] y[t-1] + impulse[t]``.

    ``Recurrence.apply(decay, impulse, initial_state)`` with decay and impulse
    ``(B, T)`` and initial_state ``(B,)`` returns y ``(B, T)``. It is
    :func:`torchlpc.linear_recurrence` (so it also takes its leading dimensions,
    broadcasting, a time-invariant decay and ``initial_state=None`` for zeros);
    its errors name ``Recurrence.apply``. ``apply`` is the one entry point (0.7's
    ``forward`` and ``backward`` were never meant to be called directly); the
    derivatives are those of the ``torchlpc::allpole`` op with ``A = -decay``.
    """

    @classmethod
    def apply(cls, decay: Tensor, impulse: Tensor, initial_state: Tensor) -> Tensor:
        return _linear_recurrence(
            "Recurrence.apply", decay, impulse, initial_state, ("decay", "impulse", "initial_state")
        )


RecurrenceCUDA = Recurrence
