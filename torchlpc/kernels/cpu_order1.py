"""First order: one pole per step, for ``sample_wise_lpc`` at N = 1 and for
``linear_recurrence``.

One sequence runs step by step (``_fwd_order1``, ``_bwd_order1``); a batch runs
four sequences at once, skewed in time (``_fwd_order1_rows``, ``_bwd_order1_rows``),
which fills the latency of one multiply-add per step. ``minus``/``sign`` pick
``y = x - a y[t-1]`` (LPC coefficients) or ``y = x + a y[t-1]`` (a pole, as
``linear_recurrence`` takes it) without a negated copy of ``a``. The entry points
``linear_recurrence_kernel`` and ``linear_recurrence_vjp_kernel`` are here too.
"""

from __future__ import annotations

import numpy as np

from .cpu_jit import _kernel, _u

# First order, one sequence: step by step, one multiply-add per sample on the
# critical path. A blocked scan (blocks run from a zero state, interleaved, then
# each block's response to the state before it added through products of the
# poles) was faster by a fraction, but its extra rounding per sample and the
# rounding of the products cost up to 5x the error of this plain recursion for
# poles near 1 (0.9999: 1.5e-5 against 2.8e-6 in float32).
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
