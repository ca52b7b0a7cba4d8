"""The chunked (parallel-in-time) algorithm in plain PyTorch, for any device.

Devices without a dedicated kernel (MPS, XPU, ...) would otherwise run the
reference loop: one Python iteration, and several tiny kernel launches, per
time step. Here time is cut into ``C = ceil(T / L)`` chunks of length ``L`` and
every Python iteration advances all chunks of all rows at once, so a call costs
``O(L + C)`` = ``O(sqrt(T))`` iterations instead of ``T``:

1. **Chunk state** (``L`` iterations). Each chunk runs from a zero initial state,
   driven by its input, and at the same time from each of the N unit initial
   states with zero input. The chunk's end state is then ``u + M h`` for any
   initial state ``h``: ``u`` the zero-state end state, ``M`` the chunk's
   ``N x N`` state-transition matrix.
2. **Scan** (``C - 1`` iterations). ``h[c + 1] = u[c] + M[c] h[c]`` from
   ``h[0] = zi`` gives the true initial state of every chunk.
3. **Refinement** (``L + C - 1`` iterations), only when the states are no wider
   than the data (see Numerics). Every chunk is run from the state the scan gave
   it; where it ends, computed by the recurrence itself, minus the state the
   scan gave the next chunk is the scan's defect ``d[c]``, and the same scan run
   on the defects, ``e[c + 1] = d[c] + M[c] e[c]`` from ``e[0] = 0``, gives the
   correction ``h += e``; repeated until that correction is below the states'
   rounding (at most ``_MAX_REFINEMENTS`` times).
4. **Correction** (``L`` iterations). Every chunk is run again from its true
   initial state, which writes the output.

The backward pass runs the same phases on the adjoint recursion, in
scatter form and backwards in time: when ``grad_x[t]`` is final, its pushes
``-conj(A[t, i-1]) grad_x[t]`` go to the N earlier times, and the state carried
across a chunk boundary is the sum pushed so far onto the N times before it. For
chunk 0 that sum is ``grad_zi``. ``A`` is only ever read as strided views of
whole rows (``A[:, tau::L]``, every chunk's row at offset ``tau``), never
copied, shifted or padded.

Numerics: the scan moves states through the chunks' transition matrices. For a
stable filter of low order that is as accurate as the sequential loop; but the
state of an order-N all-pole filter is its last N outputs, a badly conditioned
basis when N is large and the poles cluster or sit near the unit circle: the
transition matrix over a few multiples of N steps can exceed the states it
carries by many orders of magnitude, and ``u + M h`` then cancels. Measured in
float32 on nine smoothly time-varying filters (N = 8, 16, 32; poles of modulus
up to 0.9, 0.99, 0.999; T = 2048; forward and backward): with float32 states
and 16-sample chunks the worst error grew up to a hundredfold over the
sequential loop's, and three of the nine (coefficients of 40 to 160) overflowed
to NaN. So chunk states, transition matrices and the scan are kept in double
precision (:func:`state_dtype`); with them all nine were as accurate as the
float32 sequential loop (and so was the forward pass at every chunk length
tried, 4 to 256).

Where the states are no wider than the data (float64 and complex128 inputs; every
dtype on MPS, which has no float64) the same cancellation shows at the data's
own precision, and is worse than the loop's rounding because it is systematic:
the rounding error of a computed ``M[c]`` is applied to every state carried
through it, and a time-invariant filter applies the same ``M`` chunk after
chunk, which perturbs the eigenvalues of the chunk map (those of a pole cluster
most). On eight poles clustered at modulus 0.998 to 0.999 (T = 4096, float64) the
scan alone was up to 6e-10 off where scipy's lfilter was 4e-12, a hundredfold,
at every chunk length from 2 to 128 (length 1 is exact: ``M`` is then the
companion matrix itself). The refinement phase removes it: the defects are
computed by running the chunks, as the loop does, and the error of the scan
that carries them is relative to the defects, which are already small. With
it, over twenty such filters (time-invariant and varying, N = 8, T = 2048,
chunks of 8, 64 and the default) the worst of y and the three gradients was
0.2 to 3 times the float64 loop's (4.5 times on one more, where the loop's own
grad_A was unusually lucky). One pass is not always enough: on a time-varying
Chebyshev sweep (order 6, cutoff 0.1 to 0.05) it left grad_x at 62 times the
loop's error, and a narrow peak (iirpeak) grad_zi at 4.5 times; repeated until
its correction settles (two or three passes there), both come to 0.8-1.2 times. With double-precision states and single-precision
data the scan's error is far below the data's precision and the phase is
skipped. MPS also gets a default chunk length of at least ``8 N``, past the
transient growth of the transition matrices, which made all nine float32
filters above as accurate as the sequential loop. The chunk passes themselves,
and so the outputs, are in the input dtype (float32, float64, complex64,
complex128).

Memory: ``O(B T)`` for the outputs plus ``O(B C N (N + 1))`` scratch for the
transition matrices when there is more than one chunk (a single chunk starts
from the true state and needs none, so ``T <= N`` never allocates an ``N x N``
matrix); nothing of size ``B T N`` besides ``grad_A`` itself. No copy of A is
made; double-precision passes convert one row per chunk at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["allpole", "allpole_vjp", "default_chunk_size", "state_dtype"]

# Rows kept in a sliding window buffer before it is compacted: a larger value
# means fewer compactions (one copy of N rows each) and a larger buffer.
_WINDOW_SLACK = 32


def default_chunk_size(T: int, N: int = 1, double_states: bool = True) -> int:
    """The chunk length ``L`` used when none is given: about ``sqrt(T) / 2``.

    Each chunk phase costs ``L`` iterations of about five tensor ops, the scan
    ``T / L`` iterations of two small ones; this balances the two (measured on
    a 2-core CPU for T from 1,024 to 65,536; not measured on MPS or XPU).
    Without double-precision states, L is also at least ``8 N``: transition
    matrices over a few multiples of N steps can be far larger than the states
    they carry, and the chunks' own decay brings them back down. L is at least N
    too, so that the ``T / L`` transition matrices of ``N x N`` take no more memory
    than a time-varying A itself (and when ``T <= L`` the single chunk needs none).
    """
    L = max(round(math.sqrt(T) / 2), N)
    if not double_states:
        L = max(L, 8 * N)
    return max(1, min(T, L))


def _active_chunks(T: int, L: int, tau: int) -> int:
    """How many chunks reach offset ``tau``: all but a partial last chunk that is too short."""
    return (T - tau + L - 1) // L


def _row(A: Tensor, tau: int, L: int) -> Tensor:
    """Every chunk's coefficient row at offset ``tau``: ``(B, n, N)``; ``(B, 1, N)`` if constant."""
    return A[:, :1] if A.shape[1] == 1 else A[:, tau::L]


