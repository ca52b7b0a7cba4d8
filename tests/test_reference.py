"""The reference loops (torchlpc.reference) against independent ground truth.

Everything else is tested against these loops, so here they meet sources that
share no code with the library: a scalar loop over Python numbers, autograd,
the linearity of the filter, finite differences, and ``scipy.signal.lfilter``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from conftest import (
    TOLERANCES,
    filter_inputs,
    make_generator,
    poles,
    randn,
    relative_error,
    step_up,
)
from torchlpc import reflection_to_lpc, sample_wise_lpc
from torchlpc.reference import (
    allpole_reference,
    allpole_vjp_reference,
    linear_recurrence_reference,
)

REAL_AND_COMPLEX = [
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.complex128, id="complex128"),
]

VARYING = [
    pytest.param(True, id="time-varying"),
    pytest.param(False, id="time-invariant"),
]

SMALL = [
    pytest.param(2, 7, 3, id="B2-T7-N3"),
    pytest.param(1, 1, 1, id="T1-N1"),
    pytest.param(3, 2, 4, id="T<N"),
    pytest.param(2, 9, 1, id="N1"),
]


def scalar_allpole(x, A, zi):
    """The defining recurrence, one Python number at a time."""
    x, A, zi = x.tolist(), A.tolist(), zi.tolist()
    out = []
    for b in range(len(x)):
        N = len(zi[b])
        y = []
        for t in range(len(x[b])):
            row = A[b][t if len(A[b]) > 1 else 0]
            value = x[b][t]
            for i in range(1, N + 1):
                past = y[t - i] if t - i >= 0 else zi[b][i - t - 1]
                value -= row[i - 1] * past
            y.append(value)
        out.append(y)
    return out


def final_state(y, zi):
    """``zf[k] = y[T-1-k]``, reaching back into ``zi`` when ``T < N``."""
    N = zi.shape[-1]
    return torch.cat([zi.flip(-1), y], dim=-1)[..., -N:].flip(-1)


@pytest.mark.parametrize("B, T, N", SMALL)
@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_allpole_matches_scalar_loop(B, T, N, varying, dtype):
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=1, varying=varying)
    expected = torch.tensor(scalar_allpole(x, A, zi), dtype=dtype).reshape(B, T)
    y = allpole_reference(x, A, zi)
    assert y.shape == (B, T) and y.dtype == dtype
    assert relative_error(y, expected) <= 1e-15


def test_allpole_worked_example():
    # y[t] = x[t] + 0.5 y[t-1] - 0.25 y[t-2], from y[-1] = 1, y[-2] = 2.
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    A = torch.tensor([[[-0.5, 0.25]]], dtype=torch.float64)
    zi = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y0 = 1 + 0.5 * 1 - 0.25 * 2
    y1 = 0 + 0.5 * y0 - 0.25 * 1
    y2 = 0 + 0.5 * y1 - 0.25 * y0
    assert allpole_reference(x, A, zi).tolist() == [[y0, y1, y2]]


def test_empty_time_axis():
    x = torch.zeros(2, 0, dtype=torch.float64)
    A = torch.zeros(2, 0, 3, dtype=torch.float64)
    zi = torch.ones(2, 3, dtype=torch.float64)
    assert allpole_reference(x, A, zi).shape == (2, 0)
    grad_x, grad_A, grad_zi = allpole_vjp_reference(x, A, x, zi)
    assert grad_x.shape == (2, 0) and grad_A.shape == (2, 0, 3)
    assert torch.equal(grad_zi, torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("T", [pytest.param(1, id="T1"), pytest.param(8, id="T8")])
@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_linear_recurrence_matches_scalar_loop(T, varying, dtype):
    generator = make_generator(2)
    a = 0.9 * randn(3, T if varying else 1, dtype=dtype, generator=generator)
    x = randn(3, T, dtype=dtype, generator=generator)
    zi = randn(3, dtype=dtype, generator=generator)
    expected = []
    for b in range(3):
        previous, row = zi[b].item(), []
        for t in range(T):
            previous = a[b, t if varying else 0].item() * previous + x[b, t].item()
            row.append(previous)
        expected.append(row)
    y = linear_recurrence_reference(a, x, zi)
    assert relative_error(y, torch.tensor(expected, dtype=dtype)) <= 1e-15


# ----------------------------------------------------------------------------
# The hand-written adjoint.


@pytest.mark.parametrize(
    "B, T, N",
    SMALL + [pytest.param(2, 40, 6, id="B2-T40-N6"), pytest.param(1, 5, 16, id="N16-T5")],
)
@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_vjp_matches_autograd(B, T, N, varying, dtype):
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=3, varying=varying)
    grad_y = randn(B, T, dtype=dtype, generator=make_generator(4))
    inputs = [t.clone().requires_grad_() for t in (x, A, zi)]
    y = allpole_reference(*inputs)
    expected = torch.autograd.grad(y, inputs, grad_y)

    got = allpole_vjp_reference(grad_y, A, y.detach(), zi)
    for name, g, e in zip(("grad_x", "grad_A", "grad_zi"), got, expected, strict=True):
        assert g.shape == e.shape, name
        assert relative_error(g, e) <= TOLERANCES[dtype], name


@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_vjp_is_the_adjoint_of_the_linear_map(varying, dtype):
    """For fixed A, (x, zi) -> y is linear: <y, g> = <x, grad_x> + <zi, grad_zi>."""
    B, T, N = 3, 30, 4
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=5, varying=varying)
    g = randn(B, T, dtype=dtype, generator=make_generator(6))
    y = allpole_reference(x, A, zi)
    grad_x, _, grad_zi = allpole_vjp_reference(g, A, y, zi)

    def inner(u, v):
        return (u.conj() * v).sum()

    left = inner(g, y)
    right = inner(grad_x, x) + inner(grad_zi, zi)
    assert abs(left - right) <= 1e-12 * (abs(left) + abs(inner(grad_x, x)))


@pytest.mark.parametrize("varying", VARYING)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_grad_A_matches_finite_differences(varying, dtype):
    """Re <dA, grad_A> is the derivative of Re <g, y> along dA (central differences)."""
    B, T, N = 2, 25, 3
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=7, varying=varying)
    generator = make_generator(8)
    g = randn(B, T, dtype=dtype, generator=generator)
    dA = randn(*A.shape, dtype=dtype, generator=generator)
    y = allpole_reference(x, A, zi)
    _, grad_A, _ = allpole_vjp_reference(g, A, y, zi)

    def loss(coefficients):
        return (g.conj() * allpole_reference(x, coefficients, zi)).sum().real

    step = 1e-6
    numerical = (loss(A + step * dA) - loss(A - step * dA)) / (2 * step)
    analytical = (dA.conj() * grad_A).sum().real
    assert abs(numerical - analytical) <= 1e-7 * max(1.0, abs(analytical))


# ----------------------------------------------------------------------------
# Time-invariant filters against scipy.signal.lfilter.


def lfilter_rows(x, A, zi):
    """scipy's lfilter, one row at a time; returns y and lfilter's final state."""
    ys, states = [], []
    for row_x, row_a, row_zi in zip(x.numpy(), A[:, 0].numpy(), zi.numpy(), strict=True):
        a = np.concatenate([[1.0], row_a])
        state = scipy.signal.lfiltic([1.0], a, y=row_zi)
        y, state = scipy.signal.lfilter([1.0], a, row_x, zi=state)
        ys.append(y)
        states.append(state)
    return torch.from_numpy(np.stack(ys)), np.stack(states)


@pytest.mark.parametrize(
    "B, T, N, radius",
    [
        pytest.param(3, 50, 4, 0.9, id="N4"),
        pytest.param(2, 7, 1, 0.9, id="N1"),
        pytest.param(2, 3, 6, 0.9, id="T<N"),
        pytest.param(2, 500, 8, 0.999, id="near-unit-circle"),
    ],
)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_time_invariant_matches_lfilter(B, T, N, radius, dtype):
    x, A, zi = filter_inputs(
        (B,), T, N, dtype=dtype, seed=9, varying=False, radius=radius, k_low=0.5, k_high=0.999
    )
    expected, lfilter_state = lfilter_rows(x, A, zi)
    y = allpole_reference(x, A, zi)
    assert relative_error(y, expected) <= TOLERANCES[dtype]

    # Our final state, read as past outputs, is lfilter's final state.
    zf = final_state(y, zi)
    for row_zf, row_a, state in zip(zf.numpy(), A[:, 0].numpy(), lfilter_state, strict=True):
        converted = scipy.signal.lfiltic([1.0], np.concatenate([[1.0], row_a]), y=row_zf)
        scale = np.abs(state).max()
        assert np.abs(converted - state).max() <= TOLERANCES[dtype] * scale


@pytest.mark.parametrize("split", [0, 1, 2, 17, 40])
@pytest.mark.parametrize("varying", VARYING)
def test_final_state_continues_the_filter(split, varying):
    """Filtering in two pieces, the second started from the first's final state."""
    x, A, zi = filter_inputs((2,), 40, 5, dtype=torch.float64, seed=10, varying=varying)
    whole = allpole_reference(x, A, zi)
    first = allpole_reference(x[:, :split], A[:, :split] if varying else A, zi)
    rest = allpole_reference(x[:, split:], A[:, split:] if varying else A, final_state(first, zi))
    assert relative_error(torch.cat([first, rest], dim=1), whole) <= 1e-15


