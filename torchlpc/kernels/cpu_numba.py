"""The CPU backend: numba kernels behind the ops' CPU implementations.

Which loop runs when (N the order, B the batch, T the length):

- ``cpu_forward``: the time-varying forward of one sequence, a loop per order
  family (cpu_plan.FAMILIES): N = 2 (two sequences at once when the batch has
  pairs), 3 <= N < 8 (two lags in registers), N >= 8 (eight lags in registers, the
  rest a vector dot product).
- ``cpu_backward``: the time-varying backward, gather form below N = 8, scatter
  form from 8 on.
- ``cpu_order1``: N = 1 and ``linear_recurrence``, four sequences at once.
- ``cpu_invariant``: time-invariant A: the backward as the forward run backwards in
  time, and one long sequence split over the threads (cpu_plan.split_over_time).
- ``cpu_threads``: slices of the batch, and tasks, over ``torch.get_num_threads()``.
- ``cpu_jit`` (how everything is compiled), ``_simd`` (vector primitives),
  ``_buffers`` (output memory kept between calls), ``cpu_compile`` (first-call
  compilation), ``cpu_plan`` (the choices above, in plain Python).

This module holds the drivers over the batch and the entry points,
``FWD_KERNELS[family]`` and ``VJP_KERNELS[family, invariant]``, one per order family
so that a call compiles only its own family's loops, and the Python wrappers that
the ops call (``allpole``, ``allpole_vjp``, ``linear_recurrence``,
``linear_recurrence_vjp``). Every kernel works on C-contiguous NumPy views of the
op's tensors and writes into preallocated outputs; they are compiled on first use,
never at import.
"""

from __future__ import annotations

import numpy as np
import torch
from numba.extending import overload

from ._buffers import output_like
from .cpu_backward import (
    _bwd_gather_first_steps,
    _bwd_gather_last_steps,
    _bwd_order2_pair,
    _bwd_varying,
)
from .cpu_forward import _fwd_family, _fwd_head, _fwd_order2_pair
from .cpu_invariant import _bwd_invariant, _invariant_fwd_over_time, _invariant_vjp_over_time
from .cpu_jit import _kernel, _literal
from .cpu_order1 import (
    _ROWS,
    _bwd_order1_rows,
    _fwd_order1_rows,
    _order1_groups,
    linear_recurrence_kernel,
    linear_recurrence_vjp_kernel,
)
from .cpu_plan import FAMILIES, family_of, split_over_time
from .cpu_threads import run_over_batch


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
    # Time-varying A gets a (B, T, N) grad_A, time-invariant A a (B, N) sum in
    # double precision; without need_A the kernel gets an empty placeholder, typed
    # like the real thing so that one compiled kernel serves both cases.
    wide = torch.complex128 if A.dtype.is_complex else torch.float64
    if time_invariant:
        grad_A = A.new_empty((0, 0, 0))
        if need_A:
            grad_a_wide = torch.zeros(B, N, dtype=wide)
            grad_A_out = grad_a_wide.numpy()
        else:
            grad_A_out = np.empty((B, 0), dtype=_NUMPY_DTYPES[wide])
    elif need_A:
        grad_A = output_like(A)
        grad_A_out = grad_A.numpy()
    else:
        grad_A = A.new_empty((0, 0, 0))
        grad_A_out = np.empty((B, 0, 0), dtype=_NUMPY_DTYPES[A.dtype])
    T = grad_y.shape[1]
    if grad_y.numel() == 0:
        # No time step reaches the state.
        grad_zi.zero_()
    elif time_invariant and split_over_time(B, T, N):
        arrays = _array(grad_y), _array(A), _array(y), _array(zi), grad_x.numpy(), grad_zi.numpy()
        grad_y_, A_, y_, zi_, grad_x_, grad_zi_ = arrays
        for b in range(B):
            # grad_A_out is (B, N), or (B, 0) without need_A: a row either way.
            _invariant_vjp_over_time(
                grad_y_[b], A_[b, 0], y_[b], zi_[b], grad_x_[b], grad_A_out[b], grad_zi_[b],
                need_A,
            )
    else:
        run_over_batch(
            VJP_KERNELS[family_of(N), time_invariant], grad_y.numel() * N,
            _array(grad_y), _array(A), _array(y), _array(zi), grad_x.numpy(),
            grad_A_out, grad_zi.numpy(), need_A,
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
