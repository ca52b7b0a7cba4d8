"""Numba kernels for CPU tensors.

Every kernel works on C-contiguous NumPy views of the op's tensors, writes into
preallocated outputs and runs in parallel over the batch. They are compiled on
first use (``cache=True`` keeps the machine code on disk), never at import.

The backward kernels index A along the shifted diagonal, ``A[t + i, i - 1]``,
instead of building a shifted or flipped copy of it, and write ``grad_A`` in the
same backwards-in-time pass that produces ``grad_x``.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, parallel=True, nogil=True, fastmath=False)


@_jit
def allpole_fwd_kernel(x, A, zi, y):
    B, T = x.shape
    N = A.shape[2]
    time_invariant = A.shape[1] == 1
    for b in numba.prange(B):
        for t in range(T):
            tA = 0 if time_invariant else t
            acc = x[b, t]
            for i in range(1, N + 1):
                past = y[b, t - i] if t >= i else zi[b, i - t - 1]
                acc -= A[b, tA, i - 1] * past
            y[b, t] = acc


@_jit
def allpole_vjp_kernel(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    B, T = grad_y.shape
    N = A.shape[2]
    time_invariant = A.shape[1] == 1
    for b in numba.prange(B):
        # Backwards in time: grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1]) grad_x[t+i].
        for t in range(T - 1, -1, -1):
            acc = grad_y[b, t]
            for i in range(1, min(N, T - 1 - t) + 1):
                tA = 0 if time_invariant else t + i
                acc -= np.conj(A[b, tA, i - 1]) * grad_x[b, t + i]
            grad_x[b, t] = acc
            if need_A:
                for i in range(1, N + 1):
                    past = y[b, t - i] if t >= i else zi[b, i - t - 1]
                    contribution = -acc * np.conj(past)
                    if time_invariant:
                        grad_A[b, 0, i - 1] += contribution
                    else:
                        grad_A[b, t, i - 1] = contribution
        # The same recursion continued to times -1..-N with zero input gives grad_zi.
        # grad_zi arrives zeroed, as does a time-invariant grad_A.
        for k in range(N):
            for i in range(k + 1, min(N, T + k) + 1):
                tA = 0 if time_invariant else i - k - 1
                grad_zi[b, k] -= np.conj(A[b, tA, i - 1]) * grad_x[b, i - k - 1]


def allpole_fwd(x: np.ndarray, A: np.ndarray, zi: np.ndarray, y: np.ndarray) -> None:
    allpole_fwd_kernel(x, A, zi, y)


def allpole_vjp(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A: bool) -> None:
    allpole_vjp_kernel(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A)
