"""Numba kernels for CPU tensors.

Every kernel works on C-contiguous NumPy views of the op's tensors and writes
into preallocated outputs, one batch row at a time; :func:`run_over_batch` splits
the batch over threads. They are compiled on first use (``cache=True`` keeps the
machine code on disk), never at import.

Forward (gather form): ``y[t] = x[t] - sum_i A[t, i-1] y[t-i]``. The one true
dependency is on the newest outputs, so the last eight (two for N < 8) stay in
registers and enter the sum last, in a fixed order, so that ``y[t-1]`` is one
multiply-add away from ``y[t]``. The older lags are a vector dot product read
straight from ``y`` (:mod:`._simd`), which never waits on the latest stores.

Backward (scatter form, backwards in time): once ``grad_x[s]`` is final its
contribution ``conj(A[s, i-1]) grad_x[s]`` goes to the N earlier times, so A is
read row by row, as it lies in memory, rather than along the shifted diagonal
``A[t + i, i - 1]`` of the gather form. The contributions to the eight (two)
next times are carried in registers; the rest are a vector update of
``grad_x``. Pushes that fall before time 0 land in ``grad_zi``. ``grad_A`` is
written in the same pass; a time-invariant filter sums it over time, block by
block, as dot products in a wide accumulator. No shifted, padded or flipped
copy of A is ever made.

Only contraction into fused multiply-adds is allowed (no reassociation), so the
order of every sum is the one written here; NaN and Inf propagate.

Entry points: ``FWD_KERNELS[family]`` and ``VJP_KERNELS[family, invariant]``, one
per order family (:mod:`.cpu_plan`), so that a call compiles only its own
family's loops; ``linear_recurrence_kernel`` / ``linear_recurrence_vjp_kernel``;
and the split of one time-invariant sequence over time, driven from Python
(``_invariant_fwd_over_time``). The Python wrappers at the end (``allpole``,
``allpole_vjp``, ``linear_recurrence``, ``linear_recurrence_vjp``) choose among them.
"""

from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numba
import numpy as np
import torch
from numba.core import types
from numba.extending import overload

from ._buffers import output_like
from .cpu_plan import FAMILIES, REGISTER_LAGS as _REGISTER_LAGS, family_of, split_over_time
from ._simd import dot_conj, dot_reversed, set_neg_scaled_conj_reversed, sub_conj_scaled_reversed

_kernel = numba.njit(cache=True, nogil=True, fastmath={"contract"})

# Time steps between two sums of a time-invariant grad_A: the block's grad_x and
# y stay in the first-level cache for its N dot products.
_BLOCK = 512


# Coefficients are indexed flat, ``a[t * stride + i - 1]`` with stride 0 for a
# time-invariant filter: a row view per time step would cost a reference count.
# Each order has its own short loop: one loop serving several orders keeps
# registers for all of them and spills.

# ---------------------------------------------------------------------------
# Forward: y[0 .. N-1] reach back into zi (_fwd_head), the rest do not.


@_kernel
def _fwd_head(x, a, stride, zi, y, head):
    N = zi.shape[0]
    for t in range(head):
        acc = x[t]
        for i in range(1, t + 1):
            acc -= a[t * stride + i - 1] * y[t - i]
        for i in range(t + 1, N + 1):
            acc -= a[t * stride + i - 1] * zi[i - t - 1]
        y[t] = acc


# First order, one sequence: step by step, one multiply-add per sample on the
# critical path. A blocked scan (blocks run from a zero state, interleaved, then
# each block's response to the state before it added through products of the
# poles) was faster by a fraction, but its extra rounding per sample and the
# rounding of the products cost up to 5x the error of this plain recursion for
# poles near 1 (0.9999: 1.5e-5 against 2.8e-6 in float32). Indices are unsigned
# (_u): numba checks every signed index for a negative value.
_u = np.uint64


@_kernel
def _fwd_order1(x, a, stride, sign, y):
    """y[t] = x[t] - sign a[t] y[t-1] for t >= 1 (y[0] is set).

    ``sign`` is 1 for LPC coefficients; linear_recurrence passes its pole with -1,
    which costs a multiplication (exact) here instead of a negated copy of it.
    """
    s = _u(stride)
    previous = y[0]
    for t in range(_u(1), _u(x.shape[0])):
        previous = x[t] - (sign * a[t * s]) * previous
        y[t] = previous


# Four first-order sequences at once, for batches of them. Step by step, a
# recursion waits one multiply-add per step; four independent ones fill that
# wait, with the same arithmetic as the one-row recursion (2.4x faster than the
# blocked scan that ran before). Row r runs r * _SKEW steps behind row 0: rows
# whose length is a multiple of 1024 samples lie a multiple of 4 KiB apart, and
# a load from an address equal, modulo 4 KiB, to that of a store in flight waits
# for the store ("4K aliasing"): in step, such rows ran 1.6x slower. ``minus`` picks y = x - a y[t-1] (LPC
# coefficients) or y = x + a y[t-1] (linear_recurrence's pole); the branch is
# loop-invariant, and compiled out of the loops.
_ROWS = 4
_SKEW = 32


@_kernel
def _order1_groups(x):
    """How many groups of four of the rows of x (B, T) go together: none below
    T = 4 _SKEW + 1."""
    return x.shape[0] // _ROWS if x.shape[1] > 4 * _SKEW else 0


@_kernel
def _fwd_order1_rows_step(x, a, minus, y, r, t):
    if minus:
        y[r, t] = x[r, t] - a[r, t] * y[r, t - 1]
    else:
        y[r, t] = x[r, t] + a[r, t] * y[r, t - 1]


@_kernel
def _fwd_order1_rows(x, a, minus, y, b):
    """Rows b .. b+3 of x, a, y (B, T) from t = 1 (y[:, 0] is set); T > 4 _SKEW."""
    T, S = x.shape[1], _SKEW
    for t in range(1, 1 + 3 * S):  # row r starts at step r S
        for r in range(_ROWS):
            if t - r * S >= 1:
                _fwd_order1_rows_step(x, a, minus, y, b + r, t - r * S)
    r0, r1, r2, r3 = _u(b), _u(b + 1), _u(b + 2), _u(b + 3)
    s1, s2, s3 = _u(S), _u(2 * S), _u(3 * S)
    p0, p1, p2, p3 = y[r0, 3 * S], y[r1, 2 * S], y[r2, S], y[r3, 0]
    for t in range(s3 + _u(1), _u(T)):
        if minus:
            p0, p1 = x[r0, t] - a[r0, t] * p0, x[r1, t - s1] - a[r1, t - s1] * p1
            p2, p3 = x[r2, t - s2] - a[r2, t - s2] * p2, x[r3, t - s3] - a[r3, t - s3] * p3
        else:
            p0, p1 = x[r0, t] + a[r0, t] * p0, x[r1, t - s1] + a[r1, t - s1] * p1
            p2, p3 = x[r2, t - s2] + a[r2, t - s2] * p2, x[r3, t - s3] + a[r3, t - s3] * p3
        y[r0, t], y[r1, t - s1], y[r2, t - s2], y[r3, t - s3] = p0, p1, p2, p3
    for t in range(T, T + 3 * S):  # and row r ends r S steps after row 0
        for r in range(1, _ROWS):
            if t - r * S < T:
                _fwd_order1_rows_step(x, a, minus, y, b + r, t - r * S)


