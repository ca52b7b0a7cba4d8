"""Numba kernels for CPU tensors.

Every kernel works on C-contiguous NumPy views of the op's tensors, writes into
preallocated outputs and runs in parallel over the batch. They are compiled on
first use (``cache=True`` keeps the machine code on disk), never at import.

The forward kernel gathers: ``y[t]`` is ``x[t]`` minus the dot product of the
coefficient row ``A[t]`` with the last N outputs. Backward kernels scatter: once
``grad_x[s]`` is final, its contribution ``conj(A[s, i-1]) grad_x[s]`` is pushed
to the N earlier times, so A is read row by row, as it lies in memory, instead of
along the shifted diagonal ``A[t + i, i - 1]`` that the gather form would need;
pushes that fall before time 0 land in ``grad_zi``. ``grad_A`` is written in the
same pass. No shifted, padded or flipped copy of A is ever made.

Fast-math is limited to reassociation and fused multiply-add, so that the dot
products vectorise; NaN and Inf still propagate.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, parallel=True, nogil=True, fastmath={"reassoc", "contract"})


@_jit
def allpole_fwd_kernel(x, A, zi, y):
    """A is (B, T, N), or (B, 1, N) for a time-invariant filter."""
    B, T = x.shape
    N = A.shape[2]
    step = 0 if A.shape[1] == 1 else 1
    head = min(N, T)
    for b in numba.prange(B):
        # The first N samples reach back into the initial state.
        for t in range(head):
            row = A[b, t * step]
            acc = x[b, t]
            for i in range(1, t + 1):
                acc -= row[i - 1] * y[b, t - i]
            for i in range(t + 1, N + 1):
                acc -= row[i - 1] * zi[b, i - t - 1]
            y[b, t] = acc
        if head == T:
            continue
        # The most recent outputs stay in registers and enter the sum last, so
        # the loop-carried dependency is a few multiply-adds long; the older
        # terms form a vectorised dot product that does not wait on them. A
        # vector load overlapping the latest scalar stores would also stall on
        # store forwarding, which keeping eight outputs in registers avoids.
        if N >= 8:
            y1, y2, y3, y4 = y[b, N - 1], y[b, N - 2], y[b, N - 3], y[b, N - 4]
            y5, y6, y7, y8 = y[b, N - 5], y[b, N - 6], y[b, N - 7], y[b, N - 8]
            for t in range(N, T):
                row = A[b, t * step]
                older = x[b, t]
                for i in range(9, N + 1):
                    older -= row[i - 1] * y[b, t - i]
                recent = row[7] * y8 + row[6] * y7 + row[5] * y6 + row[4] * y5
                value = older - recent - (row[3] * y4 + row[2] * y3) - row[1] * y2 - row[0] * y1
                y[b, t] = value
                y8, y7, y6, y5, y4, y3, y2, y1 = y7, y6, y5, y4, y3, y2, y1, value
        elif N >= 2:
            y1, y2 = y[b, N - 1], y[b, N - 2]
            for t in range(N, T):
                row = A[b, t * step]
                older = x[b, t]
                for i in range(3, N + 1):
                    older -= row[i - 1] * y[b, t - i]
                value = older - row[1] * y2 - row[0] * y1
                y[b, t] = value
                y2, y1 = y1, value
        else:
            y1 = y[b, 0]
            for t in range(1, T):
                y1 = x[b, t] - A[b, t * step, 0] * y1
                y[b, t] = y1


@_jit
def allpole_vjp_kernel(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    """grad_zi must arrive zeroed."""
    B, T = grad_y.shape
    N = A.shape[2]
    for b in numba.prange(B):
        for t in range(T):
            grad_x[b, t] = grad_y[b, t]
        for s in range(T - 1, -1, -1):
            g = grad_x[b, s]
            if s >= N:
                for i in range(1, N + 1):
                    grad_x[b, s - i] -= np.conj(A[b, s, i - 1]) * g
                if need_A:
                    for i in range(1, N + 1):
                        grad_A[b, s, i - 1] = -g * np.conj(y[b, s - i])
            else:
                for i in range(1, s + 1):
                    grad_x[b, s - i] -= np.conj(A[b, s, i - 1]) * g
                for i in range(s + 1, N + 1):
                    grad_zi[b, i - s - 1] -= np.conj(A[b, s, i - 1]) * g
                if need_A:
                    for i in range(1, s + 1):
                        grad_A[b, s, i - 1] = -g * np.conj(y[b, s - i])
                    for i in range(s + 1, N + 1):
                        grad_A[b, s, i - 1] = -g * np.conj(zi[b, i - s - 1])


@_jit
def allpole_ti_vjp_kernel(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_A):
    """grad_zi and grad_a must arrive zeroed; grad_a may be wider than a."""
    B, T = grad_y.shape
    N = a.shape[1]
    for b in numba.prange(B):
        conj_coefficients = np.conj(a[b])
        for t in range(T):
            grad_x[b, t] = grad_y[b, t]
        for s in range(T - 1, -1, -1):
            g = grad_x[b, s]
            if s >= N:
                for i in range(1, N + 1):
                    grad_x[b, s - i] -= conj_coefficients[i - 1] * g
                if need_A:
                    for i in range(1, N + 1):
                        grad_a[b, i - 1] -= g * np.conj(y[b, s - i])
            else:
                for i in range(1, s + 1):
                    grad_x[b, s - i] -= conj_coefficients[i - 1] * g
                for i in range(s + 1, N + 1):
                    grad_zi[b, i - s - 1] -= conj_coefficients[i - 1] * g
                if need_A:
                    for i in range(1, s + 1):
                        grad_a[b, i - 1] -= g * np.conj(y[b, s - i])
                    for i in range(s + 1, N + 1):
                        grad_a[b, i - 1] -= g * np.conj(zi[b, i - s - 1])
