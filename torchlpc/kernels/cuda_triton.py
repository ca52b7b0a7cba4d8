"""Triton kernels for CUDA tensors: sequential and chunked (parallel-in-time).

Both ops run a recurrence of order N along time. Triton has no register
shuffles, so the last N values live in a ``[BN]`` block used as a ring: the
value of (chunk-relative) step ``s`` sits in slot ``s mod N``, the coefficient
row is loaded with offsets rotated by the current phase so that each slot meets
its own coefficient, and only the slot of the current step is rewritten (with
``tl.where``). No value ever moves between slots.

Forward, ``y[t] = x[t] - sum_i A[t, i-1] y[t-i]``: the ring holds the last N
outputs and each step is one dot product with the row ``A[t]``.

Backward, in scatter form and backwards in time, as in the numba kernels: the
ring holds, for each of the next N (earlier) times, the sum pushed onto it so
far; at time t, ``grad_x[t] = grad_y[t] + pending[t]`` is final and pushes
``-conj(A[t, i-1]) grad_x[t]`` onto ``t - i``. A is therefore read one row at a
time, as it lies in memory, rather than along the diagonal ``A[t + i, i - 1]``
that the gather form ``grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1])
grad_x[t+i]`` would need, and no copy of A is made. ``grad_A[t, i-1] =
-grad_x[t] conj(y[t-i])`` is written in the same pass (summed in registers when
A is time-invariant), and what is left pending on times ``-1 ... -N`` after
``t = 0`` is ``grad_zi``. A time-invariant A, ``(B, 1, N)``, is read with a time
stride of zero.

Variants (the program ids are ``i_b`` for the row and ``i_c`` for the chunk):

``sequential``
    ``allpole_fwd_kernel`` / ``allpole_bwd_kernel`` with one chunk of length T
    per row: one program per row.
``chunked``
    time cut into C chunks of length L, run in three launches (five for
    float64, below):
    ``*_chunk_state`` (one program per row and chunk) gives each chunk's end
    state from a zero initial state and its ``N x N`` state-transition matrix,
    by running the N unit initial states through the chunk in a ``[BN, BN]``
    block; ``*_scan`` (one program per row) chains them, ``h[c + 1] = u[c] +
    M[c] h[c]``, into the true initial state of every chunk; the correction is
    ``allpole_fwd_kernel`` / ``allpole_bwd_kernel`` again, one program per row
    and chunk, each re-running its chunk from its true initial state. The work
    is about ``N + 2`` times the sequential one (``N + 3`` for float64, below),
    spread over ``B * C`` programs.
    Chunk states, transition matrices and the scan are float64 whatever the
    input dtype: the state of an order-N all-pole filter is its last N outputs,
    and for large N with poles near the unit circle a chunk's transition matrix
    can exceed the states it carries by many orders of magnitude, so that
    ``u + M h`` cancels. With float32 states the PyTorch version of this
    algorithm was up to a hundred times less accurate than the sequential loop
    on such filters (N = 16, 32, poles up to 0.99) and overflowed to NaN on
    some; with float64 states it was as accurate as the float32 sequential loop
    (see :mod:`torchlpc.kernels.chunked`). The chunk runs themselves, and so
    the outputs, stay in float32 for float32 inputs. Float64 inputs have no
    wider states, and on clustered poles near the unit circle the scan alone
    was 40 to 30,000 times less accurate than the sequential kernel; for them
    two more launches refine it, as :mod:`torchlpc.kernels.chunked` does: the
    correction kernel run once from the scanned states, writing where each
    chunk ends (``STORE_FINAL_STATE``), and ``*_refine`` (one program per row),
    which carries the defects ``ht[c] - h[c + 1]`` through the same scan and
    adds the result to the states, before the final correction run.

``choose_triton_variant(B, T, N, device)`` picks one. Sequential when the batch
alone gives enough programs (``B >= 2 * SMs``), when ``N > 32`` (the chunked
variant does ``N + 2`` times the work, and its float64 ``[BN, BN]`` block needs
four warps not to spill at ``BN = 64``: 96 to 111 registers at N = 32 with one
warp, by ptxas for sm_90) or when ``T < 1024``; otherwise chunked,
with ``L`` the power of two nearest ``max(sqrt(16 T), B T / (4 SMs))``, at least
64: chunks long enough that the scan over ``C = T / L`` chunks (a latency-bound
``N x N`` product per chunk) stays short next to one chunk's work, and enough
``B * C`` programs to give every SM several. These thresholds come from a cost
model, not a measurement: no GPU was available when they were set, and they
should be measured on one (see ``benchmarks/``).

Every kernel accumulates in float32, or float64 for float64 inputs (the
chunk-state and scan kernels always in float64, which costs little on data-centre
GPUs but is slow on consumer ones, where fp64 runs at 1/64 rate: one more thing
the variant rule should be measured against); time is not a compile-time
constant; offsets are 64-bit; there are no atomics (the
time-invariant ``grad_A`` of the chunked path is one partial sum per chunk,
added up afterwards). Complex dtypes are not supported: Triton has no complex
type, and :func:`why_unusable` says so, so that the dispatcher can fall back.

Kernels are compiled on first use. On CPU tensors they run only under Triton's
interpreter, which must be switched on (``TRITON_INTERPRET=1``) before this
module is imported.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

__all__ = [
    "allpole",
    "allpole_vjp",
    "choose_triton_variant",
    "why_unusable",
    "allpole_fwd_kernel",
    "allpole_fwd_kernel_chunk_state",
    "allpole_fwd_kernel_scan",
    "allpole_fwd_kernel_refine",
    "allpole_bwd_kernel",
    "allpole_bwd_kernel_chunk_state",
    "allpole_bwd_kernel_scan",
    "allpole_bwd_kernel_refine",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)

# choose_triton_variant's constants, from a cost model; to be measured on a GPU.
_SEQUENTIAL_ROWS_PER_SM = 2
_MAX_CHUNKED_ORDER = 32
_MIN_CHUNKED_LENGTH = 1024
_MIN_CHUNK = 64
_PROGRAMS_PER_SM = 4


def _jit(**options):
    """``triton.jit``; without triton the functions stay plain Python, never called."""
    if triton is None:
        return lambda fn: fn
    return triton.jit(**options)


# ----------------------------------------------------------------------------
# Forward.


@_jit(do_not_specialize=["T", "L"])
def allpole_fwd_kernel(
    x,
    A,
    h0,
    y,
    ht,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Run chunk ``i_c`` of row ``i_b`` from its initial state ``h0[i_b, i_c]`` and write y.

    ``h0`` is ``(B, C, N)``, most recent output first; with ``L = T`` there is one
    chunk and ``h0`` is ``zi``. With ``STORE_FINAL_STATE`` the state the chunk
    ends in is written to ``ht[i_b, i_c]`` (``(B, C, N)``, in ``ACC``).
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # State k is y[t0 - 1 - k], chunk step -1 - k, so it starts in slot N - 1 - k.
    # [BN]
    b_h = tl.load(h0 + i_p * N + (N - 1 - o_n), mask=m_n, other=0).to(ACC)

    p_x = x + i_b * T + t0
    p_y = y + i_b * T + t0
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + (i_b * T + t0) * N
    i_r = tl.zeros([], dtype=tl.int32)
    for _ in range(0, t1 - t0):
        # Slot r holds y[t - 1 - k] with k = (i_r - 1 - r) mod N.
        o_a = i_r - 1 - o_n
        o_a = tl.where(o_a < 0, o_a + N, o_a)
        # [BN]
        b_a = tl.load(p_a + o_a, mask=m_n, other=0).to(ACC)
        b_y = tl.load(p_x).to(ACC) - tl.sum(b_a * b_h)
        tl.store(p_y, b_y.to(p_y.dtype.element_ty))
        b_h = tl.where(o_n == i_r, b_y, b_h)
        i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        p_x += 1
        p_y += 1
        if not TIME_INVARIANT:
            p_a += N

    if STORE_FINAL_STATE:
        # Slot r now holds end-state entry (i_r - 1 - r) mod N.
        o_k = i_r - 1 - o_n
        o_k = tl.where(o_k < 0, o_k + N, o_k)
        tl.store(ht + i_p * N + o_k, b_h, mask=m_n)


@_jit(do_not_specialize=["T", "L"])
def allpole_fwd_kernel_chunk_state(
    x,
    A,
    u,
    M,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    ACC: tl.constexpr,
):
    """Chunk ``i_c``'s end state from a zero state, ``u[i_b, i_c]``, and its transition matrix.

    ``M[i_b, i_c][k, j]`` is end-state entry k when the chunk starts from the unit state
    ``e_j`` with zero input. The last chunk's end state is never needed.
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    if i_c == NC - 1:
        return
    t0 = i_c * L

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN, BN] column j: the ring of the run started from e_j, slot N - 1 - j set.
    b_M = tl.where((o_n[:, None] == N - 1 - o_n[None, :]) & m_n[:, None], 1.0, 0.0).to(ACC)
    # [BN]
    b_u = tl.zeros([BN], dtype=ACC)

    p_x = x + i_b * T + t0
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + (i_b * T + t0) * N
    i_r = tl.zeros([], dtype=tl.int32)
    for _ in range(0, L):
        o_a = i_r - 1 - o_n
        o_a = tl.where(o_a < 0, o_a + N, o_a)
        # [BN]
        b_a = tl.load(p_a + o_a, mask=m_n, other=0).to(ACC)
        b_y = tl.load(p_x).to(ACC) - tl.sum(b_a * b_u)
        b_u = tl.where(o_n == i_r, b_y, b_u)
        # [BN]
        b_m = -tl.sum(b_a[:, None] * b_M, axis=0)
        b_M = tl.where(o_n[:, None] == i_r, b_m[None, :], b_M)
        i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        p_x += 1
        if not TIME_INVARIANT:
            p_a += N

    # Slot r now holds end-state entry (i_r - 1 - r) mod N.
    o_k = i_r - 1 - o_n
    o_k = tl.where(o_k < 0, o_k + N, o_k)
    tl.store(u + i_p * N + o_k, b_u, mask=m_n)
    p_M = M + i_p * N * N + o_k[:, None] * N + o_n[None, :]
    tl.store(p_M, b_M, mask=m_n[:, None] & m_n[None, :])


