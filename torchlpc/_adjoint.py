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


# Each helper loops in Python over the shorter of time and lag, so that neither an
# order far above T nor T far above N costs many iterations (and the scatter never
# builds N padded copies of a length T + N signal).


def _row(A: Tensor, t: int) -> Tensor:
    """``A[..., t, :]``, or the one row of a time-invariant ``(B, 1, N)``."""
    return A[..., t if A.shape[-2] > 1 else 0, :]


def _history(padded: Tensor, t: int, N: int) -> Tensor:
    """``y[t-i]`` for ``i = 1..N``, most recent first, from the padded signal."""
    return padded[..., t : t + N].flip(-1)


def lagged_dot(A: Tensor, y: Tensor, zi: Tensor) -> Tensor:
    """``out[t] = sum_i A[t, i-1] y[t-i]``, shape ``(B, T)``; A may be ``(B, 1, N)``."""
    T, N = y.shape[-1], A.shape[-1]
    padded = _padded(y, zi)
    if T < N:
        if T == 0:
            return torch.zeros_like(y)
        return torch.stack([(_row(A, t) * _history(padded, t, N)).sum(-1) for t in range(T)], dim=-1)
    out = torch.zeros_like(y)
    for i in range(1, N + 1):
        out = out + A[..., i - 1] * padded[..., N - i : N - i + T]
    return out


def lagged_outer(g: Tensor, y: Tensor, zi: Tensor, time_invariant: bool) -> Tensor:
    """``out[t, i-1] = g[t] conj(y[t-i])``, summed over t when ``time_invariant``.

    Built one lag (or one time step) at a time, so a time-invariant result never
    passes through a ``(B, T, N)`` intermediate.
    """
    T, N = y.shape[-1], zi.shape[-1]
    padded = _padded(y, zi).conj()
    if T < N:
        rows = [g[..., t, None] * _history(padded, t, N) for t in range(T)]
        if time_invariant:
            return sum(rows, torch.zeros_like(zi))[..., None, :]
        # With T = 0, an empty (B, 0, N).
        return torch.stack(rows, dim=-2) if rows else g[..., None] * padded[..., None, :N]
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
    T = g.shape[-1]
    pad = torch.nn.functional.pad
    # Out of place, so that vmap can batch it.
    if T < N:
        # Time t reaches t - N .. t - 1, padded positions t .. t + N - 1.
        padded = sum(
            (pad(_row(weights, t).flip(-1) * g[..., t, None], (t, T - t)) for t in range(T)),
            torch.zeros_like(pad(g, (N, 0))),
        )
    else:
        padded = sum(pad(weights[..., i - 1] * g, (N - i, i)) for i in range(1, N + 1))
    # With T = 0 a slice of all N entries would be an alias, which the legacy vmap
    # of batched double backward cannot batch.
    on_state = padded.flip(-1) if T == 0 else padded[..., :N].flip(-1)
    return padded[..., N:], on_state