def state_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of chunk states and transition matrices: double precision where available."""
    if device.type == "mps":
        return dtype
    return torch.complex128 if dtype.is_complex else torch.float64


def _unit_states(B: int, C: int, N: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(B, C, N, N + 1)``: column 0 the zero state, column ``1 + j`` the unit state ``e_j``."""
    states = torch.zeros(B, C, N, N + 1, dtype=dtype, device=device)
    states[..., 1:] = torch.eye(N, dtype=dtype, device=device)
    return states


def _forward_sweep(x: Tensor, A: Tensor, state: Tensor, L: int, y: Tensor | None = None) -> Tensor:
    """Run every chunk forwards from ``state``; return the end states.

    ``state`` is ``(B, C, N, K)``: K initial states per chunk, each most recent
    output first (``state[..., k, :]`` is ``y[t0 - 1 - k]``); ``x`` drives column 0,
    the other columns run with zero input. Column 0 of the outputs is written to
    ``y`` when given.
    """
    B, C, N, K = state.shape
    T = x.shape[1]
    # Outputs are written at decreasing positions, so that the last N outputs,
    # most recent first, are always the contiguous rows window[q : q + N].
    slack = max(N, _WINDOW_SLACK)
    window = state.new_zeros(B, C, slack + N, K)
    window[:, :, slack:] = state
    q = slack
    for tau in range(L):
        if q == 0:
            window[:, :, slack:] = window[:, :, :N]
            q = slack
        n = _active_chunks(T, L, tau)
        past = window[:, :n, q : q + N]
        # [B, n, K]
        new = -(_row(A, tau, L).to(state.dtype).unsqueeze(-2) @ past).squeeze(-2)
        new[..., 0] += x[:, tau::L]
        q -= 1
        window[:, :n, q] = new
        if y is not None:
            y[:, tau::L] = new[..., 0]
    return window[:, :, q : q + N]


def _adjoint_sweep(
    grad_y: Tensor, A: Tensor, pending: Tensor, L: int, grad_x: Tensor | None = None
) -> Tensor:
    """Run every chunk of the adjoint recursion backwards; return what each pushes out.

    ``pending`` is ``(B, C, N, K)``: ``pending[..., k, :]`` is the sum already pushed
    onto time ``t1 - 1 - k`` of a chunk ``[t0, t1)`` from later times; ``grad_y``
    drives column 0. Returns the same for times ``t0 - 1 - k``. Column 0 of the
    result ``grad_x`` is written to ``grad_x`` when given.
    """
    B, C, N, K = pending.shape
    T = grad_y.shape[1]
    # Row q holds the sum pushed onto the time being finished; later rows the
    # earlier times, so pushes land on the contiguous rows window[q + 1 : q + 1 + N].
    slack = max(N, _WINDOW_SLACK)
    window = pending.new_zeros(B, C, slack + N, K)
    window[:, :, :N] = pending
    q = 0
    for tau in range(L - 1, -1, -1):
        if q == slack:
            window[:, :, :N] = window[:, :, slack:]
            window[:, :, N:] = 0
            q = 0
        n = _active_chunks(T, L, tau)
        # [B, n, K]
        g = window[:, :n, q]
        g[..., 0] += grad_y[:, tau::L]
        if grad_x is not None:
            grad_x[:, tau::L] = g[..., 0]
        # [B, n, N, K]
        row = _row(A, tau, L).conj().to(pending.dtype)
        window[:, :n, q + 1 : q + 1 + N] -= row.unsqueeze(-1) * g.unsqueeze(-2)
        q += 1
    return window[:, :, q : q + N]


