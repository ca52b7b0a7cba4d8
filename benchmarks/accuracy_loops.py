"""The two yardsticks of the accuracy suite, as plain loops over time in numba.

* :func:`reference`: the filter and its adjoint in double-double arithmetic
  (about 106 bits): the ground truth every float32 and float64 result is
  measured against, accurate where float64 itself is in doubt (clustered poles
  near the unit circle cost float64 loops several digits).
* :func:`sequential`: the plain recursion in the input's own dtype, no tricks
  (no fused multiply-adds, no wide accumulators, sums in the order written):
  the error every fast path is allowed a small multiple of.

Both take one sequence at a time: ``x (T,)``, ``A (T, N)`` or time-invariant
``A (1, N)``, ``zi (N,)`` with ``zi[k] = y[-1-k]``, ``grad_y (T,)``, and return
``y``, ``grad_x``, ``grad_A`` (summed over time for a time-invariant ``A``) and
``grad_zi`` with the conventions of ``torchlpc.reference``.
"""

from __future__ import annotations

import numba
import numpy as np

# No fastmath: the error-free transformations below rely on every operation
# being rounded exactly as written (a fused multiply-add would break them).
_plain = numba.njit(cache=True, nogil=True)

_SPLITTER = 134217729.0  # 2^27 + 1, Dekker's split of a float64


@_plain
def _two_sum(a, b):
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@_plain
def _fast_two_sum(a, b):
    s = a + b
    return s, b - (s - a)


@_plain
def _split(a):
    c = _SPLITTER * a
    high = c - (c - a)
    return high, a - high


@_plain
def _two_product(a, b):
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@_plain
def _dd_add(ah, al, bh, bl):
    s, e = _two_sum(ah, bh)
    e += al + bl
    return _fast_two_sum(s, e)


@_plain
def _dd_mul(ah, al, bh, bl):
    p, e = _two_product(ah, bh)
    e += ah * bl + al * bh
    return _fast_two_sum(p, e)


@_plain
def _reference_row(x, x_lo, A, zi, grad_y, y_hi, y_lo, gx_hi, gx_lo, gA_hi, gA_lo, gzi):
    T = x.shape[0]
    N = zi.shape[0]
    stride = 0 if A.shape[0] == 1 else 1
    # padded[N + t] = y[t]; padded[N - 1 - k] = zi[k].
    ph = np.zeros(N + T)
    pl = np.zeros(N + T)
    for k in range(N):
        ph[N - 1 - k] = zi[k]
    for t in range(T):
        row = t * stride
        sh, sl = x[t], x_lo[t]
        for i in range(1, N + 1):
            ph_, pl_ = _dd_mul(A[row, i - 1], 0.0, ph[N + t - i], pl[N + t - i])
            sh, sl = _dd_add(sh, sl, -ph_, -pl_)
        ph[N + t], pl[N + t] = sh, sl
        y_hi[t], y_lo[t] = sh, sl
    # Backward, gather form: grad_x[t] = grad_y[t] - sum_i A[t+i, i-1] grad_x[t+i];
    # ex[N + t] is grad_x[t] and ex[N - 1 - k] grad_zi[k] (times -1-k).
    eh = np.zeros(N + T)
    el = np.zeros(N + T)
    for t in range(T - 1, -N - 1, -1):
        sh, sl = (grad_y[t], 0.0) if t >= 0 else (0.0, 0.0)
        for i in range(1, N + 1):
            s = t + i
            if s >= T:
                break
            if t < 0 and i <= -1 - t:
                # Times before 0 gather only pushes from t >= 0.
                continue
            ph_, pl_ = _dd_mul(A[s * stride, i - 1], 0.0, eh[N + s], el[N + s])
            sh, sl = _dd_add(sh, sl, -ph_, -pl_)
        eh[N + t], el[N + t] = sh, sl
    for t in range(T):
        gx_hi[t], gx_lo[t] = eh[N + t], el[N + t]
    for k in range(N):
        gzi[k] = eh[N - 1 - k] + el[N - 1 - k]
    # grad_A[t, i-1] = -grad_x[t] y[t-i]: summed over time in double-double for a
    # time-invariant A, rounded to float64 per element otherwise.
    if stride == 0:
        for i in range(1, N + 1):
            sh, sl = 0.0, 0.0
            for t in range(T):
                ph_, pl_ = _dd_mul(eh[N + t], el[N + t], ph[N + t - i], pl[N + t - i])
                sh, sl = _dd_add(sh, sl, -ph_, -pl_)
            gA_hi[0, i - 1], gA_lo[0, i - 1] = sh, sl
    else:
        for t in range(T):
            for i in range(1, N + 1):
                gA_hi[t, i - 1] = -(eh[N + t] * ph[N + t - i])


