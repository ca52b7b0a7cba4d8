"""The numba kernels, path by path, against the reference loop.

The CPU kernels take a different loop for each range of the filter order
(N = 1, N = 2, 3 <= N < 8 with two lags in registers, N >= 8 with eight lags in registers and
the rest as vector operations whose length is N - 8), treat the first and last
N steps apart from the rest, run a time-invariant backward pass as the forward
kernel backwards in time, and sum a time-invariant grad_A in blocks of
``cpu_jit._BLOCK`` steps. The cases below put every order range, every
remainder of the vector length (8 float32 or 4 float64 lanes, two vectors per
iteration of the dot product) and every boundary (T < N, T = N, T = N + 1,
T just past 2N, T across one and two blocks) through the numba backend, time varying and time invariant, and
compare y, zf and the gradients of x, A and zi with the reference loop run in
double precision. Batches of first-order sequences go four at a time, skewed in
time (``cpu_order1._fwd_order1_rows``): batches of 4 to 9 rows, lengths around
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
from torchlpc.kernels import cpu_forward, cpu_invariant, cpu_jit, cpu_order1, cpu_plan

BLOCK = cpu_jit._BLOCK
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
# the threads: segments at once, each from a zero state W steps before its start,
# W from a bound on the filter's response to a state. Forced here on short
# sequences (several segments, a partial last one, orders up to the largest that
# is split) with poles well inside the unit circle and segments as short as one
# warm-up, so that the split is taken.
SPLIT_CASES = [
    pytest.param(N, T, id=f"N{N}-T{T}")
    for N, T in [(1, 3000), (2, 3000), (2, 1537), (3, 2049), (8, 4000), (20, 3333), (32, 6000)]
]
SPLIT_REFLECTION = 0.1


@pytest.fixture
def split_over_time(monkeypatch):
    """Forces the split of short sequences; yields the segments run from a warm-up."""
    monkeypatch.setattr(cpu_plan, "SPLIT_MIN_STEPS", 1)
    monkeypatch.setattr(cpu_invariant, "_WARMUPS_PER_SEGMENT", 1)
    warmed_up = []
    run = cpu_invariant._fwd_warmed_up

    def counted(x, a, zi, y, lo, hi, W, reached):
        if lo > 0:
            warmed_up.append((lo, W))
        return run(x, a, zi, y, lo, hi, W, reached)

    monkeypatch.setattr(cpu_invariant, "_fwd_warmed_up", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    yield warmed_up
    torch.set_num_threads(threads)


@pytest.mark.parametrize("N, T", SPLIT_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_time_invariant_split_over_threads_matches_reference(split_over_time, N, T, dtype):
    assert cpu_plan.split_over_time(1, T, N)
    x, A, zi = filter_inputs(
        (1,), T, N, dtype=dtype, seed=N + T, varying=False, k_high=SPLIT_REFLECTION
    )
    check_against_reference(x, A, zi, dtype, N + T)
    # Forward and backward, two segments after the first each.
    assert len(split_over_time) == 4, split_over_time


def _denominator(design):
    """scipy's a = [1, *A] of a named design."""
    import numpy as np
    import scipy.signal

    return {
        "butter8-0.05": lambda: scipy.signal.butter(8, 0.05)[1],
        "cheby1-6-0.1": lambda: scipy.signal.cheby1(6, 1, 0.1)[1],
        "resonator-0.999": lambda: np.array([1.0, -2 * 0.999 * np.cos(0.01), 0.999**2]),
        "pole-0.99": lambda: np.array([1.0, -0.99]),
    }[design]()