@_kernel
def _order1_grad_a(grad_x, y, grad_a, minus, low, high):
    """grad_a[t + 1] = -+ grad_x[t + 1] conj(y[t]) for t in [low, high)."""
    if minus:
        for t in range(_u(low), _u(high)):
            grad_a[t + _u(1)] = -(grad_x[t + _u(1)] * np.conj(y[t]))
    else:
        for t in range(_u(low), _u(high)):
            grad_a[t + _u(1)] = grad_x[t + _u(1)] * np.conj(y[t])


@_kernel
def _bwd_order1_rows_step(grad_y, a, minus, grad_x, r, t):
    """grad_x[r, t] from grad_x[r, t+1]."""
    if minus:
        grad_x[r, t] = grad_y[r, t] - np.conj(a[r, t + 1]) * grad_x[r, t + 1]
    else:
        grad_x[r, t] = grad_y[r, t] + np.conj(a[r, t + 1]) * grad_x[r, t + 1]


@_kernel
def _bwd_order1_rows(grad_y, a, minus, y, zi, grad_x, grad_a, grad_zi, need_a, b):
    """The backward of _fwd_order1_rows for rows b .. b+3: grad_x backwards in time,
    row r r _SKEW steps behind row 0, then grad_a row by row in a vectorised pass of
    its own (in the recursion's loop, its eight more streams made the step twice as
    slow); the state zi is (B,)."""
    T, S = grad_y.shape[1], _SKEW
    last = T - 1
    for r in range(_ROWS):
        grad_x[b + r, last] = grad_y[b + r, last]
    for u in range(1, 1 + 3 * S):  # u steps from the end
        for r in range(_ROWS):
            if u - r * S >= 1:
                _bwd_order1_rows_step(grad_y, a, minus, grad_x, b + r, last - u + r * S)
    r0, r1, r2, r3 = _u(b), _u(b + 1), _u(b + 2), _u(b + 3)
    s1, s2, s3 = _u(S), _u(2 * S), _u(3 * S)
    e = _u(last) - s3  # row 0's next time, plus one
    q0, q1, q2, q3 = grad_x[r0, e], grad_x[r1, e + s1], grad_x[r2, e + s2], grad_x[r3, e + s3]
    for j in range(_u(0), e):
        t = e - _u(1) - j
        c0, c1 = np.conj(a[r0, t + _u(1)]), np.conj(a[r1, t + s1 + _u(1)])
        c2, c3 = np.conj(a[r2, t + s2 + _u(1)]), np.conj(a[r3, t + s3 + _u(1)])
        if minus:
            q0, q1 = grad_y[r0, t] - c0 * q0, grad_y[r1, t + s1] - c1 * q1
            q2, q3 = grad_y[r2, t + s2] - c2 * q2, grad_y[r3, t + s3] - c3 * q3
        else:
            q0, q1 = grad_y[r0, t] + c0 * q0, grad_y[r1, t + s1] + c1 * q1
            q2, q3 = grad_y[r2, t + s2] + c2 * q2, grad_y[r3, t + s3] + c3 * q3
        grad_x[r0, t], grad_x[r1, t + s1], grad_x[r2, t + s2], grad_x[r3, t + s3] = q0, q1, q2, q3
    for u in range(T, T + 3 * S):  # and row r ends r S steps after row 0
        for r in range(1, _ROWS):
            if u - r * S <= last:
                _bwd_order1_rows_step(grad_y, a, minus, grad_x, b + r, last - u + r * S)
    for r in range(b, b + _ROWS):
        first = grad_x[r, 0]
        if need_a:
            _order1_grad_a(grad_x[r], y[r], grad_a[r], minus, 0, last)
            grad_a[r, 0] = -(first * np.conj(zi[r])) if minus else first * np.conj(zi[r])
        grad_zi[r] = -(np.conj(a[r, 0]) * first) if minus else np.conj(a[r, 0]) * first


@_kernel
def _fwd_order2(x, a, stride, y):
    s = _u(stride)
    y1, y2 = y[1], y[0]
    for t in range(_u(2), _u(x.shape[0])):
        r = t * s
        value = (x[t] - a[r + _u(1)] * y2) - a[r] * y1
        y[t] = value
        y2, y1 = y1, value


@_kernel
def _fwd_order2_pair(x, a, y, u, b, v, stride):
    """_fwd_order2 of two sequences at once (x, a -> y and u, b -> v): the step is
    one multiply-add's latency long, and two independent ones fill it."""
    s = _u(stride)
    y1, y2, v1, v2 = y[1], y[0], v[1], v[0]
    for t in range(_u(2), _u(x.shape[0])):
        r = t * s
        first = (x[t] - a[r + _u(1)] * y2) - a[r] * y1
        second = (u[t] - b[r + _u(1)] * v2) - b[r] * v1
        y[t], v[t] = first, second
        y2, y1, v2, v1 = y1, first, v1, second


@_kernel
def _fwd_short(x, a, stride, N, y):
    """3 <= N < 8: the two newest outputs in registers, the older ones read from y."""
    y1, y2 = y[N - 1], y[N - 2]
    s, n = _u(stride), _u(N)
    for t in range(n, _u(x.shape[0])):
        r = t * s
        acc = x[t]
        for i in range(_u(3), n + _u(1)):
            acc -= a[r + i - _u(1)] * y[t - i]
        value = (acc - a[r + _u(1)] * y2) - a[r] * y1
        y[t] = value
        y2, y1 = y1, value


@_kernel
def _fwd_long(x, a, stride, N, y):
    """N >= 8: the eight newest outputs in registers, the older ones a vector dot product."""
    y1, y2, y3, y4 = y[N - 1], y[N - 2], y[N - 3], y[N - 4]
    y5, y6, y7, y8 = y[N - 5], y[N - 6], y[N - 7], y[N - 8]
    s = _u(stride)
    for t in range(_u(N), _u(x.shape[0])):
        r = t * s
        older = dot_reversed(a, r + _u(8), y, t - _u(9), N - 8)
        acc = (x[t] - older) - (
            (a[r + _u(7)] * y8 + a[r + _u(6)] * y7) + (a[r + _u(5)] * y6 + a[r + _u(4)] * y5)
        )
        acc = acc - (a[r + _u(3)] * y4 + a[r + _u(2)] * y3)
        value = (acc - a[r + _u(1)] * y2) - a[r] * y1
        y[t] = value
        y8, y7, y6, y5, y4, y3, y2, y1 = y7, y6, y5, y4, y3, y2, y1, value


