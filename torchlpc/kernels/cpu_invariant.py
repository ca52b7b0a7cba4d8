"""Time-invariant filters (A the same at every step): the backward pass, and one
long sequence split over the threads.

The backward pass is the forward filter with ``conj(a)``, run backwards in time
from a zero state (the forward kernel on a reversed view of ``grad_y``); ``grad_a``
is then a sum of dot products taken block by block while the block is in the
cache. A batch smaller than the thread count runs each long sequence in segments
on all threads, each segment warmed up from a zero state (see the comment before
``_fwd_warmed_up`` for why that is exact to the rounding of the plain recursion);
``cpu_plan.split_over_time`` says when.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from .cpu_backward import _grad_zi
from .cpu_forward import _fwd, _fwd_family
from .cpu_jit import _BLOCK, _kernel, _u
from .cpu_threads import _run_tasks, _split_parts
from ._simd import dot_conj

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