@_jit(do_not_specialize=["T", "L"])
def allpole_fwd_kernel_scan(
    zi,
    u,
    M,
    h0,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    ACC: tl.constexpr,
):
    """The initial state of every chunk of row ``i_b``.

    ``h0[0] = zi`` and ``h0[c + 1] = u[c] + M[c] h0[c]``.
    """
    i_b = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN]
    b_h = tl.load(zi + i_b * N + o_n, mask=m_n, other=0).to(ACC)
    p_h = h0 + i_b * NC * N + o_n
    p_u = u + i_b * NC * N + o_n
    p_M = M + i_b * NC * N * N + o_n[:, None] * N + o_n[None, :]
    for _ in range(0, NC - 1):
        tl.store(p_h, b_h, mask=m_n)
        # [BN, BN]
        b_M = tl.load(p_M, mask=m_n[:, None] & m_n[None, :], other=0)
        b_h = tl.load(p_u, mask=m_n, other=0) + tl.sum(b_M * b_h[None, :], axis=1)
        p_h += N
        p_u += N
        p_M += N * N
    tl.store(p_h, b_h, mask=m_n)


@_jit(do_not_specialize=["T", "L"])
def allpole_fwd_kernel_refine(
    M,
    h0,
    ht,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    ACC: tl.constexpr,
):
    """Correct the chunks' initial states ``h0`` of row ``i_b`` in place.

    ``ht[c]`` is where chunk c ends when run from ``h0[c]``; the defect
    ``ht[c] - h0[c + 1]``, carried through the scan, ``e[0] = 0`` and
    ``e[c + 1] = ht[c] - h0[c + 1] + M[c] e[c]``, is the correction ``h0 += e``.
    """
    i_b = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN]
    b_e = tl.zeros([BN], dtype=ACC)
    p_h = h0 + i_b * NC * N + o_n
    p_t = ht + i_b * NC * N + o_n
    p_M = M + i_b * NC * N * N + o_n[:, None] * N + o_n[None, :]
    for _ in range(0, NC - 1):
        tl.store(p_h, tl.load(p_h, mask=m_n, other=0) + b_e, mask=m_n)
        # [BN, BN]
        b_M = tl.load(p_M, mask=m_n[:, None] & m_n[None, :], other=0)
        b_d = tl.load(p_t, mask=m_n, other=0) - tl.load(p_h + N, mask=m_n, other=0)
        b_e = b_d + tl.sum(b_M * b_e[None, :], axis=1)
        p_h += N
        p_t += N
        p_M += N * N
    tl.store(p_h, tl.load(p_h, mask=m_n, other=0) + b_e, mask=m_n)