# Kernel families. Each order class has its own loop (above), and a call compiles
# only its own: a family is passed down as a literal integer (1, 2, 3 for 3..7,
# 8 for 8 and more), and the overloads below choose the loop while the kernel is
# typed, so that the other loops are never compiled. One driver branching on N at
# run time compiled every loop, forward and backward, order 1 to 64, on the first
# call of any order: 5 s forward and 14 s backward of a cold start. The
# families and the choice between them are in cpu_plan.


def _literal(family) -> int:
    if not isinstance(family, types.IntegerLiteral):
        raise numba.errors.TypingError("the kernel family must be a literal integer")
    return family.literal_value


def _fwd_steps(x, a, stride, N, y, family):
    """y[t] for t >= N, the loop of one family (chosen at compile time)."""
    raise NotImplementedError("numba kernels only")


@overload(_fwd_steps, prefer_literal=True)
def _fwd_steps_of_family(x, a, stride, N, y, family):
    family = _literal(family)
    if family == 1:
        return lambda x, a, stride, N, y, family: _fwd_order1(x, a, stride, y.dtype.type(1), y)
    if family == 2:
        return lambda x, a, stride, N, y, family: _fwd_order2(x, a, stride, y)
    if family == 3:
        return lambda x, a, stride, N, y, family: _fwd_short(x, a, stride, N, y)
    return lambda x, a, stride, N, y, family: _fwd_long(x, a, stride, N, y)


@_kernel
def _fwd_family(x, a, stride, zi, y, family):
    """The filter over one sequence, for an order of the (literal) family."""
    T = x.shape[0]
    N = zi.shape[0]
    head = min(N, T)
    _fwd_head(x, a, stride, zi, y, head)
    if head < T:
        _fwd_steps(x, a, stride, N, y, family)


@_kernel
def _fwd(x, a, stride, zi, y):
    """The filter over one sequence, any order; x and y may be the same array.
    (For the callers whose order is only known at run time: it compiles every family.)"""
    N = zi.shape[0]
    if N == 1:
        _fwd_family(x, a, stride, zi, y, 1)
    elif N == 2:
        _fwd_family(x, a, stride, zi, y, 2)
    elif N < _REGISTER_LAGS:
        _fwd_family(x, a, stride, zi, y, 3)
    else:
        _fwd_family(x, a, stride, zi, y, 8)


# ---------------------------------------------------------------------------
# Backward, time-varying. Below eight lags, the gather form
#     grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1]) grad_x[t+i]
# reads A along the shifted diagonal: those N rows lie within a few cache lines,
# and the newest values stay in registers as in the forward. From eight lags on,
# the scatter form reads A by rows and pushes into grad_x, so that A and grad_A
# are streamed in memory order. grad_A[t] is written in the same step.


@_kernel
def _bwd_checked_step(grad_y, a, y, zi, grad_x, grad_A, need_A, t):
    """One gather step with every bound checked: for the first and the last N steps."""
    T = grad_y.shape[0]
    N = zi.shape[0]
    g = grad_y[t]
    for i in range(1, min(N, T - 1 - t) + 1):
        g -= np.conj(a[(t + i) * N + i - 1]) * grad_x[t + i]
    grad_x[t] = g
    if need_A:
        for i in range(1, N + 1):
            past = y[t - i] if i <= t else zi[i - t - 1]
            grad_A[t * N + i - 1] = -g * np.conj(past)


@_kernel
def _bwd_order1(grad_y, a, sign, y, zi, grad_x, grad_a, need_a):
    """N = 1 and T >= 2, all of it: grad_x[t] = grad_y[t] - conj(c[t+1]) grad_x[t+1]
    with c = sign a, step by step backwards in time (see _fwd_order1); then the
    gradient of a, sign times that of c, in a vectorised pass of its own; grad_zi
    is returned."""
    T = _u(grad_y.shape[0])
    following = grad_y[T - _u(1)]
    grad_x[T - _u(1)] = following
    for j in range(_u(1), T):
        t = T - _u(1) - j
        following = grad_y[t] - np.conj(sign * a[t + _u(1)]) * following
        grad_x[t] = following
    if need_a:
        scale = -np.conj(sign)
        for t in range(_u(1), T):
            grad_a[t] = scale * grad_x[t] * np.conj(y[t - _u(1)])
        grad_a[0] = scale * grad_x[0] * np.conj(zi[0])
    return -np.conj(sign * a[0]) * grad_x[0]


@_kernel
def _grad_A_order2(grad_x, y, grad_A, high, low):
    """grad_A[t] = -grad_x[t] conj(y[t-1], y[t-2]) for t = low .. high (>= 2): for two
    sequences at once, a pass of its own, which vectorises, rather than four scalar
    stores in every step of the recursion."""
    two = _u(2)
    for j in range(_u(high - low + 1)):
        t = _u(low) + j
        g = grad_x[t]
        grad_A[two * t] = -g * np.conj(y[t - _u(1)])
        grad_A[two * t + _u(1)] = -g * np.conj(y[t - two])


@_kernel
def _bwd_order2(grad_y, a, y, grad_x, grad_A, need_A, high, low):
    g1, g2 = grad_x[high + 1], grad_x[high + 2]
    one, two = _u(1), _u(2)
    for j in range(_u(high - low + 1)):
        t = _u(high) - j
        g = (grad_y[t] - np.conj(a[two * t + _u(5)]) * g2) - np.conj(a[two * t + two]) * g1
        grad_x[t] = g
        # One sequence waits a multiply-add per step; the stores fit in that.
        if need_A:
            grad_A[two * t] = -g * np.conj(y[t - one])
            grad_A[two * t + one] = -g * np.conj(y[t - two])
        g2, g1 = g1, g


@_kernel
def _bwd_short(grad_y, a, N, y, grad_x, grad_A, need_A, high, low):
    g1, g2 = grad_x[high + 1], grad_x[high + 2]
    n, one = _u(N), _u(1)
    for j in range(_u(high - low + 1)):
        t = _u(high) - j
        acc = grad_y[t]
        for i in range(_u(3), n + one):
            acc -= np.conj(a[(t + i) * n + i - one]) * grad_x[t + i]
        g = (acc - np.conj(a[(t + _u(2)) * n + one]) * g2) - np.conj(a[(t + one) * n]) * g1
        grad_x[t] = g
        if need_A:
            set_neg_scaled_conj_reversed(grad_A, t * n, y, t - one, g, N)
        g2, g1 = g1, g


