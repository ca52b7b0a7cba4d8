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

Both runs over time take blocks of BT steps: the next block's coefficient rows,
a ``[BT, BN]`` tile already rotated for each step's ring phase, and its BT inputs
are loaded while the recursion runs over the current block from registers, so
that no step waits on global memory; a block's outputs (and, backwards, its
``[BT, BN]`` tile of ``grad_A``, which is off the recursion's path) are written
after it. Each step takes its row from the tile with a masked sum over the BT
rows, which in the compiled kernel is a select in registers and a shuffle.

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
four warps not to spill at ``BN = 64``; at N = 32 with one warp the chunk-state
kernels take 124 and 146 registers, by ptxas for sm_90) or when ``T < 1024``;
otherwise chunked,
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

Every call runs a launch plan (:func:`forward_plan`, :func:`backward_plan`: each
kernel with its constexprs, warps, stages and fp-fusion), which
``tests/test_triton_compile.py`` and ``benchmarks/triton_resources.py`` compile for
sm_80, sm_90 and sm_120 without a GPU (:func:`every_plan`, :func:`compile_launch`);
docs/performance.md has the registers, spills and loads per loop ptxas gives them.
Orders up to :data:`MAX_ORDER` (sequential) and :data:`MAX_CHUNKED_ORDER`
(chunked) are taken; beyond, the blocks would not fit in registers.

