"""The numba kernels, path by path, against the reference loop.

The CPU kernels take a different loop for each range of the filter order
(N = 1, N = 2, 3 <= N < 8 with two lags in registers, N >= 8 with eight lags in registers and
the rest as vector operations whose length is N - 8), treat the first and last
N steps apart from the rest, run a time-invariant backward pass as the forward
kernel backwards in time, and sum a time-invariant grad_A in blocks of
``cpu_numba._BLOCK`` steps. The cases below put every order range, every
remainder of the vector length (8 float32 or 4 float64 lanes, two vectors per
iteration of the dot product) and every boundary (T < N, T = N, T = N + 1,
T just past 2N, T across one and two blocks) through the numba backend, time varying and time invariant, and
compare y, zf and the gradients of x, A and zi with the reference loop run in
double precision. Batches of first-order sequences go four at a time, skewed in
time (``cpu_numba._fwd_order1_rows``): batches of 4 to 9 rows, lengths around
the shortest that takes that path, and a call large enough to be split over
threads.

Tolerances: ``TOLERANCES`` of conftest.py, as everywhere. Above order 8 the
reflection coefficients stay below ``HIGH_ORDER_REFLECTION`` in modulus:
with them up to 0.95, as at low orders, the filters of order 24 and more are so
ill-conditioned that the reference loop itself, in float32, is off by 1e-5 to
1e-3 (and overflows at order 64), and in float64 by 1e-12 to 1e-11, so a
comparison would measure the problem rather than the kernels. Poles near the
unit circle are tested at low orders in test_filter.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DTYPES, assert_close, filter_inputs, make_generator, randn
from test_filter import check_against_reference
from test_linear_recurrence import library as recurrence_library
from test_linear_recurrence import make_inputs as recurrence_inputs
from test_linear_recurrence import reference as recurrence_reference
from torchlpc.kernels import cpu_numba

BLOCK = cpu_numba._BLOCK
# A length that spans a few cache lines of every dtype, for the order-1 cases.
SCAN = 64
HIGH_ORDER_REFLECTION = 0.5

ORDERS = [1, 2, 3, 5, 7, 8, 9, 12, 16, 17, 20, 24, 33, 64]


def _lengths(N):
    lengths = {max(N - 1, 1), N, N + 1, 2 * N + 3, BLOCK + N + 5}
    if N <= 2:
        lengths |= {SCAN - 1 + N, SCAN + N, SCAN + N + 1, 2 * SCAN + N + 1}
    return sorted(lengths)


KERNEL_CASES = [
    pytest.param(N, T, id=f"N{N}-T{T}") for N in ORDERS for T in _lengths(N)
] + [pytest.param(N, 2 * BLOCK + 3 * N + 7, id=f"N{N}-two-blocks") for N in (2, 5, 9, 16)]

VARYING = [pytest.param(True, id="time-varying"), pytest.param(False, id="time-invariant")]


def _check(N, T, varying, dtype, seed, batch=(2,)):
    conditioning = {"k_high": HIGH_ORDER_REFLECTION} if N > 8 else {}
    x, A, zi = filter_inputs(batch, T, N, dtype=dtype, seed=seed, varying=varying, **conditioning)
    check_against_reference(x, A, zi, dtype, seed)


@pytest.fixture(autouse=True)
def numba_backend(monkeypatch):
    monkeypatch.setenv("TORCHLPC_BACKEND", "numba")


@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("N, T", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_real_kernels_match_reference(N, T, varying, dtype):
    _check(N, T, varying, dtype, seed=100 * N + T)


# Complex dtypes take the loops of torchlpc/kernels/_simd.py instead of vector code.
COMPLEX_CASES = [
    pytest.param(N, T, id=f"N{N}-T{T}")
    for N, T in [(1, 40), (1, 300), (2, 3), (2, 300), (5, 4), (5, 70), (9, 12), (16, BLOCK + 40)]
]


@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("N, T", COMPLEX_CASES)
@pytest.mark.parametrize(
    "dtype", [torch.complex64, torch.complex128], ids=["complex64", "complex128"]
)
def test_complex_kernels_match_reference(N, T, varying, dtype):
    _check(N, T, varying, dtype, seed=7 * N + T)


# linear_recurrence takes its pole to the order-1 kernels as it is (sign -1),
# not through allpole with A = -a; time-varying, every dtype.
RECURRENCE_LENGTHS = [2, 3, SCAN, SCAN + 1, SCAN + 2, 2 * SCAN + 2, BLOCK + 5]


@pytest.mark.parametrize("T", RECURRENCE_LENGTHS, ids=[f"T{T}" for T in RECURRENCE_LENGTHS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_recurrence_kernels_match_reference(T, dtype):
    _check_recurrence(2, T, dtype, seed=T)


def _check_recurrence(batch, T, dtype, seed):
    """linear_recurrence's y and gradients against the reference, time-varying."""
    a, x, zi = recurrence_inputs((batch,), T, True, dtype, seed=seed)
    grad_y = randn(batch, T, dtype=dtype, generator=make_generator(seed + 1))
    for name, got, expected in zip(
        ("y", "grad_a", "grad_x", "grad_zi"),
        recurrence_library(a, x, zi, grad_y),
        recurrence_reference(a, x, zi, grad_y),
        strict=True,
    ):
        assert_close(got, expected, dtype, name)