@_kernel
def _bwd_gather_last_steps(grad_y, a, y, zi, grad_x, grad_A, need_A):
    """The last N steps of the gather form, whose lags run past T - 1; returns the
    next step, the first of the interior (t + N <= T - 1)."""
    T = grad_y.shape[0]
    t = T - 1
    while t > T - 1 - zi.shape[0] and t >= 0:
        _bwd_checked_step(grad_y, a, y, zi, grad_x, grad_A, need_A, t)
        t -= 1
    return t


@_kernel
def _bwd_gather_first_steps(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, t):
    """Steps t .. 0, which reach zi, then grad_zi."""
    while t >= 0:
        _bwd_checked_step(grad_y, a, y, zi, grad_x, grad_A, need_A, t)
        t -= 1
    _grad_zi(a, zi.shape[0], grad_x, grad_zi)


def _bwd_gather_steps(grad_y, a, N, y, grad_x, grad_A, need_A, high, family):
    """The unchecked gather steps high .. N of the family (2 or 3)."""
    raise NotImplementedError("numba kernels only")


@overload(_bwd_gather_steps, prefer_literal=True)
def _bwd_gather_steps_of_family(grad_y, a, N, y, grad_x, grad_A, need_A, high, family):
    if _literal(family) == 2:
        return lambda grad_y, a, N, y, grad_x, grad_A, need_A, high, family: _bwd_order2(
            grad_y, a, y, grad_x, grad_A, need_A, high, N
        )
    return lambda grad_y, a, N, y, grad_x, grad_A, need_A, high, family: _bwd_short(
        grad_y, a, N, y, grad_x, grad_A, need_A, high, N
    )