# ----------------------------------------------------------------------------
# Backward.


@_jit(do_not_specialize=["T", "L"])
def allpole_bwd_kernel(
    grad_y,
    A,
    y,
    zi,
    h0,
    grad_x,
    grad_A,
    grad_zi,
    ht,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    NEED_A: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Run chunk ``i_c`` of row ``i_b`` backwards; write grad_x, grad_A and, for chunk 0, grad_zi.

    ``h0[i_b, i_c, k]`` (``(B, C, N)``, zero without ``USE_INITIAL_STATE``) is the
    sum already pushed onto time ``t1 - 1 - k`` of the chunk ``[t0, t1)``. For a
    time-invariant A, ``grad_A`` is ``(B, C, N)``: one partial sum per chunk.
    With ``STORE_FINAL_STATE`` what the chunk pushes onto time ``t0 - 1 - k`` is
    written to ``ht[i_b, i_c, k]`` (``(B, C, N)``, in ``ACC``).
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # Slot r: the sum pushed onto the time s steps before t1 - 1, s = r (mod N).
    # [BN]
    if USE_INITIAL_STATE:
        b_h = tl.load(h0 + i_p * N + o_n, mask=m_n, other=0).to(ACC)
    else:
        b_h = tl.zeros([BN], dtype=ACC)
    # [BN]
    b_dA = tl.zeros([BN], dtype=ACC)

    p_gy = grad_y + i_b * T + t1 - 1
    p_gx = grad_x + i_b * T + t1 - 1
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + (i_b * T + t1 - 1) * N
        p_dA = grad_A + (i_b * T + t1 - 1) * N + o_n
    i_r = tl.zeros([], dtype=tl.int32)
    for i_s in range(0, t1 - t0):
        i_t = t1 - 1 - i_s
        b_g = tl.load(p_gy).to(ACC) + tl.sum(tl.where(o_n == i_r, b_h, 0))
        tl.store(p_gx, b_g.to(p_gx.dtype.element_ty))
        # Slot r receives the push onto t - 1 - k with k = (r - i_r - 1) mod N;
        # slot i_r, just consumed, starts over as the sum for t - N.
        o_a = o_n - i_r - 1
        o_a = tl.where(o_a < 0, o_a + N, o_a)
        # [BN]
        b_a = tl.load(p_a + o_a, mask=m_n, other=0).to(ACC)
        b_h = tl.where(o_n == i_r, 0, b_h) - b_a * b_g
        if NEED_A:
            # y[t - 1 - n], or zi[n - t] before time 0.
            o_y = i_t - 1 - o_n
            # [BN]
            b_y = tl.load(y + i_b * T + o_y, mask=m_n & (o_y >= 0), other=0).to(ACC)
            b_y += tl.load(zi + i_b * N + (o_n - i_t), mask=m_n & (o_y < 0), other=0).to(ACC)
            if TIME_INVARIANT:
                b_dA -= b_g * b_y
            else:
                tl.store(p_dA, (-b_g * b_y).to(p_dA.dtype.element_ty), mask=m_n)
                p_dA -= N
        i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        p_gy -= 1
        p_gx -= 1
        if not TIME_INVARIANT:
            p_a -= N

    # Slot r now holds the sum pushed onto time t0 - 1 - k, k = (r - i_r) mod N.
    o_k = o_n - i_r
    o_k = tl.where(o_k < 0, o_k + N, o_k)
    if i_c == 0:
        tl.store(grad_zi + i_b * N + o_k, b_h.to(grad_zi.dtype.element_ty), mask=m_n)
    if STORE_FINAL_STATE:
        tl.store(ht + i_p * N + o_k, b_h, mask=m_n)
    if NEED_A and TIME_INVARIANT:
        tl.store(grad_A + i_p * N + o_n, b_dA, mask=m_n)


@_jit(do_not_specialize=["T", "L"])
def allpole_bwd_kernel_chunk_state(
    grad_y,
    A,
    u,
    M,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    ACC: tl.constexpr,
):
    """What chunk ``i_c`` pushes onto the N times before it: ``u + M h`` for incoming pushes h.

    ``u[i_b, i_c]`` is driven by grad_y with nothing incoming; ``M[i_b, i_c][k, j]``
    is the push onto ``t0 - 1 - k`` from a unit push onto ``t1 - 1 - j`` with zero
    grad_y. Chunk 0 is left to ``allpole_bwd_kernel``, which ends in grad_zi.
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    if i_c == 0:
        return
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN, BN] column j: the ring of the run started from a unit push in slot j.
    b_M = tl.where((o_n[:, None] == o_n[None, :]) & m_n[:, None], 1.0, 0.0).to(ACC)
    # [BN]
    b_u = tl.zeros([BN], dtype=ACC)

    p_gy = grad_y + i_b * T + t1 - 1
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + (i_b * T + t1 - 1) * N
    i_r = tl.zeros([], dtype=tl.int32)
    for _ in range(0, t1 - t0):
        m_r = o_n == i_r
        b_g = tl.load(p_gy).to(ACC) + tl.sum(tl.where(m_r, b_u, 0))
        # [BN]
        b_m = tl.sum(tl.where(m_r[:, None], b_M, 0), axis=0)
        o_a = o_n - i_r - 1
        o_a = tl.where(o_a < 0, o_a + N, o_a)
        # [BN]
        b_a = tl.load(p_a + o_a, mask=m_n, other=0).to(ACC)
        b_u = tl.where(m_r, 0, b_u) - b_a * b_g
        b_M = tl.where(m_r[:, None], 0, b_M) - b_a[:, None] * b_m[None, :]
        i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        p_gy -= 1
        if not TIME_INVARIANT:
            p_a -= N

    o_k = o_n - i_r
    o_k = tl.where(o_k < 0, o_k + N, o_k)
    tl.store(u + i_p * N + o_k, b_u, mask=m_n)
    p_M = M + i_p * N * N + o_k[:, None] * N + o_n[None, :]
    tl.store(p_M, b_M, mask=m_n[:, None] & m_n[None, :])


@_jit(do_not_specialize=["T", "L"])
def allpole_bwd_kernel_scan(
    u,
    M,
    h0,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    ACC: tl.constexpr,
):
    """The pushes entering every chunk of row ``i_b`` from later ones, last chunk first.

    ``h0[C - 1] = 0`` and ``h0[c - 1] = u[c] + M[c] h0[c]``.
    """
    i_b = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN]
    b_h = tl.zeros([BN], dtype=ACC)
    p_h = h0 + (i_b * NC + NC - 1) * N + o_n
    p_u = u + (i_b * NC + NC - 1) * N + o_n
    p_M = M + (i_b * NC + NC - 1) * N * N + o_n[:, None] * N + o_n[None, :]
    for _ in range(0, NC - 1):
        tl.store(p_h, b_h, mask=m_n)
        # [BN, BN]
        b_M = tl.load(p_M, mask=m_n[:, None] & m_n[None, :], other=0)
        b_h = tl.load(p_u, mask=m_n, other=0) + tl.sum(b_M * b_h[None, :], axis=1)
        p_h -= N
        p_u -= N
        p_M -= N * N
    tl.store(p_h, b_h, mask=m_n)


@_jit(do_not_specialize=["T", "L"])
def allpole_bwd_kernel_refine(
    M,
    h0,
    ht,
    T,
    L,
    N: tl.constexpr,
    BN: tl.constexpr,
    ACC: tl.constexpr,
):
    """Correct the pushes ``h0`` entering every chunk of row ``i_b`` in place, last chunk first.

    ``ht[c]`` is what chunk c pushes onto the chunk before it when run from
    ``h0[c]``; the defect ``ht[c] - h0[c - 1]``, carried through the scan,
    ``e[C - 1] = 0`` and ``e[c - 1] = ht[c] - h0[c - 1] + M[c] e[c]``, is the
    correction ``h0 += e``.
    """
    i_b = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    # [BN]
    b_e = tl.zeros([BN], dtype=ACC)
    p_h = h0 + (i_b * NC + NC - 1) * N + o_n
    p_t = ht + (i_b * NC + NC - 1) * N + o_n
    p_M = M + (i_b * NC + NC - 1) * N * N + o_n[:, None] * N + o_n[None, :]
    for _ in range(0, NC - 1):
        tl.store(p_h, tl.load(p_h, mask=m_n, other=0) + b_e, mask=m_n)
        # [BN, BN]
        b_M = tl.load(p_M, mask=m_n[:, None] & m_n[None, :], other=0)
        b_d = tl.load(p_t, mask=m_n, other=0) - tl.load(p_h - N, mask=m_n, other=0)
        b_e = b_d + tl.sum(b_M * b_e[None, :], axis=1)
        p_h -= N
        p_t -= N
        p_M -= N * N
    tl.store(p_h, tl.load(p_h, mask=m_n, other=0) + b_e, mask=m_n)


# ----------------------------------------------------------------------------
# Launchers.


def why_unusable(device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """None if these kernels can run on tensors of ``device`` (and ``dtype``), else the reason."""
    if triton is None:
        return "the triton backend needs the 'triton' package, which is not installed"
    device = torch.device(device)
    if device.type == "cpu":
        if not _interpreted():
            return (
                "Triton kernels run on CUDA tensors; CPU tensors need Triton's interpreter, "
                "switched on with TRITON_INTERPRET=1 before torchlpc's Triton kernels are imported"
            )
    elif device.type != "cuda":
        return f"the triton backend runs on CUDA tensors, not on {device.type!r} tensors"
    if dtype is not None and dtype not in _SUPPORTED_DTYPES:
        return f"the triton backend supports float32 and float64, not {dtype}{_why_not(dtype)}"
    return None


def _why_not(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return " (Triton has no complex type)"
    if dtype in (torch.float16, torch.bfloat16):
        return " (the public functions compute half precision in float32)"
    return ""


def _interpreted() -> bool:
    """Whether the kernels were defined under Triton's interpreter, which also runs CPU tensors."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(allpole_fwd_kernel, InterpretedFunction)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _default_chunk_size(B: int, T: int, sms: int) -> int:
    target = max(math.sqrt(16 * T), B * T / (_PROGRAMS_PER_SM * sms), _MIN_CHUNK)
    return min(T, 1 << round(math.log2(target)))


def choose_triton_variant(B: int, T: int, N: int, device: torch.device) -> tuple[str, int]:
    """``("sequential", T)`` or ``("chunked", L)`` for a problem of this shape.

    The rule, and why its constants are provisional, is in the module docstring.
    """
    sms = _sm_count(torch.device(device))
    if B >= _SEQUENTIAL_ROWS_PER_SM * sms or N > _MAX_CHUNKED_ORDER or T < _MIN_CHUNKED_LENGTH:
        return "sequential", T
    return "chunked", _default_chunk_size(B, T, sms)


def _plan(
    B: int, T: int, N: int, device: torch.device, variant: str | None, chunk_size: int | None
) -> tuple[str, int]:
    variant, L = _choose(B, T, N, device, variant, chunk_size)
    _check_order(N, variant)
    return variant, L


def _choose(
    B: int, T: int, N: int, device: torch.device, variant: str | None, chunk_size: int | None
) -> tuple[str, int]:
    if variant is None and chunk_size is None:
        return choose_triton_variant(B, T, N, device)
    if variant == "sequential":
        return "sequential", T
    if variant not in (None, "chunked"):
        raise ValueError(f"variant must be 'sequential', 'chunked' or None, got {variant!r}.")
    if chunk_size is None:
        return "chunked", _default_chunk_size(B, T, _sm_count(device))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples, got {chunk_size}.")
    return "chunked", min(chunk_size, T)


def _check_order(N: int, variant: str) -> None:
    """Refuse, before launch, an order whose blocks Triton cannot hold."""
    BN = triton.next_power_of_2(N)
    largest = tl.TRITON_MAX_TENSOR_NUMEL
    if variant == "chunked" and BN * BN > largest:
        raise ValueError(
            f"the chunked Triton kernels hold an N x N transition matrix in one block, "
            f"at most {largest} elements, so N can be at most {math.isqrt(largest)}, "
            f"not {N}; use variant='sequential'."
        )
    if BN > largest:
        raise ValueError(
            f"torchlpc's Triton kernels hold the last N values in one block of at most "
            f"{largest} elements, so N can be at most {largest}, not {N}."
        )


def _on_device_of_first_argument(launcher):
    """Launch on the device of the first tensor, not on whichever CUDA device is current."""

    @functools.wraps(launcher)
    def wrapper(first: Tensor, *args, **kwargs):
        if first.device.type != "cuda":
            context = contextlib.nullcontext()
        else:
            context = torch.cuda.device(first.device)
        with context:
            return launcher(first, *args, **kwargs)

    return wrapper


def _check_dtype(x: Tensor) -> None:
    if x.dtype not in _SUPPORTED_DTYPES:
        raise NotImplementedError(
            f"torchlpc's Triton kernels support float32 and float64, not {x.dtype}"
            f"{_why_not(x.dtype)}."
        )


def _refines(data: Tensor, C: int) -> bool:
    """Whether the chunked variant refines its scan: several chunks, states no wider than data."""
    return data.dtype == torch.float64 and C > 1


def _meta(A: Tensor) -> dict:
    N = A.shape[-1]
    BN = triton.next_power_of_2(N)
    return dict(
        N=N,
        BN=BN,
        ACC=tl.float64 if A.dtype == torch.float64 else tl.float32,
        num_warps=1 if BN <= 32 else 4,
        # Fused multiply-adds, as in the numba kernels; said explicitly because
        # Triton 3.9 warns when the default is left implicit.
        enable_fp_fusion=True,
    )


@_on_device_of_first_argument
def allpole(
    x: Tensor, A: Tensor, zi: Tensor, *, variant: str | None = None, chunk_size: int | None = None
) -> Tensor:
    """``y[t] = x[t] - sum_i A[t, i-1] y[t-i]``, ``y[-1-k] = zi[k]``.

    Args:
        x: signal, ``(B, T)``.
        A: coefficients, ``(B, T, N)``, or ``(B, 1, N)`` for a time-invariant filter.
        zi: initial state, ``(B, N)``, most recent first.
        variant: ``"sequential"``, ``"chunked"`` or None (default) for
            :func:`choose_triton_variant`'s choice.
        chunk_size: chunk length of the chunked variant; giving one without a
            variant selects ``"chunked"``.

    Returns:
        y, ``(B, T)``, contiguous.
    """
    _check_dtype(x)
    B, T = x.shape
    N = A.shape[-1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel() == 0:
        return y
    x, A, zi = x.contiguous(), A.contiguous(), zi.contiguous()
    variant, L = _plan(B, T, N, x.device, variant, chunk_size)
    meta = _meta(A)
    time_invariant = A.shape[1] == 1
    flags = dict(TIME_INVARIANT=time_invariant, STORE_FINAL_STATE=False)
    if variant == "sequential":
        allpole_fwd_kernel[(B,)](x, A, zi, y, None, T, T, **flags, **meta)
        return y
    C = triton.cdiv(T, L)
    u = x.new_empty(B, C, N, dtype=torch.float64)
    M = x.new_empty(B, C, N, N, dtype=torch.float64)
    h0 = x.new_empty(B, C, N, dtype=torch.float64)
    wide = dict(meta, ACC=tl.float64)
    allpole_fwd_kernel_chunk_state[(B * C,)](
        x, A, u, M, T, L, TIME_INVARIANT=time_invariant, **wide
    )
    allpole_fwd_kernel_scan[(B,)](zi, u, M, h0, T, L, **wide)
    if _refines(x, C):
        ht = x.new_empty(B, C, N, dtype=torch.float64)
        allpole_fwd_kernel[(B * C,)](
            x, A, h0, y, ht, T, L, **dict(flags, STORE_FINAL_STATE=True), **meta
        )
        allpole_fwd_kernel_refine[(B,)](M, h0, ht, T, L, **wide)
    allpole_fwd_kernel[(B * C,)](x, A, h0, y, None, T, L, **flags, **meta)
    return y


@_on_device_of_first_argument
def allpole_vjp(
    grad_y: Tensor,
    A: Tensor,
    y: Tensor,
    zi: Tensor,
    need_A: bool,
    *,
    variant: str | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused backward pass of :func:`allpole`: ``(grad_x, grad_A, grad_zi)``.

    ``grad_A`` is ``(B, T, N)``, or ``(B, 1, N)`` summed over time for a
    time-invariant A, or ``A.new_empty((0, 0, 0))`` when ``need_A`` is false.
    ``variant`` and ``chunk_size`` are as in :func:`allpole`.
    """
    _check_dtype(grad_y)
    B, T = grad_y.shape
    N = A.shape[-1]
    time_invariant = A.shape[1] == 1
    grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format)
    grad_zi = torch.empty_like(zi, memory_format=torch.contiguous_format)
    if grad_y.numel() == 0:
        if not need_A:
            grad_A = A.new_empty((0, 0, 0))
        elif time_invariant:
            grad_A = torch.zeros_like(A, memory_format=torch.contiguous_format)
        else:
            grad_A = torch.empty_like(A, memory_format=torch.contiguous_format)
        return grad_x, grad_A, grad_zi.zero_()
    grad_y, A, y, zi = grad_y.contiguous(), A.contiguous(), y.contiguous(), zi.contiguous()
    variant, L = _plan(B, T, N, grad_y.device, variant, chunk_size)
    C = 1 if variant == "sequential" else triton.cdiv(T, L)
    acc = torch.float64 if A.dtype == torch.float64 else torch.float32
    if not need_A:
        grad_A = A.new_empty((0, 0, 0))
    elif time_invariant:
        # One partial sum per chunk, added up afterwards: no atomics.
        grad_A = grad_y.new_empty(B, C, N, dtype=acc)
    else:
        grad_A = torch.empty_like(A, memory_format=torch.contiguous_format)
    meta = _meta(A)
    flags = dict(TIME_INVARIANT=time_invariant, NEED_A=need_A, STORE_FINAL_STATE=False)
    if variant == "sequential":
        allpole_bwd_kernel[(B,)](
            grad_y, A, y, zi, None, grad_x, grad_A, grad_zi, None, T, T,
            USE_INITIAL_STATE=False, **flags, **meta,
        )
    else:
        u = grad_y.new_empty(B, C, N, dtype=torch.float64)
        M = grad_y.new_empty(B, C, N, N, dtype=torch.float64)
        h0 = grad_y.new_empty(B, C, N, dtype=torch.float64)
        wide = dict(meta, ACC=tl.float64)
        allpole_bwd_kernel_chunk_state[(B * C,)](
            grad_y, A, u, M, T, L, TIME_INVARIANT=time_invariant, **wide
        )
        allpole_bwd_kernel_scan[(B,)](u, M, h0, T, L, **wide)
        if _refines(grad_y, C):
            ht = grad_y.new_empty(B, C, N, dtype=torch.float64)
            allpole_bwd_kernel[(B * C,)](
                grad_y, A, y, zi, h0, grad_x, grad_A, grad_zi, ht, T, L,
                USE_INITIAL_STATE=True, **dict(flags, NEED_A=False, STORE_FINAL_STATE=True),
                **meta,
            )
            allpole_bwd_kernel_refine[(B,)](M, h0, ht, T, L, **wide)
        allpole_bwd_kernel[(B * C,)](
            grad_y, A, y, zi, h0, grad_x, grad_A, grad_zi, None, T, L,
            USE_INITIAL_STATE=True, **flags, **meta,
        )
    if need_A and time_invariant:
        grad_A = grad_A.sum(1, keepdim=True).to(A.dtype)
    return grad_x, grad_A, grad_zi
