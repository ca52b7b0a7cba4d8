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
    """
    B, T = grad_y.shape
    N = A.shape[-1]
    # extended[:, s] holds grad_x at time s - N, so that times -N..-1 give grad_zi.
    extended = torch.zeros(B, T + N, dtype=grad_y.dtype, device=grad_y.device)
    for t in range(T - 1, -N - 1, -1):
        value = grad_y[:, t] if t >= 0 else torch.zeros_like(extended[:, 0])
        for i in range(1, N + 1):
            s = t + i
            if 0 <= s < T:
                value = value - _coefficients_at(A, s)[:, i - 1].conj() * extended[:, s + N]
        extended[:, t + N] = value
    grad_x = extended[:, N:]
    grad_zi = extended[:, :N].flip(-1)

    y_padded = _padded_output(y, zi)
    grad_A = torch.zeros(B, T, N, dtype=grad_y.dtype, device=grad_y.device)
    for i in range(1, N + 1):
        # y[t - i] for t = 0..T-1 sits at padded positions N - i .. N - i + T - 1.
        grad_A[:, :, i - 1] = -grad_x * y_padded[:, N - i : N - i + T].conj()
    if A.shape[1] == 1:
        grad_A = grad_A.sum(1, keepdim=True)
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