# A time-invariant sequence alone (batch below the thread count) is split over
# the threads: segments from a zero state, then each corrected by its response
# to its true starting state, run until it dies away. Forced here on short
# sequences: several segments, a partial last one, orders up to the largest that
# is split; with the decay estimate forced to zero, every correction outlives its
# segment and is carried into the next, which must not change the result.
SPLIT_CASES = [
    pytest.param(N, T, id=f"N{N}-T{T}")
    for N, T in [(1, 3000), (2, 3000), (2, 1537), (3, 2049), (8, 4000), (20, 3333), (32, 5000)]
]


@pytest.fixture(params=["estimated", "carried"])
def split_over_time(monkeypatch, request):
    """Forces the split (where the poles allow it, for "estimated"); yields the
    list of corrections run (one per segment after the first, and more for every
    one carried on)."""
    monkeypatch.setattr(cpu_numba, "_SPLIT_MIN_STEPS", 1)
    estimate = cpu_numba._decay_steps
    if request.param == "estimated":
        # Short segments: the real estimate with the quarter-segment rule relaxed.
        monkeypatch.setattr(cpu_numba, "_decay_steps", lambda a, dtype: estimate(a, dtype) / 1024)
    else:
        monkeypatch.setattr(cpu_numba, "_decay_steps", lambda a, dtype: 0.0)
    corrections = []
    correct = cpu_numba._add_zero_input_response

    def counted(*arguments):
        corrections.append(arguments[2].shape[0])
        return correct(*arguments)

    monkeypatch.setattr(cpu_numba, "_add_zero_input_response", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    yield request.param, corrections
    torch.set_num_threads(threads)


@pytest.mark.parametrize("N, T", SPLIT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_time_invariant_split_over_threads_matches_reference(split_over_time, N, T, dtype):
    assert cpu_numba._split_over_time(1, T, N)
    _check(N, T, False, dtype, seed=N + T, batch=(1,))
    estimate, corrections = split_over_time
    if estimate == "carried":
        # Forward and backward, two segments after the first each, and what they carry on.
        assert len(corrections) >= 6


@pytest.mark.parametrize("T", [1537, 3000])
def test_time_invariant_split_without_coefficient_gradient(split_over_time, T):
    """Only x and zi need gradients: the split backward skips the sums of grad_A."""
    import torchlpc
    from torchlpc import reference

    dtype = torch.float64
    x, A, zi = filter_inputs((1,), T, 2, dtype=dtype, seed=T, varying=False)
    grad_y = randn(1, T, dtype=dtype, generator=make_generator(T + 1))
    expected = reference.allpole_vjp_reference(grad_y, A, reference.allpole_reference(x, A, zi), zi)
    x_, zi_ = x.clone().requires_grad_(), zi.clone().requires_grad_()
    y = torchlpc.sample_wise_lpc(x_, A, zi_)
    grad_x, grad_zi = torch.autograd.grad(y, (x_, zi_), grad_y)
    assert_close(grad_x, expected[0], dtype, "grad_x")
    assert_close(grad_zi, expected[2], dtype, "grad_zi")


# Time-varying order 1 (linear_recurrence, and sample_wise_lpc with N = 1) takes
# rows four at a time once T > 4 _SKEW, row r r _SKEW steps behind row 0, with
# ramps at both ends; the rows left over take the one-row recursion.
SKEW = cpu_numba._SKEW
ROWS_CASES = [
    pytest.param(batch, T, id=f"B{batch}-T{T}")
    for batch, T in [(4, 4 * SKEW), (4, 4 * SKEW + 1), (5, 4 * SKEW + 2), (7, 333), (9, 8000)]
]


@pytest.mark.parametrize("batch, T", ROWS_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_order1_rows_together_match_reference(batch, T, dtype):
    _check_recurrence(batch, T, dtype, seed=batch * T)
    x, A, zi = filter_inputs((batch,), T, 1, dtype=dtype, seed=batch + T)
    check_against_reference(x, A, zi, dtype, seed=T)


@pytest.mark.parametrize("op", ["linear_recurrence", "sample_wise_lpc"])
def test_order1_rows_without_coefficient_gradient(op):
    """Only x and zi need gradients: the kernels skip grad_a, and the rest holds."""
    import torchlpc

    batch, T, dtype = 6, 1000, torch.float64
    a, x, zi = recurrence_inputs((batch,), T, True, dtype, seed=3)
    grad_y = randn(batch, T, dtype=dtype, generator=make_generator(4))
    expected = recurrence_reference(a, x, zi, grad_y)
    x_, zi_ = x.clone().requires_grad_(), zi.clone().requires_grad_()
    if op == "linear_recurrence":
        y = torchlpc.linear_recurrence(a, x_, zi_)
    else:
        y = torchlpc.sample_wise_lpc(x_, -a[..., None], zi_[..., None])
    grad_x, grad_zi = torch.autograd.grad(y, (x_, zi_), grad_y)
    assert_close(y.detach(), expected[0], dtype, "y")
    assert_close(grad_x, expected[2], dtype, "grad_x")
    assert_close(grad_zi, expected[3], dtype, "grad_zi")