Kernels are compiled on first use. On CPU tensors they run only under Triton's
interpreter, which must be switched on (``TRITON_INTERPRET=1``) before this
module is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
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
    "MAX_ORDER",
    "MAX_CHUNKED_ORDER",
    "Launch",
    "Plan",
    "forward_plan",
    "backward_plan",
    "every_plan",
    "compile_launch",
    "chunked_scratch_bytes",
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
# The largest orders the kernels take, as far as their blocks fit in registers
# without spilling (benchmarks/triton_resources.py; docs/performance.md).
MAX_ORDER = 4096
MAX_CHUNKED_ORDER = 64

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
    BT: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr,
    ACC: tl.constexpr,
):
    """Run chunk ``i_c`` of row ``i_b`` from its initial state ``h0[i_b, i_c]`` and write y.

    ``h0`` is ``(B, C, N)``, most recent output first; with ``L = T`` there is one
    chunk and ``h0`` is ``zi``. With ``STORE_FINAL_STATE`` the state the chunk
    ends in is written to ``ht[i_b, i_c]`` (``(B, C, N)``, in ``ACC``).

    Time goes in blocks of BT steps. The coefficients and inputs of the next block
    are loaded while the recursion runs over the current one from registers, so
    that no step waits on memory; a block's outputs are stored at its end.
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    o_t = tl.arange(0, BT)
    # State k is y[t0 - 1 - k], chunk step -1 - k, so it starts in slot N - 1 - k.
    # [BN]
    b_h = tl.load(h0 + i_p * N + (N - 1 - o_n), mask=m_n, other=0).to(ACC)

    p_x = x + i_b * T
    p_y = y + i_b * T
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + i_b * T * N
    # [BT], [BT, BN]
    b_x, b_A = _fwd_block(p_x, p_a, t0, t0, t1, N, BN, BT, TIME_INVARIANT, ACC)
    for t_b in range(t0, t1, BT):
        b_xn, b_An = _fwd_block(p_x, p_a, t0, t_b + BT, t1, N, BN, BT, TIME_INVARIANT, ACC)
        # Slot r holds y[t - 1 - k] with k = (i_r - 1 - r) mod N.
        i_r = tl.cast((t_b - t0) % N, tl.int32)
        # [BT]
        b_yb = tl.zeros([BT], dtype=ACC)
        for j in tl.range(0, BT, loop_unroll_factor=1):
            # Row j of the block, its coefficients already rotated to the ring.
            # [BN]
            b_a = tl.sum(tl.where(o_t[:, None] == j, b_A, 0), axis=0)
            b_y = tl.sum(tl.where(o_t == j, b_x, 0)) - tl.sum(b_a * b_h)
            b_yb = tl.where(o_t == j, b_y, b_yb)
            b_h = tl.where((o_n == i_r) & (t_b + j < t1), b_y, b_h)
            i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        tl.store(p_y + t_b + o_t, b_yb.to(p_y.dtype.element_ty), mask=t_b + o_t < t1)
        b_x, b_A = b_xn, b_An

    if STORE_FINAL_STATE:
        # Slot r now holds end-state entry (i_r - 1 - r) mod N, i_r = (t1 - t0) mod N.
        o_k = (tl.cast((t1 - t0) % N, tl.int32) + N - 1 - o_n) % N
        tl.store(ht + i_p * N + o_k, b_h, mask=m_n)


@_jit()
def _fwd_block(
    p_x,
    p_a,
    t0,
    t_b,
    t1,
    N: tl.constexpr,
    BN: tl.constexpr,
    BT: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    ACC: tl.constexpr,
):
    """x and the coefficient rows of times ``[t_b, t_b + BT)`` below t1, zero beyond.

    Row j's coefficients are rotated for the ring phase of step ``t_b + j``:
    entry r is ``A[t, (t - t0 - 1 - r) mod N]``.
    """
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    m_t = t_b + o_t < t1
    # (t - t0 - 1 - r) mod N, kept non-negative so that % means the same
    # compiled and in the interpreter.
    o_a = tl.cast((t_b - t0) % N, tl.int32) + o_t[:, None] + (N - 1 - o_n[None, :])
    o_a = o_a % N
    if not TIME_INVARIANT:
        o_a += (t_b + o_t[:, None]) * N
    # [BT]
    b_x = tl.load(p_x + t_b + o_t, mask=m_t, other=0).to(ACC)
    # [BT, BN]
    b_A = tl.load(p_a + o_a, mask=m_t[:, None] & (o_n[None, :] < N), other=0).to(ACC)
    return b_x, b_A


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
    BT: tl.constexpr,
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

    Blocks of BT steps, as in :func:`allpole_fwd_kernel`, from the last: grad_y
    and the coefficient rows of the next block are loaded while the recursion
    runs over the current one, and the block's outputs y[t - 1 - n] are loaded
    at its start; grad_A, which is not on the recursion's path, is formed for the
    whole block after it, one ``[BT, BN]`` tile.
    """
    i_p = tl.program_id(0).to(tl.int64)
    NC = tl.cdiv(T, L)
    i_b, i_c = i_p // NC, i_p % NC
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)

    o_n = tl.arange(0, BN)
    m_n = o_n < N
    o_t = tl.arange(0, BT)
    # Slot r: the sum pushed onto the time s steps before t1 - 1, s = r (mod N).
    # [BN]
    if USE_INITIAL_STATE:
        b_h = tl.load(h0 + i_p * N + o_n, mask=m_n, other=0).to(ACC)
    else:
        b_h = tl.zeros([BN], dtype=ACC)
    # [BN]
    b_dA = tl.zeros([BN], dtype=ACC)

    p_gy = grad_y + i_b * T
    p_gx = grad_x + i_b * T
    if TIME_INVARIANT:
        p_a = A + i_b * N
    else:
        p_a = A + i_b * T * N
    # Step s of the chunk is time t1 - 1 - s; a block is steps [s_b, s_b + BT).
    # [BT], [BT, BN]
    b_gy, b_A = _bwd_block(p_gy, p_a, t0, 0, t1, N, BN, BT, TIME_INVARIANT, ACC)
    for s_b in range(0, t1 - t0, BT):
        b_gyn, b_An = _bwd_block(p_gy, p_a, t0, s_b + BT, t1, N, BN, BT, TIME_INVARIANT, ACC)
        o_tt = t1 - 1 - s_b - o_t
        m_t = o_tt >= t0
        if NEED_A:
            # y[t - 1 - n], or zi[n - t] before time 0.
            o_y = o_tt[:, None] - 1 - o_n[None, :]
            m_y = m_t[:, None] & m_n[None, :]
            # [BT, BN]
            b_Y = tl.load(y + i_b * T + o_y, mask=m_y & (o_y >= 0), other=0).to(ACC)
            b_Y += tl.load(zi + i_b * N + (-1 - o_y), mask=m_y & (o_y < 0), other=0).to(ACC)
        i_r = tl.cast(s_b % N, tl.int32)
        # [BT]
        b_gb = tl.zeros([BT], dtype=ACC)
        for j in tl.range(0, BT, loop_unroll_factor=1):
            m_r = o_n == i_r
            b_g = tl.sum(tl.where(o_t == j, b_gy, 0)) + tl.sum(tl.where(m_r, b_h, 0))
            b_gb = tl.where((o_t == j) & (s_b + j < t1 - t0), b_g, b_gb)
            # Slot r receives the push onto t - 1 - k with k = (r - i_r - 1) mod N;
            # slot i_r, just consumed, starts over as the sum for t - N. Row j of
            # the block comes with its coefficients already in that order.
            # [BN]
            b_a = tl.sum(tl.where(o_t[:, None] == j, b_A, 0), axis=0)
            b_h = tl.where(s_b + j < t1 - t0, tl.where(m_r, 0, b_h) - b_a * b_g, b_h)
            i_r = tl.where(i_r == N - 1, 0, i_r + 1)
        tl.store(p_gx + o_tt, b_gb.to(p_gx.dtype.element_ty), mask=m_t)
        if NEED_A:
            # [BT, BN]
            b_dAb = -b_gb[:, None] * b_Y
            if TIME_INVARIANT:
                b_dA += tl.sum(b_dAb, axis=0)
            else:
                p_dA = grad_A + (i_b * T + o_tt[:, None]) * N + o_n[None, :]
                tl.store(p_dA, b_dAb.to(p_dA.dtype.element_ty), mask=m_t[:, None] & m_n[None, :])
        b_gy, b_A = b_gyn, b_An

    # Slot r now holds the sum pushed onto time t0 - 1 - k, k = (r - i_r) mod N,
    # i_r = (t1 - t0) mod N.
    o_k = (o_n + N - tl.cast((t1 - t0) % N, tl.int32)) % N
    if i_c == 0:
        tl.store(grad_zi + i_b * N + o_k, b_h.to(grad_zi.dtype.element_ty), mask=m_n)
    if STORE_FINAL_STATE:
        tl.store(ht + i_p * N + o_k, b_h, mask=m_n)
    if NEED_A and TIME_INVARIANT:
        tl.store(grad_A + i_p * N + o_n, b_dA, mask=m_n)


