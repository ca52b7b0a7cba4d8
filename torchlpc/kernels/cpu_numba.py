"""Numba kernels for CPU tensors.

Every kernel works on C-contiguous NumPy views of the op's tensors and writes
into preallocated outputs, one batch row at a time; :func:`run_over_batch` splits
the batch over threads. They are compiled on
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

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

_FASTMATH = {"reassoc", "contract"}
_sequential = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)


@_sequential
def _allpole_fwd_row(x, A, zi, y):
    """One sequence: x (T,), A (T, N) or (1, N) for a time-invariant filter."""
    T = x.shape[0]
    N = A.shape[1]
    step = 0 if A.shape[0] == 1 else 1
    head = min(N, T)
    # The first N samples reach back into the initial state.
    for t in range(head):
        row = A[t * step]
        acc = x[t]
        for i in range(1, t + 1):
            acc -= row[i - 1] * y[t - i]
        for i in range(t + 1, N + 1):
            acc -= row[i - 1] * zi[i - t - 1]
        y[t] = acc
    if head == T:
        return
    # The most recent outputs stay in registers and enter the sum last, so
    # the loop-carried dependency is a few multiply-adds long; the older
    # terms form a vectorised dot product that does not wait on them. A
    # vector load overlapping the latest scalar stores would also stall on
    # store forwarding, which keeping eight outputs in registers avoids.
    if N >= 8:
        y1, y2, y3, y4 = y[N - 1], y[N - 2], y[N - 3], y[N - 4]
        y5, y6, y7, y8 = y[N - 5], y[N - 6], y[N - 7], y[N - 8]
        for t in range(N, T):
            row = A[t * step]
            older = x[t]
            for i in range(9, N + 1):
                older -= row[i - 1] * y[t - i]
            recent = row[7] * y8 + row[6] * y7 + row[5] * y6 + row[4] * y5
            value = older - recent - (row[3] * y4 + row[2] * y3) - row[1] * y2 - row[0] * y1
            y[t] = value
            y8, y7, y6, y5, y4, y3, y2, y1 = y7, y6, y5, y4, y3, y2, y1, value
    elif N >= 2:
        y1, y2 = y[N - 1], y[N - 2]
        for t in range(N, T):
            row = A[t * step]
            older = x[t]
            for i in range(3, N + 1):
                older -= row[i - 1] * y[t - i]
            value = older - row[1] * y2 - row[0] * y1
            y[t] = value
            y2, y1 = y1, value
    else:
        y1 = y[0]
        for t in range(1, T):
            y1 = x[t] - A[t * step, 0] * y1
            y[t] = y1


@_sequential
def _allpole_vjp_row(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    """One sequence; grad_zi must arrive zeroed."""
    T = grad_y.shape[0]
    N = A.shape[1]
    for t in range(T):
        grad_x[t] = grad_y[t]
    for s in range(T - 1, -1, -1):
        g = grad_x[s]
        if s >= N:
            for i in range(1, N + 1):
                grad_x[s - i] -= np.conj(A[s, i - 1]) * g
            if need_A:
                for i in range(1, N + 1):
                    grad_A[s, i - 1] = -g * np.conj(y[s - i])
        else:
            for i in range(1, s + 1):
                grad_x[s - i] -= np.conj(A[s, i - 1]) * g
            for i in range(s + 1, N + 1):
                grad_zi[i - s - 1] -= np.conj(A[s, i - 1]) * g
            if need_A:
                for i in range(1, s + 1):
                    grad_A[s, i - 1] = -g * np.conj(y[s - i])
                for i in range(s + 1, N + 1):
                    grad_A[s, i - 1] = -g * np.conj(zi[i - s - 1])


@_sequential
def _allpole_ti_vjp_row(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_A):
    """One sequence, a (N,); grad_zi and grad_a must arrive zeroed, grad_a may be wider."""
    T = grad_y.shape[0]
    N = a.shape[0]
    conj_coefficients = np.conj(a)
    for t in range(T):
        grad_x[t] = grad_y[t]
    for s in range(T - 1, -1, -1):
        g = grad_x[s]
        if s >= N:
            for i in range(1, N + 1):
                grad_x[s - i] -= conj_coefficients[i - 1] * g
            if need_A:
                for i in range(1, N + 1):
                    grad_a[i - 1] -= g * np.conj(y[s - i])
        else:
            for i in range(1, s + 1):
                grad_x[s - i] -= conj_coefficients[i - 1] * g
            for i in range(s + 1, N + 1):
                grad_zi[i - s - 1] -= conj_coefficients[i - 1] * g
            if need_A:
                for i in range(1, s + 1):
                    grad_a[i - 1] -= g * np.conj(y[s - i])
                for i in range(s + 1, N + 1):
                    grad_a[i - 1] -= g * np.conj(zi[i - s - 1])


# Drivers over the batch. They release the GIL, so run_over_batch can give each
# Python worker thread a slice of the batch.


@_sequential
def allpole_fwd_kernel(x, A, zi, y):
    for b in range(x.shape[0]):
        _allpole_fwd_row(x[b], A[b], zi[b], y[b])


@_sequential
def allpole_vjp_kernel(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    for b in range(grad_y.shape[0]):
        _allpole_vjp_row(grad_y[b], A[b], y[b], zi[b], grad_x[b], grad_A[b], grad_zi[b], need_A)


@_sequential
def allpole_ti_vjp_kernel(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_A):
    for b in range(grad_y.shape[0]):
        _allpole_ti_vjp_row(grad_y[b], a[b], y[b], zi[b], grad_x[b], grad_a[b], grad_zi[b], need_A)


# Below this many coefficient reads a call runs on the calling thread alone:
# handing work to other threads costs more than it saves.
_PARALLEL_MIN_WORK = 1 << 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torchlpc")
        return _pool


def run_over_batch(kernel, work: int, *arguments) -> None:
    """Call ``kernel(*arguments)`` with the batch (axis 0 of every array) split over threads.

    Up to ``torch.get_num_threads()`` threads, so that the CPU kernels follow PyTorch's
    setting, take slices of the batch from a shared counter; the calling thread works
    too and a helper that has not started by the time the work is gone is cancelled.
    A busy machine therefore never makes a call wait for a thread that is not
    scheduled. (numba's own ``parallel=True`` does: its OpenMP layer competes with
    PyTorch's and a training loop of small steps ran 9-20x slower on a busy 2-core
    machine, and its workqueue layer aborts the process when two threads launch
    kernels at once.)
    """
    batch = arguments[0].shape[0]
    threads = min(batch, torch.get_num_threads()) if work >= _PARALLEL_MIN_WORK else 1
    if threads <= 1:
        kernel(*arguments)
        return
    pieces = min(batch, 4 * threads)
    bounds = [batch * k // pieces for k in range(pieces + 1)]
    counter = itertools.count()

    def drain() -> None:
        for piece in iter(counter.__next__, None):
            if piece >= pieces:
                return
            lo, hi = bounds[piece], bounds[piece + 1]
            kernel(*(a[lo:hi] if isinstance(a, np.ndarray) else a for a in arguments))

    helpers = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)]
    drain()
    for helper in helpers:
        if not helper.cancel():
            helper.result()