def _resolve_chunk_size(T: int, N: int, states: torch.dtype, chunk_size: int | None) -> int:
    if chunk_size is None:
        return default_chunk_size(T, N, states in (torch.float64, torch.complex128))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples, got {chunk_size}.")
    return min(chunk_size, T)


# The refinement is repeated until its correction no longer moves the states
# (one pass left a time-varying Chebyshev sweep 62x the float64 loop's error on
# grad_x, two or three brought it to 1.2x), and at most this many times.
_MAX_REFINEMENTS = 4


def _refined(states: Tensor, correction: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """The states with a refinement's correction added in the rows still active,
    and the rows that stay active: those whose correction was not yet below their
    states' rounding. Row by row, so that a row's result never depends on the
    others in its batch (a NaN elsewhere would keep them all refining)."""
    keep = active.view(-1, *([1] * (states.dim() - 1)))
    states = torch.where(keep, states + correction, states)
    rows = states.shape[0]
    size = correction.abs().reshape(rows, -1).amax(dim=1)
    scale = states.abs().reshape(rows, -1).amax(dim=1)
    return states, active & ~(size <= torch.finfo(states.dtype).eps * scale)


def _refines(data: torch.dtype, states: torch.dtype) -> bool:
    """Whether the scan is refined (phase 3 above): when the states are no wider than the data."""
    return states == data


def _scan_forward(u: Tensor, M: Tensor, first: Tensor) -> Tensor:
    """``(B, C, N)`` states: ``h[:, 0] = first``, ``h[:, c + 1] = u[:, c] + M[:, c] h[:, c]``."""
    states = [first]
    for c in range(M.shape[1] - 1):
        states.append(u[:, c] + (M[:, c] @ states[-1].unsqueeze(-1)).squeeze(-1))
    return torch.stack(states, dim=1)


def _scan_backward(u: Tensor, M: Tensor) -> Tensor:
    """``(B, C, N)`` pending sums: ``s[:, C-1] = 0``, ``s[:, c-1] = u[:, c] + M[:, c] s[:, c]``."""
    B, C, N = u.shape
    states = [u.new_zeros(B, N)]
    for c in range(C - 1, 0, -1):
        states.append(u[:, c] + (M[:, c] @ states[-1].unsqueeze(-1)).squeeze(-1))
    return torch.stack(states[::-1], dim=1)


def allpole(x: Tensor, A: Tensor, zi: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """``y[t] = x[t] - sum_i A[t, i-1] y[t-i]``, ``y[-1-k] = zi[k]``, by chunks.

    Args:
        x: signal, ``(B, T)``.
        A: coefficients, ``(B, T, N)``, or ``(B, 1, N)`` for a time-invariant filter.
        zi: initial state, ``(B, N)``, most recent first.
        chunk_size: chunk length L; default :func:`default_chunk_size`.

    Returns:
        y, ``(B, T)``, contiguous.
    """
    B, T = x.shape
    N = A.shape[-1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel() == 0:
        return y
    wide = state_dtype(x.dtype, x.device)
    L = _resolve_chunk_size(T, N, wide, chunk_size)
    C = math.ceil(T / L)
    with torch.no_grad():
        if C == 1:
            # One chunk (T <= L, so always when T <= N) starts from zi: no
            # transition matrix is needed, and none of N x N is allocated.
            h = zi.to(wide)[:, None]
        else:
            ends = _forward_sweep(x, A, _unit_states(B, C, N, wide, x.device), L)
            u, M = ends[..., 0], ends[..., 1:]
            h = _scan_forward(u, M, zi.to(wide))
            active = torch.ones(B, dtype=torch.bool, device=x.device)
            for _ in range(_MAX_REFINEMENTS if _refines(x.dtype, wide) else 0):
                # The chunks' own runs from h end where the scan should have put
                # the next chunk's state, up to the scan's error; that mismatch,
                # carried through the same scan, is the correction.
                reached = _forward_sweep(x, A, h.unsqueeze(-1), L)[:, :-1, :, 0]
                correction = _scan_forward(reached - h[:, 1:], M, torch.zeros_like(h[:, 0]))
                h, active = _refined(h, correction, active)
                if not bool(active.any()):
                    break
        _forward_sweep(x, A, h.unsqueeze(-1).to(x.dtype), L, y)
    return y


def _lagged_products(grad_x: Tensor, y: Tensor, zi: Tensor, time_invariant: bool) -> Tensor:
    """``out[t, i-1] = -grad_x[t] conj(y[t-i])``, summed over t if ``time_invariant``.

    A Python loop over the shorter of the two axes, time or lag, so that an order
    far above T (or T far above N) costs few iterations.
    """
    B, T = grad_x.shape
    N = zi.shape[-1]
    padded = torch.cat([zi.flip(-1), y], dim=-1)
    if T < N:
        # y[t-i] for i = 1..N are padded[t : t + N], most recent last.
        rows = [grad_x[:, t, None] * padded[:, t : t + N].flip(-1).conj() for t in range(T)]
        if time_invariant:
            return -sum(rows, grad_x.new_zeros(B, N)).unsqueeze(1)
        return -torch.stack(rows, dim=1)
    if time_invariant:
        # One lag at a time, so no (B, T, N) intermediate; vecdot conjugates its first argument.
        lags = [torch.linalg.vecdot(padded[:, N - i : N - i + T], grad_x) for i in range(1, N + 1)]
        return -torch.stack(lags, dim=-1).unsqueeze(1)
    grad_A = grad_x.new_empty(B, T, N)
    for i in range(1, N + 1):
        torch.mul(grad_x, padded[:, N - i : N - i + T].conj(), out=grad_A[:, :, i - 1])
    return grad_A.neg_()


def allpole_vjp(
    grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused backward pass of :func:`allpole`, by chunks.

    ``grad_x[t] = grad_y[t] - sum_i conj(A[t+i, i-1]) grad_x[t+i]``;
    ``grad_A[t, i-1] = -grad_x[t] conj(y[t-i])`` (summed over t, shape ``(B, 1, N)``,
    for a time-invariant A; empty when ``need_A`` is false);
    ``grad_zi[k] = -sum_t conj(A[t, t+k]) grad_x[t]``.

    Args:
        grad_y: gradient of the output, ``(B, T)``.
        A: coefficients, ``(B, T, N)`` or ``(B, 1, N)``.
        y: the forward output, ``(B, T)``.
        zi: the initial state, ``(B, N)``.
        need_A: whether to compute ``grad_A``.
        chunk_size: chunk length L; default :func:`default_chunk_size`.

    Returns:
        ``(grad_x, grad_A, grad_zi)``.
    """
    B, T = grad_y.shape
    N = A.shape[-1]
    time_invariant = A.shape[1] == 1
    grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format)
    if grad_y.numel() == 0:
        grad_zi = torch.zeros_like(zi, memory_format=torch.contiguous_format)
        if not need_A:
            grad_A = A.new_empty((0, 0, 0))
        elif time_invariant:
            grad_A = torch.zeros_like(A, memory_format=torch.contiguous_format)
        else:
            grad_A = torch.empty_like(A, memory_format=torch.contiguous_format)
        return grad_x, grad_A, grad_zi
    wide = state_dtype(grad_y.dtype, grad_y.device)
    L = _resolve_chunk_size(T, N, wide, chunk_size)
    C = math.ceil(T / L)
    with torch.no_grad():
        if C == 1:
            pending = torch.zeros_like(zi, dtype=wide)[:, None]
        else:
            ends = _adjoint_sweep(grad_y, A, _unit_states(B, C, N, wide, grad_y.device), L)
            u, M = ends[..., 0], ends[..., 1:]
            pending = _scan_backward(u, M)
            active = torch.ones(B, dtype=torch.bool, device=grad_y.device)
            for _ in range(_MAX_REFINEMENTS if _refines(grad_y.dtype, wide) else 0):
                # As in allpole: what each chunk's own run pushes onto the chunk
                # before it, against what the scan put there.
                pushed = _adjoint_sweep(grad_y, A, pending.unsqueeze(-1), L)[..., 0]
                mismatch = pushed[:, 1:] - pending[:, :-1]
                mismatch = torch.cat([torch.zeros_like(pushed[:, :1]), mismatch], dim=1)
                pending, active = _refined(pending, _scan_backward(mismatch, M), active)
                if not bool(active.any()):
                    break
        pending = pending.unsqueeze(-1).to(grad_y.dtype)
        grad_zi = _adjoint_sweep(grad_y, A, pending, L, grad_x)[:, 0, :, 0].contiguous()
        if need_A:
            grad_A = _lagged_products(grad_x, y, zi, time_invariant)
        else:
            grad_A = A.new_empty((0, 0, 0))
    return grad_x, grad_A, grad_zi
