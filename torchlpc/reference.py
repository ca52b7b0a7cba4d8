"""Plain PyTorch loops over time: the ground truth for every fast path.

Nothing here is fast. Each function is a literal transcription of the defining
recurrence, so that the kernels, the custom-op autograd and every backend can be
checked against it. Autograd through :func:`allpole_reference` gives reference
gradients; :func:`allpole_vjp_reference` is the hand-written adjoint, checked
against those gradients in the tests and used as the kernel of the ``reference``
backend.

Shapes follow the ops: ``x (B, T)``, ``A (B, T, N)`` or time-invariant
``A (B, 1, N)``, ``zi (B, N)`` with ``zi[:, k] = y[-1-k]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["allpole_reference", "allpole_vjp_reference", "linear_recurrence_reference"]


def _coefficients_at(A: Tensor, t: int) -> Tensor:
    """A[:, t] for time-varying A, A[:, 0] for time-invariant A."""
    return A[:, t if A.shape[1] > 1 else 0]


def allpole_reference(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """``y[t] = x[t] - sum_{i=1..N} A[t, i-1] y[t-i]`` with ``y[-1-k] = zi[k]``.

    Differentiable by autograd; returns ``y`` of shape ``(B, T)``.
    """
    T = x.shape[1]
    # history[:, k] = y[t-1-k], most recent first, the same order as zi.
    history = zi
    outputs = []
    for t in range(T):
        y_t = x[:, t] - (_coefficients_at(A, t) * history).sum(-1)
        outputs.append(y_t)
        history = torch.cat([y_t[:, None], history[:, :-1]], dim=1)
    if not outputs:
        return x.clone()
    return torch.stack(outputs, dim=1)


def _padded_output(y: Tensor, zi: Tensor) -> Tensor:
    """``[y[-N], ..., y[-1], y[0], ..., y[T-1]]``: y with its initial state in front."""
    return torch.cat([zi.flip(-1), y], dim=-1)


def allpole_vjp_reference(
    grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The adjoint of :func:`allpole_reference`, by a loop backwards in time.

    ``grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1]) grad_x[t+i]``;
    ``grad_A[t, i-1] = -grad_x[t] conj(y[t-i])``;
    ``grad_zi[k] = -sum_t conj(A[t, t+k]) grad_x[t]``, which is the backward
    filter continued for N steps past t = 0 with zero input.
    Time-invariant A gets ``grad_A`` summed over time, shape ``(B, 1, N)``.

    The loop visits each time once, in the equivalent scatter form: when
    ``grad_x[s]`` is final, ``conj(A[s, i-1]) grad_x[s]`` is subtracted at
    time ``s - i`` for every i at once, and what lands before time 0 is
    ``grad_zi``. So it costs T steps of N operations whatever N is.
    """
    B, T = grad_y.shape
    N = A.shape[-1]
    # extended[:, N + t] holds grad_x at time t, so that times -N..-1 give grad_zi.
    extended = torch.cat([grad_y.new_zeros(B, N), grad_y], dim=1)
    y_padded = _padded_output(y, zi)
    time_invariant = A.shape[1] == 1
    grad_A = torch.zeros(B, 1 if time_invariant else T, N, dtype=grad_y.dtype, device=grad_y.device)
    for s in range(T - 1, -1, -1):
        g = extended[:, N + s].clone()
        # Times s-1, ..., s-N sit at positions N+s-1, ..., s: the lags in reverse.
        extended[:, s : N + s] -= _coefficients_at(A, s).conj().flip(-1) * g[:, None]
        # y[s-i] for i = 1..N, most recent first.
        history = y_padded[:, s : N + s].flip(-1)
        row = -g[:, None] * history.conj()
        if time_invariant:
            grad_A[:, 0] += row
        else:
            grad_A[:, s] = row
    grad_x = extended[:, N:]
    grad_zi = extended[:, :N].flip(-1)
    return grad_x, grad_A, grad_zi


def linear_recurrence_reference(a: Tensor, x: Tensor, zi: Tensor) -> Tensor:
    """``y[t] = a[t] y[t-1] + x[t]`` with ``y[-1] = zi``; a is ``(B, T)`` or ``(B, 1)``."""
    previous = zi
    outputs = []
    for t in range(x.shape[1]):
        previous = a[:, t if a.shape[1] > 1 else 0] * previous + x[:, t]
        outputs.append(previous)
    if not outputs:
        return x.clone()
    return torch.stack(outputs, dim=1)