def reference(x, A, zi, grad_y, x_lo=None):
    """``(y, grad_x, grad_A, grad_zi)`` of one sequence in double-double precision.

    ``y`` and ``grad_x`` come as ``(high, low)`` float64 pairs, their sum the
    value to about 106 bits; ``grad_A`` too for a time-invariant ``A`` (for a
    time-varying one each element is a product of two such values, rounded to
    float64 with a zero low part); ``grad_zi`` rounded to float64. The
    inputs are taken exactly as given (float32 values are exact in float64);
    ``x_lo``, if given, is the low part of a double-double input.
    """
    x, A, zi, grad_y = (np.ascontiguousarray(v, dtype=np.float64) for v in (x, A, zi, grad_y))
    x_lo = np.zeros_like(x) if x_lo is None else np.ascontiguousarray(x_lo, dtype=np.float64)
    T, N = x.shape[0], zi.shape[0]
    y_hi, y_lo, gx_hi, gx_lo = (np.empty(T) for _ in range(4))
    gA_hi, gA_lo = np.zeros((A.shape[0], N)), np.zeros((A.shape[0], N))
    gzi = np.empty(N)
    _reference_row(x, x_lo, A, zi, grad_y, y_hi, y_lo, gx_hi, gx_lo, gA_hi, gA_lo, gzi)
    return (y_hi, y_lo), (gx_hi, gx_lo), (gA_hi, gA_lo), gzi


@_plain
def _sequential_row(x, A, zi, grad_y, y, gx, gA, gzi):
    T = x.shape[0]
    N = zi.shape[0]
    stride = 0 if A.shape[0] == 1 else 1
    zero = x[0] - x[0]
    padded = np.empty(N + T, dtype=x.dtype)
    for k in range(N):
        padded[N - 1 - k] = zi[k]
    for t in range(T):
        row = t * stride
        acc = x[t]
        for i in range(1, N + 1):
            acc = acc - A[row, i - 1] * padded[N + t - i]
        padded[N + t] = acc
        y[t] = acc
    ext = np.empty(N + T, dtype=x.dtype)
    for t in range(T - 1, -N - 1, -1):
        acc = grad_y[t] if t >= 0 else zero
        for i in range(1, N + 1):
            s = t + i
            if s >= T:
                break
            if t < 0 and i <= -1 - t:
                continue
            acc = acc - A[s * stride, i - 1] * ext[N + s]
        ext[N + t] = acc
    for t in range(T):
        gx[t] = ext[N + t]
    for k in range(N):
        gzi[k] = ext[N - 1 - k]
    if stride == 0:
        for i in range(1, N + 1):
            acc = zero
            for t in range(T):
                acc = acc - ext[N + t] * padded[N + t - i]
            gA[0, i - 1] = acc
    else:
        for t in range(T):
            for i in range(1, N + 1):
                gA[t, i - 1] = zero - ext[N + t] * padded[N + t - i]


# The same loop with each multiply and subtract fused into one rounding, as the
# kernels compile theirs (fastmath contract): no less plain, rounded otherwise.
# Not cached: numba's disk cache keys on the function's name and would load the
# unfused machine code.
_sequential_row_fused = numba.njit(nogil=True, fastmath={"contract"})(
    _sequential_row.py_func
)


def sequential(x, A, zi, grad_y, fused=False):
    """``(y, grad_x, grad_A, grad_zi)`` of one sequence by the plain recursion in
    the dtype of ``x`` (all four arrays must share it); ``fused`` contracts its
    multiply-adds into fused ones."""
    x, A, zi, grad_y = (np.ascontiguousarray(v) for v in (x, A, zi, grad_y))
    T, N = x.shape[0], zi.shape[0]
    y, gx = np.empty(T, x.dtype), np.empty(T, x.dtype)
    gA = np.empty((A.shape[0], N), x.dtype)
    gzi = np.empty(N, x.dtype)
    (_sequential_row_fused if fused else _sequential_row)(x, A, zi, grad_y, y, gx, gA, gzi)
    return y, gx, gA, gzi


@_plain
def _fir_row(b, x, xi, out_hi, out_lo):
    """``out[t] = sum_j b[j] x[t-j]`` in double-double, ``x[-1-k] = xi[k]``."""
    T = x.shape[0]
    M = b.shape[0]
    for t in range(T):
        sh, sl = 0.0, 0.0
        for j in range(M):
            v = x[t - j] if t >= j else (xi[j - t - 1] if j - t - 1 < xi.shape[0] else 0.0)
            ph, pl = _two_product(b[j], v)
            sh, sl = _dd_add(sh, sl, ph, pl)
        out_hi[t], out_lo[t] = sh, sl


def fir(b, x, xi=None):
    """The FIR part of ``lfilter``, ``(high, low)`` in double-double."""
    b, x = np.ascontiguousarray(b, np.float64), np.ascontiguousarray(x, np.float64)
    xi = np.zeros(0) if xi is None else np.ascontiguousarray(xi, np.float64)
    hi, lo = np.empty_like(x), np.empty_like(x)
    _fir_row(b, x, xi, hi, lo)
    return hi, lo


@_plain
def _fir_plain_row(b, x, out):
    T = x.shape[0]
    for t in range(T):
        acc = x[t] - x[t]
        for j in range(min(b.shape[0], t + 1)):
            acc = acc + b[j] * x[t - j]
        out[t] = acc


def fir_plain(b, x):
    """The FIR part of ``lfilter`` in the dtype of ``x``, zero initial inputs."""
    out = np.empty_like(x)
    _fir_plain_row(np.ascontiguousarray(b, x.dtype), np.ascontiguousarray(x), out)
    return out