@_jit()
def _bwd_block(
    p_gy,
    p_a,
    t0,
    s_b,
    t1,
    N: tl.constexpr,
    BN: tl.constexpr,
    BT: tl.constexpr,
    TIME_INVARIANT: tl.constexpr,
    ACC: tl.constexpr,
):
    """grad_y and the coefficient rows of steps ``[s_b, s_b + BT)`` (time ``t1 - 1 - s``).

    Steps before t0 read zero. Row j's coefficients are in the order its pushes
    land in the ring: entry r is ``A[t, (r - s - 1) mod N]``.
    """
    o_n = tl.arange(0, BN)
    o_t = tl.arange(0, BT)
    o_tt = t1 - 1 - s_b - o_t
    m_t = o_tt >= t0
    # Kept non-negative, so that % means the same compiled and in the interpreter.
    o_a = o_n[None, :] + (N * (BT + 1) - 1) - tl.cast(s_b % N, tl.int32) - o_t[:, None]
    o_a = o_a % N
    if not TIME_INVARIANT:
        o_a += o_tt[:, None] * N
    # [BT]
    b_gy = tl.load(p_gy + o_tt, mask=m_t, other=0).to(ACC)
    # [BT, BN]
    b_A = tl.load(p_a + o_a, mask=m_t[:, None] & (o_n[None, :] < N), other=0).to(ACC)
    return b_gy, b_A


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
    """Refuse, before launch, an order whose blocks would not fit in registers."""
    if variant == "chunked" and N > MAX_CHUNKED_ORDER:
        raise ValueError(
            f"the chunked Triton kernels hold an N x N float64 transition matrix in "
            f"registers, so N can be at most {MAX_CHUNKED_ORDER}, not {N}; use "
            f"variant='sequential'."
        )
    if N > MAX_ORDER:
        raise ValueError(
            f"torchlpc's Triton kernels hold the last N values in registers, so N can be "
            f"at most {MAX_ORDER}, not {N}."
        )


def chunked_scratch_bytes(B: int, C: int, N: int) -> int:
    """Memory the chunked variant allocates besides its outputs, at most.

    Float64 ``u``, ``h0`` and (for float64 data) ``ht``, ``(B, C, N)`` each, and
    the transition matrices ``M``, ``(B, C, N, N)``: ``8 B C N (N + 3)`` bytes.
    """
    return 8 * B * C * N * (N + 3)