@_kernel
def _bwd_gather(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    """2 <= N < 8. The steps with t + N <= T - 1 and t >= N run unchecked."""
    N = zi.shape[0]
    t = _bwd_gather_last_steps(grad_y, a, y, zi, grad_x, grad_A, need_A)
    if t >= N:
        _bwd_gather_steps(grad_y, a, N, y, grad_x, grad_A, need_A, t, family)
        t = N - 1
    _bwd_gather_first_steps(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, t)


@_kernel
def _bwd_order2_pair(grad_y, a, y, grad_x, grad_A, grad_v, b, v, grad_u, grad_B, need_A, high, low):
    """_bwd_order2 of two sequences at once (see _fwd_order2_pair)."""
    two = _u(2)
    while high >= low:
        stop = max(low, high - _BLOCK + 1)
        g1, g2 = grad_x[high + 1], grad_x[high + 2]
        h1, h2 = grad_u[high + 1], grad_u[high + 2]
        for j in range(_u(high - stop + 1)):
            t = _u(high) - j
            g = (grad_y[t] - np.conj(a[two * t + _u(5)]) * g2) - np.conj(a[two * t + two]) * g1
            h = (grad_v[t] - np.conj(b[two * t + _u(5)]) * h2) - np.conj(b[two * t + two]) * h1
            grad_x[t], grad_u[t] = g, h
            g2, g1, h2, h1 = g1, g, h1, h
        if need_A:
            _grad_A_order2(grad_x, y, grad_A, high, stop)
            _grad_A_order2(grad_u, v, grad_B, high, stop)
        high = stop - 1


@_kernel
def _grad_zi(a, stride, grad_x, grad_zi):
    """zi[k] stands for y[-1-k], which step t reaches through lag i = t + 1 + k."""
    N = grad_zi.shape[0]
    for k in range(N):
        acc = grad_zi.dtype.type(0)
        for t in range(min(N - k, grad_x.shape[0])):
            acc -= np.conj(a[t * stride + t + k]) * grad_x[t]
        grad_zi[k] = acc


@_kernel
def _bwd_scatter(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A):
    """N >= 8: contributions owed to the next eight times in registers, older ones
    pushed into grad_x (which therefore starts as grad_y)."""
    T = grad_y.shape[0]
    N = zi.shape[0]
    for t in range(T):
        grad_x[t] = grad_y[t]
    for k in range(N):
        grad_zi[k] = 0
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = grad_y.dtype.type(0)
    high = T - 1
    for j in range(_u(max(T - N, 0))):
        s = _u(high) - j
        r = s * _u(N)
        g = grad_x[s] + p0
        p0 = p1 - np.conj(a[r]) * g
        p1 = p2 - np.conj(a[r + _u(1)]) * g
        p2 = p3 - np.conj(a[r + _u(2)]) * g
        p3 = p4 - np.conj(a[r + _u(3)]) * g
        p4 = p5 - np.conj(a[r + _u(4)]) * g
        p5 = p6 - np.conj(a[r + _u(5)]) * g
        p6 = p7 - np.conj(a[r + _u(6)]) * g
        p7 = -np.conj(a[r + _u(7)]) * g
        sub_conj_scaled_reversed(grad_x, s - _u(9), a, r + _u(8), g, N - 8)
        grad_x[s] = g
        if need_A:
            set_neg_scaled_conj_reversed(grad_A, r, y, s - _u(1), g, N)
    high = min(high, N - 1)
    # The registers owe grad_x[high - j]; then the first N steps, which reach zi.
    owed = (p0, p1, p2, p3, p4, p5, p6, p7)
    for j in range(8):
        if high - j >= 0:
            grad_x[high - j] += owed[j]
    for s in range(high, -1, -1):
        r = s * N
        g = grad_x[s]
        for i in range(1, s + 1):
            grad_x[s - i] -= np.conj(a[r + i - 1]) * g
        for i in range(s + 1, N + 1):
            grad_zi[i - s - 1] -= np.conj(a[r + i - 1]) * g
        if need_A:
            for i in range(1, N + 1):
                past = y[s - i] if i <= s else zi[i - s - 1]
                grad_A[r + i - 1] = -g * np.conj(past)


# ---------------------------------------------------------------------------
# Backward, time-invariant: grad_x is the same filter with conj(a), run backwards
# in time from a zero state, so it is the forward kernel on grad_y reversed (in
# grad_x, in place); grad_a is then a sum of dot products, block by block.


@_kernel
def _bwd_invariant(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_A, family):
    """The forward filter with conj(a) backwards in time: grad_y read through a
    reversed view, the result put back in time order a block pair at a time with
    the pair's grad_a sums (grad_a is empty without need_A)."""
    T = grad_y.shape[0]
    _fwd_family(grad_y[::-1], np.conj(a), 0, np.zeros_like(zi), grad_x, family)
    _reverse_with_grad(grad_x, y, 0, T // 2, grad_a)
    if need_A:
        if T % 2:
            _ti_grad_range(grad_x, y, T // 2, T // 2 + 1, grad_a)
        _invariant_head_grad(grad_x, y, zi, grad_a)
    _grad_zi(a, 0, grad_x, grad_zi)


@_kernel
def _ti_grad_range(grad_x, y, lo, hi, grad_a):
    """_ti_grad_sums over the steps of [lo, hi) from N on, block by block."""
    low = max(lo, grad_a.shape[0])
    while low < hi:
        high = min(low + _BLOCK, hi)
        _ti_grad_sums(grad_x, y, low, high - 1, grad_a)
        low = high


@_kernel
def _ti_grad_sums(grad_x, y, low, high, grad_a):
    """grad_a[i-1] -= sum_{t = low .. high} grad_x[t] conj(y[t-i]); needs low >= N."""
    for i in range(1, grad_a.shape[0] + 1):
        grad_a[i - 1] -= dot_conj(grad_x, low, y, low - i, high - low + 1)


def _bwd_varying(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    """One time-varying sequence backwards, the loop of the family."""
    raise NotImplementedError("numba kernels only")


@overload(_bwd_varying, prefer_literal=True)
def _bwd_varying_of_family(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    family = _literal(family)
    if family == 1:

        def order1(grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family):
            one = grad_y.dtype.type(1)
            grad_zi[0] = _bwd_order1(grad_y, a, one, y, zi, grad_x, grad_A, need_A)

        return order1
    if family < _REGISTER_LAGS:
        return lambda grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family: _bwd_gather(
            grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family
        )
    return lambda grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A, family: _bwd_scatter(
        grad_y, a, y, zi, grad_x, grad_A, grad_zi, need_A
    )


# Drivers over the batch. They release the GIL, so run_over_batch can give each
# Python worker thread a slice of the batch.


@_kernel
def _pairs(x, A):
    """Rows taken two at a time (order 2, past its first steps, a row of A per
    row of x), or 0."""
    if x.shape[1] > 2 and A.shape[0] == x.shape[0]:
        return x.shape[0] // 2
    return 0


@_kernel
def _quads(x, A):
    """Rows taken four at a time (time-varying order 1, a row of A per row of x), or 0."""
    if A.shape[1] > 1 and A.shape[0] == x.shape[0]:
        return _order1_groups(x)
    return 0


@_kernel
def _row_of(A, b):
    """The row of A that row b of x reads: A may be one row shared by all."""
    return b if A.shape[0] > 1 else 0


@_kernel
def _fwd_quads(x, A, zi, y):
    """Order 1: rows four at a time; returns how many rows were done."""
    B = x.shape[0]
    quads = _quads(x, A)
    if quads:
        a = A.reshape((B, A.shape[1]))
        for b in range(quads * _ROWS):
            y[b, 0] = x[b, 0] - a[b, 0] * zi[b, 0]
        for q in range(quads):
            _fwd_order1_rows(x, a, True, y, q * _ROWS)
    return quads * _ROWS


@_kernel
def _fwd_pairs(x, A, zi, y):
    """Order 2: rows two at a time (time-varying or not); returns how many rows
    were done."""
    pairs = _pairs(x, A)
    stride = 0 if A.shape[1] == 1 else 2
    for p in range(pairs):
        b, c = 2 * p, 2 * p + 1
        first, second = A[b].reshape(A[b].size), A[c].reshape(A[c].size)
        _fwd_head(x[b], first, stride, zi[b], y[b], 2)
        _fwd_head(x[c], second, stride, zi[c], y[c], 2)
        _fwd_order2_pair(x[b], first, y[b], x[c], second, y[c], stride)
    return 2 * pairs


def _fwd_groups(x, A, zi, y, family):
    """The rows that the family takes in groups (order 1 by four, order 2 by two);
    returns how many."""
    raise NotImplementedError("numba kernels only")


@overload(_fwd_groups, prefer_literal=True)
def _fwd_groups_of_family(x, A, zi, y, family):
    family = _literal(family)
    if family == 1:
        return lambda x, A, zi, y, family: _fwd_quads(x, A, zi, y)
    if family == 2:
        return lambda x, A, zi, y, family: _fwd_pairs(x, A, zi, y)
    return lambda x, A, zi, y, family: 0


@_kernel
def _allpole_fwd(x, A, zi, y, family):
    """x (B, T), A (B or 1, T or 1, N), zi (B, N) -> y (B, T), N of the family."""
    for b in range(_fwd_groups(x, A, zi, y, family), x.shape[0]):
        row = A[_row_of(A, b)]
        stride = 0 if row.shape[0] == 1 else row.shape[1]
        _fwd_family(x[b], row.reshape(row.size), stride, zi[b], y[b], family)


@_kernel
def _bwd_quads(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    """Order 1, time-varying: rows four at a time; returns how many rows were done."""
    B = grad_y.shape[0]
    quads = _quads(grad_y, A)
    if quads:
        a = A.reshape((B, A.shape[1]))
        grad = grad_A.reshape((B, A.shape[1] if need_A else 0))
        for q in range(quads):
            _bwd_order1_rows(
                grad_y, a, True, y, zi.reshape(B), grad_x, grad, grad_zi.reshape(B), need_A,
                q * _ROWS,
            )
    return quads * _ROWS


@_kernel
def _bwd_pairs(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
    """Order 2, time-varying: rows two at a time; returns how many rows were done."""
    pairs = _pairs(grad_y, A)
    for p in range(pairs):
        b, c = 2 * p, 2 * p + 1
        a_b, a_c = A[b].reshape(A[b].size), A[c].reshape(A[c].size)
        g_b, g_c = grad_A[b].reshape(grad_A[b].size), grad_A[c].reshape(grad_A[c].size)
        t = _bwd_gather_last_steps(grad_y[b], a_b, y[b], zi[b], grad_x[b], g_b, need_A)
        _bwd_gather_last_steps(grad_y[c], a_c, y[c], zi[c], grad_x[c], g_c, need_A)
        if t >= 2:
            _bwd_order2_pair(
                grad_y[b], a_b, y[b], grad_x[b], g_b,
                grad_y[c], a_c, y[c], grad_x[c], g_c, need_A, t, 2,
            )
            t = 1
        _bwd_gather_first_steps(grad_y[b], a_b, y[b], zi[b], grad_x[b], g_b, grad_zi[b], need_A, t)
        _bwd_gather_first_steps(grad_y[c], a_c, y[c], zi[c], grad_x[c], g_c, grad_zi[c], need_A, t)
    return 2 * pairs


def _bwd_groups(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    """As _fwd_groups, backwards."""
    raise NotImplementedError("numba kernels only")


@overload(_bwd_groups, prefer_literal=True)
def _bwd_groups_of_family(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    family = _literal(family)
    if family == 1:
        return lambda grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family: _bwd_quads(
            grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A
        )
    if family == 2:
        return lambda grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family: _bwd_pairs(
            grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A
        )
    return lambda grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family: 0


@_kernel
def _allpole_vjp_varying(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family):
    """Time-varying A (B or 1, T, N): grad_A (B, T, N), or (B, 0, 0) without need_A."""
    done = _bwd_groups(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family)
    for b in range(done, grad_y.shape[0]):
        row = A[_row_of(A, b)]
        _bwd_varying(
            grad_y[b], row.reshape(row.size), y[b], zi[b], grad_x[b],
            grad_A[b].reshape(grad_A[b].size), grad_zi[b], need_A, family,
        )


@_kernel
def _allpole_vjp_invariant(grad_y, A, y, zi, grad_x, grad_a, grad_zi, need_A, family):
    """Time-invariant A (B or 1, 1, N): grad_a (B, N) sums in a wide dtype, arriving
    zeroed, or (B, 0) without need_A."""
    for b in range(grad_y.shape[0]):
        row = A[_row_of(A, b)]
        _bwd_invariant(
            grad_y[b], row.reshape(row.size), y[b], zi[b], grad_x[b], grad_a[b], grad_zi[b],
            need_A, family,
        )


# The entry points, one per family: the family is a constant of the closure, so
# a literal where the kernel is compiled, and numba's disk cache tells the
# closures apart by it.


def _fwd_entry(family):
    @_kernel
    def allpole_fwd_kernel(x, A, zi, y):
        _allpole_fwd(x, A, zi, y, family)

    return allpole_fwd_kernel


def _vjp_entry(family, invariant):
    if invariant:

        @_kernel
        def allpole_vjp_invariant_kernel(grad_y, A, y, zi, grad_x, grad_a, grad_zi, need_A):
            _allpole_vjp_invariant(grad_y, A, y, zi, grad_x, grad_a, grad_zi, need_A, family)

        return allpole_vjp_invariant_kernel

    @_kernel
    def allpole_vjp_varying_kernel(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A):
        _allpole_vjp_varying(grad_y, A, y, zi, grad_x, grad_A, grad_zi, need_A, family)

    return allpole_vjp_varying_kernel


FWD_KERNELS = {family: _fwd_entry(family) for family in FAMILIES}
VJP_KERNELS = {
    (family, invariant): _vjp_entry(family, invariant)
    for family in FAMILIES
    for invariant in (False, True)
}


@_kernel
def linear_recurrence_kernel(a, x, zi, y):
    """y[b, t] = a[b, t] y[b, t-1] + x[b, t] from y[b, -1] = zi[b]; T >= 1."""
    minus_one = y.dtype.type(-1)
    B = x.shape[0]
    quads = _order1_groups(x)
    for b in range(B):
        y[b, 0] = x[b, 0] + a[b, 0] * zi[b]
    for q in range(quads):
        _fwd_order1_rows(x, a, False, y, q * _ROWS)
    for b in range(quads * _ROWS, B):
        _fwd_order1(x[b], a[b], 1, minus_one, y[b])


@_kernel
def linear_recurrence_vjp_kernel(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_a):
    """grad_a (B, T), or an unused (B, 0) placeholder; T >= 2."""
    minus_one = grad_y.dtype.type(-1)
    B = grad_y.shape[0]
    quads = _order1_groups(grad_y)
    for q in range(quads):
        _bwd_order1_rows(grad_y, a, False, y, zi, grad_x, grad_a, grad_zi, need_a, q * _ROWS)
    for b in range(quads * _ROWS, B):
        grad_zi[b] = _bwd_order1(
            grad_y[b], a[b], minus_one, y[b], zi[b : b + 1], grad_x[b], grad_a[b], need_a
        )


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


def run_over_batch(kernel, work: int, *arguments, together: int = 2) -> None:
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
    # Pieces of `together` rows or more, which the kernels take in groups (order 2
    # in pairs, order 1 four at a time).
    pieces = min(max(batch // together, 1), 4 * threads)
    bounds = [batch * k // pieces for k in range(pieces + 1)]
    # An array of one row (coefficients shared by the batch) goes whole to every slice.
    _run_tasks([
        partial(kernel, *(
            a[lo:hi] if isinstance(a, np.ndarray) and a.shape[0] == batch else a
            for a in arguments
        ))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ])


# ---------------------------------------------------------------------------
# One time-invariant sequence over several threads. A batch smaller than the
# thread count leaves threads idle, and a long time-invariant sequence can use
# them: cut it into segments and run them all at once, each segment but the
# first from a zero state some W steps before its start (a warm-up whose
# outputs are dropped), so that by its start the state it has reached differs
# from the true one only by the filter's response, after W steps, to the true
# state where the warm-up began. W is taken from a bound on that response that
# holds for every filter whose poles lie within the largest pole radius (see
# _warmup_steps) to put it below 2^-2p of that state (p the mantissa bits):
# far below the output's rounding. What remains between the state a warm-up
# reached and the one the segment before ended in is a difference of rounding;
# each segment gets its response to it added (the recursion from that small
# state, all segments at once, until it dies away), which puts the segment on
# the recursion from the true state, so that its errors run on across the
# boundary as in one piece: filtering that cancels the signal's large part
# afterwards (lfilter's zeros, in its backward pass) exposed the jump between
# two roundings, 200x the plain recursion's error. A response that outlives its
# segment is carried into the next (by linearity), so the result holds for any
# W; W only keeps the difference small. The split is taken only when W is at
# most a quarter of a segment: poles nearer the unit circle run on one thread.
#
# The version before ran each segment from a zero state at its start and then
# added its response to the true starting state, from responses to unit states
# (and carried that state with a transition matrix): the zero-state transient
# and that response are each far larger than the output and cancel, in the
# basis of delayed outputs above all for clustered poles near 1 (scipy's
# low-cutoff Butterworth and Chebyshev designs), which cost 10^2-10^4 times the
# plain recursion's error, or NaN. The transient is still there in the warm-up,
# and so are its rounding errors, but W steps of decay take them away with it.
# (A first-order time-varying sequence has no such bound to warm up with: it
# stays on one core.)

# A segment is split off only if it is at least this many warm-ups long: the
# warm-up is work the threads do on top of the filter.
_WARMUPS_PER_SEGMENT = 4
# Steps per piece of the response to the state's rounding difference, between
# two checks of whether it has died away.
_CORRECTION_BLOCK = 256


@_kernel
def _fwd_warmed_up(x, a, zi, y, lo, hi, W, reached):
    """y[lo:hi] of the time-invariant filter a (N,) on x: from zi at lo = 0,
    else from a zero state W steps before lo (from zi, if that reaches t = 0),
    the warm-up's own outputs dropped; the state it reached at lo, most recent
    first, goes to ``reached`` (N,)."""
    N = a.shape[0]
    if lo == 0:
        reached[:] = zi
        _fwd(x[0:hi], a, 0, zi, y[0:hi])
        return
    start = max(lo - W, 0)
    warm = np.empty(lo - start, dtype=y.dtype)
    initial = zi if start == 0 else np.zeros_like(zi)
    _fwd(x[start:lo], a, 0, initial, warm)
    for k in range(N):
        reached[k] = warm[lo - start - 1 - k] if k < lo - start else initial[k - (lo - start)]
    _fwd(x[lo:hi], a, 0, reached, y[lo:hi])


@_kernel
def _add_zero_input_response(a, state, y, small):
    """y[t] += the response of the time-invariant filter a (N,) with zero input to
    ``state`` (most recent first) before y[0], until its N newest values are all
    at most ``small`` in magnitude. Returns the response's state at the end of y,
    zeros if it died away before."""
    N = a.shape[0]
    T = y.shape[0]
    K = max(_CORRECTION_BLOCK, N)
    zeros = np.zeros(K, dtype=y.dtype)
    response = np.empty(K, dtype=y.dtype)
    current = state.copy()
    following = np.empty_like(current)
    for start in range(0, T, K):
        n = min(K, T - start)
        _fwd(zeros[:n], a, 0, current, response[:n])
        block = y[start : start + n]
        for j in range(_u(n)):
            block[j] += response[j]
        largest = 0.0
        for k in range(N):
            following[k] = response[n - 1 - k] if k < n else current[k - n]
            largest = max(largest, np.abs(following[k]))
        current, following = following, current
        if largest <= small:
            current[:] = 0
            return current
    return current


@_kernel
def _reverse_in_place(values, lo, hi):
    """Swap values[t] and values[T-1-t] for t in [lo, hi), hi <= T // 2."""
    last = _u(values.shape[0] - 1)
    for t in range(_u(lo), _u(hi)):
        values[t], values[last - t] = values[last - t], values[t]


def _segments(T: int, parts: int, align: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering [0, T); every one but the last a multiple of align."""
    length = max(align, -(-T // parts) // -align * -align)
    bounds = list(range(0, T, length)) + [T]
    return list(zip(bounds[:-1], bounds[1:]))


def _run_tasks(tasks: list) -> list:
    """Run the callables on the pool and the calling thread; return their results
    when all are done.

    Emptied on return: a helper cancelled before it started stays in the pool's
    queue until a worker thread takes it, and through it the tasks and their
    arrays, which would keep the outputs' memory from being reused (_buffers).
    """
    counter = itertools.count()
    results = [None] * len(tasks)
    threads = min(len(tasks), torch.get_num_threads())

    def drain() -> None:
        for index in iter(counter.__next__, None):
            if index >= len(tasks):
                return
            results[index] = tasks[index]()

    helpers = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)] if threads > 1 else []
    try:
        drain()
    finally:
        for helper in helpers:
            if not helper.cancel():
                helper.result()
        tasks.clear()
    return results


def _split_parts() -> int:
    return torch.get_num_threads()


def _warmup_steps(a: np.ndarray, dtype) -> float:
    """Steps after which the response of the filter a (N,) with zero input to any
    state has fallen below 2^-2p of that state (p the mantissa bits of dtype); inf
    where the filter is not stable.

    With rho the largest pole radius, the impulse response of 1 / (1 + sum a_i z^-i)
    is bounded, coefficient by coefficient, by that of 1 / (1 - rho z^-1)^N, which
    is C(t + N - 1, N - 1) rho^t, and the state enters as an input of the first N
    steps of at most sum |a_i| <= 2^N times its largest value. So the response at
    step t is at most N 2^N C(t + N - 1, N - 1) rho^(t - N) times the state: for
    every filter with these poles, clustered or not (a bound on the pole radius
    alone would miss the growth of clustered poles).
    """
    N = a.shape[0]
    roots = np.roots(np.concatenate(([1.0], a.astype(np.complex128))))
    if not np.all(np.isfinite(roots)):
        return math.inf
    radius = float(np.abs(roots).max()) if roots.size else 0.0
    if radius >= 1.0:
        return math.inf
    if radius == 0.0:
        return float(N)
    decay = math.log(radius)
    target = -2 * (np.finfo(dtype).nmant + 1) * math.log(2.0)

    def log_bound(t: float) -> float:
        binomial = math.lgamma(t + N) - math.lgamma(N) - math.lgamma(t + 1)
        return math.log(N) + N * math.log(2.0) + binomial + (t - N) * decay

    # The bound is concave in t and starts above the target: the first t below
    # it on the way down, by doubling and then bisection.
    high = float(N)
    while log_bound(high) > target or log_bound(high + 1) > log_bound(high):
        high *= 2
        if high > 2.0**48:
            return math.inf
    low = max(high / 2, float(N))
    while high - low > 1:
        middle = math.floor((low + high) / 2)
        if log_bound(middle) <= target and log_bound(middle + 1) <= log_bound(middle):
            high = middle
        else:
            low = middle
    return high


def _invariant_fwd_over_time(x, a, zi, y) -> None:
    """One time-invariant sequence, a (N,), over the threads where its poles let
    the split pay, else on the calling thread; x may be a reversed view."""
    T = x.shape[0]
    segments = _segments(T, _split_parts(), 64)
    warmup = _warmup_steps(a, y.dtype)
    if len(segments) == 1 or _WARMUPS_PER_SEGMENT * warmup > segments[0][1]:
        _fwd(x, a, 0, zi, y)
        return
    reached = np.empty((len(segments), zi.shape[0]), dtype=y.dtype)
    _run_tasks([
        partial(_fwd_warmed_up, x, a, zi, y, lo, hi, int(warmup), reached[k])
        for k, (lo, hi) in enumerate(segments)
    ])
    # Where each segment started against where the one before it ended: a
    # difference of rounding, whose response puts the segment on the recursion
    # from the true state (so that the errors run on across the boundary as in
    # one piece; without it, later filtering that cancels the signal's large
    # part, such as lfilter's zeros, exposes the step between two roundings).
    below = 2.0 ** (-2 * (np.finfo(y.dtype).nmant + 1))
    tiny = float(np.finfo(y.dtype).tiny)
    differences = []
    for k, (lo, _) in enumerate(segments[1:], start=1):
        ended = y[lo - 1 :: -1][: zi.shape[0]]
        small = max(below * float(np.abs(ended).max()), tiny)
        differences.append((ended - reached[k], small))
    leftovers = _run_tasks([
        partial(_add_zero_input_response, a, difference, y[lo:hi], small)
        for (lo, hi), (difference, small) in zip(segments[1:], differences)
    ])
    # Nothing, unless a response outlived its segment: carried on, by linearity.
    carried = np.zeros_like(zi)
    for (lo, hi), leftover, (_, small) in zip(segments[2:], leftovers[:-1], differences[1:]):
        carried += leftover
        if np.any(carried != 0):
            carried = _add_zero_input_response(a, carried, y[lo:hi], small)


def _invariant_vjp_over_time(grad_y, a, y, zi, grad_x, grad_a, grad_zi, need_A) -> None:
    """_bwd_invariant of one sequence over the threads. The forward filter reads
    grad_y through a reversed view (no reversed copy; only its scalar recursion
    reads it), and the reversal of the result back into time order takes the
    grad_a sums of each block pair while the pair is in the cache."""
    T = grad_y.shape[0]
    _invariant_fwd_over_time(grad_y[::-1], np.conj(a), np.zeros_like(zi), grad_x)
    halves = _segments(T // 2, _split_parts(), 1) if T >= 2 else []
    sums = [np.zeros_like(grad_a) for _ in halves]  # empty without need_A
    _run_tasks([
        partial(_reverse_with_grad, grad_x, y, lo, hi, sums[k]) for k, (lo, hi) in enumerate(halves)
    ])
    if need_A:
        if T % 2:
            _ti_grad_range(grad_x, y, T // 2, T // 2 + 1, grad_a)
        for partial_sum in sums:
            grad_a += partial_sum
        _invariant_head_grad(grad_x, y, zi, grad_a)
    _grad_zi(a, 0, grad_x, grad_zi)


@_kernel
def _reverse_with_grad(values, y, lo, hi, grad_a):
    """_reverse_in_place over [lo, hi) a block at a time, and, unless grad_a is
    empty, the _ti_grad_range of the two blocks just put in place."""
    last = values.shape[0] - 1
    start = lo
    while start < hi:
        end = min(start + _BLOCK, hi)
        _reverse_in_place(values, start, end)
        if grad_a.shape[0]:
            _ti_grad_range(values, y, start, end, grad_a)
            _ti_grad_range(values, y, last - end + 1, last - start + 1, grad_a)
        start = end


@_kernel
def _invariant_head_grad(grad_x, y, zi, grad_a):
    N = zi.shape[0]
    for t in range(min(N, grad_x.shape[0])):
        for i in range(1, N + 1):
            past = y[t - i] if i <= t else zi[i - t - 1]
            grad_a[i - 1] -= grad_x[t] * np.conj(past)


# ---------------------------------------------------------------------------
# The ops' CPU kernels: tensors in, tensors out.


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous NumPy view of a CPU tensor's values (a copy only if needed)."""
    if tensor.requires_grad:
        tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    return tensor.numpy()


_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}


def _together(N: int) -> int:
    """Rows the kernels of order N take at once (see run_over_batch)."""
    return _ROWS if N == 1 else 2


def allpole(x: torch.Tensor, A: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
    y = output_like(x)
    (B, T), N = x.shape, A.shape[-1]
    if x.numel() == 0:
        return y
    x_, A_, zi_, y_ = _array(x), _array(A), _array(zi), y.numpy()
    if A.shape[1] == 1 and split_over_time(B, T, N):
        for b in range(B):
            _invariant_fwd_over_time(x_[b], A_[b, 0], zi_[b], y_[b])
        return y
    kernel = FWD_KERNELS[family_of(N)]
    run_over_batch(kernel, x.numel() * N, x_, A_, zi_, y_, together=_together(N))
    return y


def allpole_vjp(grad_y, A, y, zi, need_A: bool):
    B, N = zi.shape
    time_invariant = A.shape[1] == 1
    grad_x = output_like(grad_y)
    grad_zi = torch.empty_like(zi, memory_format=torch.contiguous_format)
    grad_A = A.new_empty((0, 0, 0))
    # Time-varying A gets a (B, T, N) grad_A, time-invariant A a (B, N) sum in
    # double precision; without need_A the kernel gets an empty placeholder, typed
    # like the real thing so that one compiled kernel serves both cases.
    wide = torch.complex128 if A.dtype.is_complex else torch.float64
    grad_A_rows = np.empty((B, 0, 0), dtype=_NUMPY_DTYPES[A.dtype])
    grad_a_sums = np.empty((B, 0), dtype=_NUMPY_DTYPES[wide])
    if need_A and time_invariant:
        grad_a_wide = torch.zeros(B, N, dtype=wide)
        grad_a_sums = grad_a_wide.numpy()
    elif need_A:
        grad_A = output_like(A)
        grad_A_rows = grad_A.numpy()
    T = grad_y.shape[1]
    if grad_y.numel() == 0:
        # No time step reaches the state.
        grad_zi.zero_()
    elif time_invariant and split_over_time(B, T, N):
        arrays = _array(grad_y), _array(A), _array(y), _array(zi), grad_x.numpy(), grad_zi.numpy()
        grad_y_, A_, y_, zi_, grad_x_, grad_zi_ = arrays
        for b in range(B):
            # grad_a_sums is (B, N), or (B, 0) without need_A: a row either way.
            _invariant_vjp_over_time(
                grad_y_[b], A_[b, 0], y_[b], zi_[b], grad_x_[b], grad_a_sums[b], grad_zi_[b],
                need_A,
            )
    else:
        run_over_batch(
            VJP_KERNELS[family_of(N), time_invariant], grad_y.numel() * N,
            _array(grad_y), _array(A), _array(y), _array(zi), grad_x.numpy(),
            grad_a_sums if time_invariant else grad_A_rows, grad_zi.numpy(), need_A,
            together=_together(N),
        )
    if need_A and time_invariant:
        grad_A = grad_a_wide.to(A.dtype)[:, None, :]
    return grad_x, grad_A, grad_zi


def linear_recurrence(a: torch.Tensor, x: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
    """``y[t] = a[t] y[t-1] + x[t]`` for a, x (B, T) and zi (B,), the pole taken as it
    is: the allpole op would need A = -a, a negated copy of it."""
    y = output_like(x)
    if x.numel() == 0:
        return y
    run_over_batch(
        linear_recurrence_kernel, x.numel(), _array(a), _array(x), _array(zi), y.numpy(),
        together=_ROWS,
    )
    return y


def linear_recurrence_vjp(grad_y, a, y, zi, need_a: bool):
    """Gradients of linear_recurrence for T >= 2: (grad_a or None, grad_x, grad_zi)."""
    B = grad_y.shape[0]
    grad_x = output_like(grad_y)
    grad_zi = torch.empty_like(zi, memory_format=torch.contiguous_format)
    grad_a = None
    if need_a:
        grad_a = output_like(a)
    placeholder = np.empty((B, 0), dtype=_NUMPY_DTYPES[a.dtype])
    if grad_y.numel():
        run_over_batch(
            linear_recurrence_vjp_kernel, grad_y.numel(),
            _array(grad_y), _array(a), _array(y), _array(zi),
            grad_x.numpy(), placeholder if grad_a is None else grad_a.numpy(), grad_zi.numpy(),
            need_a, together=_ROWS,
        )
    return grad_a, grad_x, grad_zi