# ----------------------------------------------------------------------------
# The test helpers themselves.


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param(dict(radius=0.5), id="radius-0.5"),
        pytest.param(dict(radius=0.999, k_low=0.9, k_high=0.999), id="near-unit-circle"),
    ],
)
@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_stable_coefficients_keep_poles_inside_radius(options, dtype):
    _, A, _ = filter_inputs((3,), 200, 6, dtype=dtype, seed=11, **options)
    radius = options.get("radius", 0.9)
    moduli = np.array([np.abs(p).max() for p in poles(A)])
    assert moduli.max() < radius
    if "k_low" in options:
        smallest = np.array([np.abs(p).min() for p in poles(A)])
        assert smallest.min() > 0.8 * radius


def test_poisoning_is_active():
    """Guards the guard in conftest.py: without it, partial writes go unnoticed."""
    assert torch.empty(3).isnan().all()
    assert torch.empty_like(torch.zeros(2, dtype=torch.complex64)).isnan().all()
    assert torch.zeros(1, dtype=torch.float64).new_empty(4).isnan().all()
    assert torch.empty(3, dtype=torch.int64).dtype == torch.int64


@pytest.mark.parametrize("dtype", REAL_AND_COMPLEX)
def test_step_up_follows_the_library_sign_convention(dtype):
    """conftest.step_up and torchlpc.reflection_to_lpc agree: A(z) = 1 + sum_i A[i-1] z^-i."""
    k = 0.9 * randn(4, 6, dtype=dtype, generator=make_generator(12)).tanh()
    assert relative_error(step_up(k), reflection_to_lpc(k)) <= 1e-15
    # Order one: the single pole of 1 + k z^-1 is -k.
    assert relative_error(torch.from_numpy(np.stack(poles(step_up(k[:, :1])))), -k[:, :1]) <= 1e-15


def _write_nothing(*args, **options):
    """A stand-in for the numba batch runner that leaves every output as it was allocated."""


@pytest.mark.parametrize("varying", VARYING)
def test_poisoning_reaches_the_numba_dispatch(monkeypatch, varying):
    """The numba path allocates y, grad_x and grad_A through kernels/_buffers.py; unwritten, they are NaN."""
    from torchlpc.kernels import cpu_numba

    monkeypatch.setenv("TORCHLPC_BACKEND", "numba")
    monkeypatch.setattr(cpu_numba, "run_over_batch", _write_nothing)
    inputs = filter_inputs((2,), 10, 3, dtype=torch.float64, seed=13, varying=varying)
    x, A, zi = (t.requires_grad_() for t in inputs)
    y = sample_wise_lpc(x, A, zi)
    assert y.isnan().all()
    grad_x, grad_A, grad_zi = torch.autograd.grad(y, (x, A, zi), torch.ones_like(y))
    assert grad_x.isnan().all() and grad_zi.isnan().all()
    # The time-invariant grad_A is a sum over time, accumulated into zeros by design.
    assert grad_A.isnan().all() if varying else torch.equal(grad_A, torch.zeros_like(A))
