"""Derivatives of the all-pole ops, written once in terms of the ops themselves.

With ``M_A`` the unit lower-triangular operator ``(M_A y)[t] = y[t] + sum_i
A[t, i-1] y[t-i]`` the filter solves ``M_A y = x - C_A zi``. Every derivative
is either that solve again (forward mode, double backward) or its adjoint
``M_A^{-H}``, a pass backwards in time that the ``allpole_vjp`` op fuses with
``grad_A`` and ``grad_zi``. The derivation is in DEVELOPERS.md.

The lag helpers below act on the *padded* signal ``[y[-N], ..., y[-1], y[0],
..., y[T-1]]`` whose first N entries are the initial state ``zi`` reversed, so
that ``y[t - i]`` with ``t < i`` reads ``zi[i - t - 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _padded(y: Tensor, zi: Tensor) -> Tensor:
    return torch.cat([zi.flip(-1), y], dim=-1)


def lagged_dot(A: Tensor, y: Tensor, zi: Tensor) -> Tensor:
    """``out[t] = sum_i A[t, i-1] y[t-i]``, shape ``(B, T)``; A may be ``(B, 1, N)``."""
    T, N = y.shape[-1], A.shape[-1]
    padded = _padded(y, zi)
    out = torch.zeros_like(y)
    for i in range(1, N + 1):
        out = out + A[..., i - 1] * padded[..., N - i : N - i + T]
    return out


def lagged_outer(g: Tensor, y: Tensor, zi: Tensor, time_invariant: bool) -> Tensor:
    """``out[t, i-1] = g[t] conj(y[t-i])``, summed over t when ``time_invariant``.

    Built one lag at a time, so a time-invariant result never passes through a
    ``(B, T, N)`` intermediate.
    """
    T, N = y.shape[-1], zi.shape[-1]
    padded = _padded(y, zi).conj()
    lags = [g * padded[..., N - i : N - i + T] for i in range(1, N + 1)]
    if time_invariant:
        return torch.stack([lag.sum(-1) for lag in lags], dim=-1)[..., None, :]
    return torch.stack(lags, dim=-1)


def lagged_scatter(weights: Tensor, g: Tensor, N: int) -> tuple[Tensor, Tensor]:
    """The transpose of the lag: ``out[s] = sum_{t - i = s} weights[t, i-1] g[t]``.

    Returns the part landing on ``y`` (``s >= 0``, shape ``(B, T)``) and the part
    landing on the initial state (``zi[k]`` for ``s = -1 - k``, shape ``(B, N)``).
    ``weights`` may be ``(B, 1, N)``, one row for every time step.
    """
    # Out of place, so that vmap can batch it.
    padded = sum(
        torch.nn.functional.pad(weights[..., i - 1] * g, (N - i, i)) for i in range(1, N + 1)
    )
    # With T = 0 a slice of all N entries would be an alias, which the legacy vmap
    # of batched double backward cannot batch.
    on_state = padded.flip(-1) if g.shape[-1] == 0 else padded[..., :N].flip(-1)
    return padded[..., N:], on_state