@pytest.mark.parametrize("design", ["butter8-0.05", "cheby1-6-0.1", "resonator-0.999", "pole-0.99"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_warmup_outlasts_the_response_to_a_state(design, dtype):
    """After W steps the response to any of a few states is below 2^-2p of it,
    computed in float64 (whose rounding is far below 2^-48, p = 24) or, for
    float64's own bound of 2^-106, checked through the bound's margin in float64."""
    import numpy as np

    a = _denominator(design)[1:]
    W = cpu_invariant._warmup_steps(a, np.dtype(dtype))
    assert np.isfinite(W) and W >= len(a)
    steps = int(W) + len(a)
    rng = np.random.default_rng(0)
    for state in [np.ones(len(a)), rng.standard_normal(len(a)), np.eye(len(a))[-1]]:
        response = np.empty(steps)
        cpu_forward._fwd(np.zeros(steps), a, 0, state, response)
        tail = np.abs(response[int(W) :]).max()
        bits = 24 if dtype == "float32" else 53
        # float64 rounding stops the check near 1e-16 of the transient's peak.
        floor = 1e-15 * np.abs(response).max() if dtype == "float64" else 0.0
        assert tail <= max(2.0 ** (-2 * bits) * np.abs(state).max(), floor), (W, tail)


def test_warmup_from_the_start_uses_the_initial_state():
    """A warm-up longer than the steps before the segment starts from zi at t = 0."""
    import numpy as np

    a = np.array([-1.5, 0.7])
    x = np.random.default_rng(1).standard_normal(300)
    zi = np.array([0.3, -2.0])
    whole = np.empty(300)
    cpu_forward._fwd(x, a, 0, zi, whole)
    part = np.full(300, np.nan)
    reached = np.empty(2)
    cpu_invariant._fwd_warmed_up(x, a, zi, part, 100, 300, 1000, reached)
    np.testing.assert_allclose(reached, whole[99:97:-1], rtol=1e-13, atol=1e-13)
    # The same recursion, but the first steps after t = 100 take the head loop's order.
    np.testing.assert_allclose(part[100:], whole[100:], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("warmup", [2, 40])
def test_split_is_exact_whatever_the_warmup(monkeypatch, warmup):
    """Each segment is corrected by its response to the difference between the
    state the segment before ended in and the one its warm-up reached, so a
    warm-up far too short (a large difference, whose response outlives its
    segment and is carried into the next ones) still gives the recursion."""
    import numpy as np

    monkeypatch.setattr(cpu_invariant, "_warmup_steps", lambda a, dtype: float(warmup))
    monkeypatch.setattr(cpu_invariant, "_split_parts", lambda: 6)
    a = np.array([-1.99 * np.cos(0.05), 0.995**2])
    rng = np.random.default_rng(2)
    x, zi = rng.standard_normal(3000), rng.standard_normal(2)
    whole, split = np.empty(3000), np.empty(3000)
    cpu_forward._fwd(x, a, 0, zi, whole)
    cpu_invariant._invariant_fwd_over_time(x, a, zi, split)
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-10 * np.abs(whole).max())


def test_unstable_or_slow_filters_are_not_split():
    import numpy as np

    assert cpu_invariant._warmup_steps(np.array([-1.0]), np.float32) == float("inf")
    assert cpu_invariant._warmup_steps(np.array([-2.0, 1.0001]), np.float64) == float("inf")
    assert cpu_invariant._warmup_steps(np.array([0.0, 0.0]), np.float32) == 2


@pytest.mark.parametrize("T", [1537, 3000])
def test_time_invariant_split_without_coefficient_gradient(split_over_time, T):
    """Only x and zi need gradients: the split backward skips the sums of grad_A."""
    import torchlpc
    from torchlpc import reference

    dtype = torch.float64
    x, A, zi = filter_inputs(
        (1,), T, 2, dtype=dtype, seed=T, varying=False, k_high=SPLIT_REFLECTION
    )
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
SKEW = cpu_order1._SKEW
ROWS_CASES = [
    pytest.param(batch, T, id=f"B{batch}-T{T}")
    for batch, T in [(4, 4 * SKEW), (4, 4 * SKEW + 1), (5, 4 * SKEW + 2), (7, 333), (9, 1500)]
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
