"""The time-varying forward filter of one sequence, a loop per order family.

``y[t] = x[t] - sum_i A[t, i-1] y[t-i]`` (gather form). The one true dependency is
on the newest outputs, so the last eight (two for 3 <= N < 8) stay in registers and
enter the sum last, in a fixed order, so that ``y[t-1]`` is one multiply-add away
from ``y[t]``. The older lags are a vector dot product read straight from ``y``
(:mod:`._simd`), which never waits on the latest stores. Order 1 is in
:mod:`.cpu_order1`; order 2 has a two-sequence variant driven from
:mod:`.cpu_numba`. ``_fwd_family`` runs one sequence for a (literal) family, ``_fwd``
for an order known only at run time (the time-invariant split, cpu_invariant).
"""

from __future__ import annotations

from numba.extending import overload

from .cpu_jit import _kernel, _literal, _u
from .cpu_order1 import _fwd_order1
from .cpu_plan import REGISTER_LAGS as _REGISTER_LAGS
from ._simd import dot_reversed


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
