"""The time-varying backward pass of one sequence, a loop per order family.

Below eight lags, the gather form ``grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1])
grad_x[t+i]`` reads A along the shifted diagonal: those N rows lie within a few
cache lines, and the newest values stay in registers as in the forward. From eight
lags on, the scatter form (backwards in time: once ``grad_x[s]`` is final, its
contribution ``conj(A[s, i-1]) grad_x[s]`` goes to the N earlier times) reads A row
by row, as it lies in memory, and ``grad_A`` is streamed the same way; the
contributions to the eight next times are carried in registers, the rest are a
vector update of ``grad_x``. Pushes that fall before time 0 land in ``grad_zi``.
``grad_A[t]`` is written in the same pass. No shifted, padded or flipped copy of A
is ever made. ``_bwd_varying`` runs one sequence for a (literal) family.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload

from .cpu_jit import _BLOCK, _kernel, _literal, _u
from .cpu_order1 import _bwd_order1
from .cpu_plan import REGISTER_LAGS as _REGISTER_LAGS
from ._simd import set_neg_scaled_conj_reversed, sub_conj_scaled_reversed

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