def _check_scratch(variant: str, B: int, C: int, N: int, data: Tensor, A: Tensor) -> None:
    """Refuse chunks so short that their transition matrices outweigh the inputs.

    The automatic chunk length (at least 64 steps, N at most 32) keeps the
    scratch below about 1.1 times the bytes of ``data`` and ``A``; only a short
    ``chunk_size`` given by hand reaches the cap, twice those bytes (64 MiB
    for small inputs).
    """
    if variant != "chunked":
        return
    needed = chunked_scratch_bytes(B, C, N)
    cap = max(2 * (data.numel() * data.element_size() + A.numel() * A.element_size()), 1 << 26)
    if needed > cap:
        raise ValueError(
            f"chunk_size gives {C} chunks per row, whose float64 states and N x N "
            f"transition matrices would take {needed / 2**20:.0f} MiB, more than twice "
            f"the inputs ({cap / 2**20:.0f} MiB); use longer chunks (or none, for the "
            f"automatic choice)."
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


def _refines(dtype: torch.dtype, several_chunks: bool) -> bool:
    """Whether the chunked variant refines its scan: several chunks, states no wider than data."""
    return dtype == torch.float64 and several_chunks


# ----------------------------------------------------------------------------
# Launch plans: the launchers below and the compile test and resource report
# (tests/test_triton_compile.py, benchmarks/triton_resources.py) build them alike,
# so every kernel variant the launchers can run is the one those compile.

VARIANTS = ("sequential", "chunked")
_INTERPRETED_BLOCK = 4
_TRITON_POINTER = {torch.float32: "*fp32", torch.float64: "*fp64"}


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch of a plan.

    ``grid`` is ``"B"`` (one program per row) or ``"BC"`` (one per row and
    chunk); ``args`` are the kernel's arguments other than its constexprs, in
    order, each the name of a tensor of the plan, ``"T"`` or ``"L"``, or None.
    """

    kernel: object
    grid: str
    args: tuple
    constexprs: dict
    options: dict

    def source(self, dtypes: dict) -> tuple[dict, dict, dict]:
        """``signature, constexprs, attrs`` for ``ASTSource``, as Triton's launcher makes them.

        Tensors (their dtypes in ``dtypes``) are pointers divisible by 16, as
        fresh allocations are; ``T`` and ``L`` are 32-bit (T below 2**31).
        """
        signature, constexprs, attrs = {}, dict(self.constexprs), {}
        values = iter(self.args)
        for i, name in enumerate(self.kernel.arg_names):
            if name in self.constexprs:
                signature[name] = "constexpr"
                continue
            value = next(values)
            if value is None:
                signature[name] = "constexpr"
                constexprs[name] = None
            elif value in ("T", "L"):
                signature[name] = "i32"
            else:
                signature[name] = _TRITON_POINTER[dtypes[value]]
                attrs[(i,)] = [["tt.divisibility", 16]]
        return signature, constexprs, attrs


@dataclasses.dataclass(frozen=True)
class Plan:
    """The launches of one call, and the tensors they use.

    ``dtypes`` gives every tensor named in the launches its dtype; ``scratch``
    the shapes, in ``"B"``, ``"C"``, ``"N"``, of those the launcher allocates.
    """

    launches: tuple
    dtypes: dict
    scratch: dict


def _constants(dtype: torch.dtype, N: int) -> tuple[dict, dict, dict, dict]:
    """Constexprs and launch options: of the runs over time, and of the chunk-state kernels.

    The runs (``allpole_fwd_kernel``, ``allpole_bwd_kernel``): each step is a
    dot product over the BN lanes of the ring, within one warp a few shuffles;
    spread over several warps, every step would wait on shared memory and a
    barrier. So one warp up to BN = 256 (8 values a thread in each ``[BN]``
    block), then a warp more per 256 lanes so that registers suffice. Blocks of
    BT steps: the coefficient tile, loaded a block ahead, is ``[BT, BN]`` twice,
    kept to about 16 registers a thread each.

    The chunk-state, scan and refine kernels hold a float64 ``[BN, BN]`` block,
    in registers up to 32 values a thread: one warp up to BN = 32, then as many
    as that takes (4 at BN = 64).
    """
    BN = triton.next_power_of_2(N)
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    warps = max(1, BN // 256)
    tile = 16 * 32 * warps * 4 // dtype.itemsize  # elements of one [BT, BN] tile
    BT = max(1, min(32, tile // BN))
    options = dict(
        num_warps=warps,
        # The runs load ahead themselves; the other kernels' loads are a few per row.
        num_stages=1,
        # Fused multiply-adds, as in the numba kernels; said explicitly because
        # Triton 3.9 warns when the default is left implicit.
        enable_fp_fusion=True,
    )
    run = dict(N=N, BN=BN, BT=BT, ACC=acc)
    wide = dict(N=N, BN=BN, ACC=tl.float64)
    wide_options = dict(options, num_warps=max(1, BN * BN // (32 * 32)))
    return run, options, wide, wide_options


def forward_plan(
    dtype: torch.dtype, N: int, time_invariant: bool, variant: str, several_chunks: bool
) -> Plan:
    """The launches of :func:`allpole` for inputs of this kind (``several_chunks``: C > 1)."""
    meta, options, wide, wide_options = _constants(dtype, N)
    flags = dict(TIME_INVARIANT=time_invariant, STORE_FINAL_STATE=False, **meta)
    dtypes = dict.fromkeys(("x", "A", "zi", "y"), dtype)
    if variant == "sequential":
        run = Launch(allpole_fwd_kernel, "B", ("x", "A", "zi", "y", None, "T", "L"), flags, options)
        return Plan((run,), dtypes, {})
    dtypes.update(dict.fromkeys(("u", "M", "h0", "ht"), torch.float64))
    scratch = {"u": "BCN", "M": "BCNN", "h0": "BCN"}
    launches = [
        Launch(
            allpole_fwd_kernel_chunk_state, "BC", ("x", "A", "u", "M", "T", "L"),
            dict(wide, TIME_INVARIANT=time_invariant), wide_options,
        ),
        Launch(allpole_fwd_kernel_scan, "B", ("zi", "u", "M", "h0", "T", "L"), wide, wide_options),
    ]
    if _refines(dtype, several_chunks):
        scratch["ht"] = "BCN"
        launches += [
            Launch(
                allpole_fwd_kernel, "BC", ("x", "A", "h0", "y", "ht", "T", "L"),
                dict(flags, STORE_FINAL_STATE=True), options,
            ),
            Launch(allpole_fwd_kernel_refine, "B", ("M", "h0", "ht", "T", "L"), wide, wide_options),
        ]
    launches.append(
        Launch(allpole_fwd_kernel, "BC", ("x", "A", "h0", "y", None, "T", "L"), flags, options)
    )
    return Plan(tuple(launches), dtypes, scratch)


def backward_plan(
    dtype: torch.dtype,
    N: int,
    time_invariant: bool,
    need_A: bool,
    variant: str,
    several_chunks: bool,
) -> Plan:
    """The launches of :func:`allpole_vjp` for inputs of this kind (``several_chunks``: C > 1)."""
    meta, options, wide, wide_options = _constants(dtype, N)
    flags = dict(
        TIME_INVARIANT=time_invariant, NEED_A=need_A, STORE_FINAL_STATE=False, **meta
    )
    dtypes = dict.fromkeys(("grad_y", "A", "y", "zi", "grad_x", "grad_A", "grad_zi"), dtype)
    outputs = ("grad_x", "grad_A", "grad_zi")
    if variant == "sequential":
        run = Launch(
            allpole_bwd_kernel, "B", ("grad_y", "A", "y", "zi", None, *outputs, None, "T", "L"),
            dict(flags, USE_INITIAL_STATE=False), options,
        )
        return Plan((run,), dtypes, {})
    dtypes.update(dict.fromkeys(("u", "M", "h0", "ht"), torch.float64))
    scratch = {"u": "BCN", "M": "BCNN", "h0": "BCN"}
    launches = [
        Launch(
            allpole_bwd_kernel_chunk_state, "BC", ("grad_y", "A", "u", "M", "T", "L"),
            dict(wide, TIME_INVARIANT=time_invariant), wide_options,
        ),
        Launch(allpole_bwd_kernel_scan, "B", ("u", "M", "h0", "T", "L"), wide, wide_options),
    ]
    if _refines(dtype, several_chunks):
        scratch["ht"] = "BCN"
        launches += [
            Launch(
                allpole_bwd_kernel, "BC",
                ("grad_y", "A", "y", "zi", "h0", *outputs, "ht", "T", "L"),
                dict(flags, NEED_A=False, STORE_FINAL_STATE=True, USE_INITIAL_STATE=True),
                options,
            ),
            Launch(allpole_bwd_kernel_refine, "B", ("M", "h0", "ht", "T", "L"), wide, wide_options),
        ]
    launches.append(
        Launch(
            allpole_bwd_kernel, "BC", ("grad_y", "A", "y", "zi", "h0", *outputs, None, "T", "L"),
            dict(flags, USE_INITIAL_STATE=True), options,
        )
    )
    return Plan(tuple(launches), dtypes, scratch)


def every_plan(orders):
    """``(name, plan)`` for every plan the launchers can build at these orders N.

    Every value of every parameter of :func:`forward_plan` and
    :func:`backward_plan`; orders a variant refuses are left out for it.
    """
    flags = (False, True)
    for variant, N in itertools.product(VARIANTS, orders):
        try:
            _check_order(N, variant)
        except ValueError:
            continue
        for dtype, time_invariant, several_chunks in itertools.product(
            _SUPPORTED_DTYPES, flags, flags
        ):
            if variant == "sequential" and several_chunks:
                continue
            kind = (
                f"{variant}{'-chunks' if several_chunks else ''}-{str(dtype)[6:]}"
                f"-{'ti' if time_invariant else 'tv'}-N{N}"
            )
            yield f"fwd-{kind}", forward_plan(dtype, N, time_invariant, variant, several_chunks)
            for need_A in flags:
                yield (
                    f"bwd-{kind}{'' if need_A else '-no_grad_A'}",
                    backward_plan(dtype, N, time_invariant, need_A, variant, several_chunks),
                )


def compile_launch(launch: Launch, dtypes: dict, capability: int):
    """Compile ``launch`` for an NVIDIA GPU of compute capability ``capability`` (80, 90, 120).

    Needs no GPU. Returns Triton's compiled kernel (``.asm["ptx"]``, ``.asm["cubin"]``).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = launch.source(dtypes)
    source = ASTSource(fn=launch.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=launch.options)


def _execute(plan: Plan, tensors: dict, B: int, C: int, N: int, T: int, L: int) -> None:
    first = next(iter(tensors.values()))
    sizes = {"B": B, "C": C, "N": N}
    for name, shape in plan.scratch.items():
        tensors[name] = first.new_empty([sizes[s] for s in shape], dtype=plan.dtypes[name])
    values = dict(tensors, T=T, L=L)
    interpreted = _interpreted()
    for launch in plan.launches:
        grid = (B,) if launch.grid == "B" else (B * C,)
        args = [None if name is None else values[name] for name in launch.args]
        constexprs = launch.constexprs
        if interpreted and "BT" in constexprs:
            # The interpreter runs every step of a block, masked or not, at a
            # Python call per operation; the tests' short rows and chunks take
            # small blocks (the same code; tests/test_triton_compile.py compiles
            # the real ones).
            BT = min(constexprs["BT"], _INTERPRETED_BLOCK, triton.next_power_of_2(L))
            constexprs = dict(constexprs, BT=BT)
        launch.kernel[grid](*args, **constexprs, **launch.options)


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
    C = triton.cdiv(T, L)
    _check_scratch(variant, B, C, N, x, A)
    plan = forward_plan(x.dtype, N, A.shape[1] == 1, variant, C > 1)
    _execute(plan, dict(x=x, A=A, zi=zi, y=y), B, C, N, T, L)
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
    C = triton.cdiv(T, L)
    _check_scratch(variant, B, C, N, grad_y, A)
    if not need_A:
        grad_A = A.new_empty((0, 0, 0))
    elif time_invariant:
        # One partial sum per chunk, added up afterwards: no atomics. The
        # supported dtypes accumulate in their own precision.
        grad_A = grad_y.new_empty(B, C, N)
    else:
        grad_A = torch.empty_like(A, memory_format=torch.contiguous_format)
    plan = backward_plan(grad_y.dtype, N, time_invariant, need_A, variant, C > 1)
    tensors = dict(grad_y=grad_y, A=A, y=y, zi=zi, grad_x=grad_x, grad_A=grad_A, grad_zi=grad_zi)
    _execute(plan, tensors, B, C, N, T, L)
    if need_A and time_invariant:
        grad_A = grad_A.sum(1, keepdim=True)
    return grad_x, grad_A, grad_zi
