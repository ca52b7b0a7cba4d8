"""Coefficient conversions: round trips, NumPy/scipy references, stability, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from torchlpc.coefficients import (
    is_stable,
    lpc_to_reflection,
    lpc_to_roots,
    reflection_to_lpc,
    roots_to_lpc,
    sos_to_lpc,
)

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex64: dict(rtol=1e-4, atol=1e-5),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
}
DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


def _reflections(shape, dtype, generator, radius=0.95):
    """Reflection coefficients with |k| < radius."""
    magnitude = radius * torch.rand(shape, dtype=torch.float64, generator=generator)
    if dtype.is_complex:
        angle = 2 * np.pi * torch.rand(shape, dtype=torch.float64, generator=generator)
        return torch.polar(magnitude, angle).to(dtype)
    sign = torch.randint(0, 2, shape, generator=generator) * 2 - 1
    return (magnitude * sign).to(dtype)


def step_up_loop(k):
    """Textbook step-up for one filter, element by element, in NumPy."""
    a = np.zeros(0, dtype=k.dtype)
    for m, km in enumerate(k, start=1):
        new = np.zeros(m, dtype=k.dtype)
        for i in range(1, m):
            new[i - 1] = a[i - 1] + km * np.conj(a[m - i - 1])
        new[m - 1] = km
        a = new
    return a


# (shape, largest |k|). The step-down divides by 1 - |k|^2 at every order, so its
# condition number grows like the product of those factors: high orders get smaller |k|.
SHAPES = [
    pytest.param((1,), 0.95, id="N1"),
    pytest.param((4, 2), 0.95, id="N2"),
    pytest.param((3, 5, 7), 0.9, id="N7-batched"),
    pytest.param((2, 24), 0.5, id="N24"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, radius", SHAPES)
def test_step_up_matches_loop(shape, radius, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    k = _reflections(shape, dtype, g, radius)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    flat = k.to(wide).reshape(-1, shape[-1]).numpy()
    expected = np.stack([step_up_loop(row) for row in flat]).reshape(shape)
    expected = torch.from_numpy(expected).to(dtype)
    torch.testing.assert_close(reflection_to_lpc(k), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, radius", SHAPES)
def test_round_trips(shape, radius, dtype):
    g = torch.Generator().manual_seed(10 + sum(shape))
    k = _reflections(shape, dtype, g, radius)
    A = reflection_to_lpc(k)
    torch.testing.assert_close(lpc_to_reflection(A), k, **TOL[dtype])
    torch.testing.assert_close(reflection_to_lpc(lpc_to_reflection(A)), A, **TOL[dtype])
    assert is_stable(A).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_stability_agrees_with_numpy_roots(dtype):
    g = torch.Generator().manual_seed(1)
    k = _reflections((400, 4), dtype, g, radius=1.3)
    A = reflection_to_lpc(k)
    radius = np.array([np.abs(np.roots([1, *row])).max() for row in A.numpy()])
    expected = torch.from_numpy(radius < 1)
    assert 50 < int(expected.sum()) < 350
    assert torch.equal(is_stable(A), expected)
    assert torch.equal(is_stable(A), (k.abs() < 1).all(-1))


STABILITY_EDGE_CASES = [
    pytest.param([[-0.999]], [True], id="near-unit-circle"),
    pytest.param([[1.0]], [False], id="on-unit-circle"),
    pytest.param([[0.0, 1.0]], [False], id="pair-on-unit-circle"),
    pytest.param([[-2.0, 1.0]], [False], id="double-root-at-one"),
    pytest.param([[0.5, float("nan")]], [False], id="nan"),
    pytest.param([[0.0, 0.0, 0.0]], [True], id="zeros"),
]


@pytest.mark.parametrize("A, expected", STABILITY_EDGE_CASES)
def test_is_stable_edge_cases(A, expected):
    assert is_stable(torch.tensor(A, dtype=torch.float64)).tolist() == expected


def test_unstable_input_raises_or_is_flagged():
    A = torch.tensor([[-0.5, 0.06], [-0.5, 1.5], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="2 of 3 filters in A \\(3, 2\\) are not stable"):
        lpc_to_reflection(A)
    k = lpc_to_reflection(A, check=False)
    assert torch.equal((k.abs() < 1).all(-1), torch.tensor([True, False, False]))
    # An unstable filter off the unit circle still round-trips; one on it does not.
    torch.testing.assert_close(reflection_to_lpc(k[:2]), A[:2], **TOL[torch.float64])
    assert k[2, 1] == 1 and k[2, 0].isnan()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("N", [1, 2, 6])
def test_roots_match_numpy(N, dtype):
    g = torch.Generator().manual_seed(N)
    roots = _reflections((3, N), torch.complex128, g, radius=1.5)
    if not dtype.is_complex:
        roots = roots.real
    A = roots_to_lpc(roots)
    expected = np.stack([np.poly(r) for r in roots.numpy()])[:, 1:]
    torch.testing.assert_close(A, torch.from_numpy(expected).to(A.dtype), **TOL[torch.complex128])
    # lpc_to_roots inverts it: the polynomial of the found roots is A again.
    back = roots_to_lpc(lpc_to_roots(A))
    torch.testing.assert_close(back, A.to(back.dtype), rtol=1e-8, atol=1e-9)


def test_conjugate_pair_roots_give_real_coefficients():
    roots = torch.tensor([0.5 + 0.5j, 0.5 - 0.5j, -0.3 + 0j], dtype=torch.complex128)
    A = roots_to_lpc(roots)
    torch.testing.assert_close(A.imag, torch.zeros(3, dtype=torch.float64))
    expected = np.poly([0.5 + 0.5j, 0.5 - 0.5j, -0.3]).real[1:]
    torch.testing.assert_close(A.real, torch.from_numpy(expected))


@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("width", [3, 6])
def test_sos_matches_scipy(S, width):
    g = torch.Generator().manual_seed(S + width)
    z, p, k = scipy.signal.butter(2 * S, 0.2, output="zpk")
    sos = torch.from_numpy(scipy.signal.zpk2sos(z, p, k))
    sos = torch.stack([sos, sos * (1 + torch.rand(S, 1, dtype=torch.float64, generator=g))])
    _, a = scipy.signal.sos2tf(sos[1].numpy())
    A = sos_to_lpc(sos[..., -width:])
    assert A.shape == (2, 2 * S)
    torch.testing.assert_close(A[1], torch.from_numpy(a[1:] / a[0]), **TOL[torch.float64])
    torch.testing.assert_close(A[0], A[1], **TOL[torch.float64])


GRAD_CASES = [
    pytest.param(reflection_to_lpc, id="reflection_to_lpc"),
    pytest.param(lambda A: lpc_to_reflection(reflection_to_lpc(A)), id="lpc_to_reflection"),
    pytest.param(roots_to_lpc, id="roots_to_lpc"),
    pytest.param(lambda r: sos_to_lpc(torch.stack([1.5 + r[..., 0], r[..., 1], r[..., 2]], -1)), id="sos_to_lpc"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("f", GRAD_CASES)
def test_gradcheck(f, dtype):
    g = torch.Generator().manual_seed(2)
    k = _reflections((2, 3, 3), dtype, g, radius=0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (k,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (k,))


def test_gradcheck_lpc_to_roots():
    # Distinct roots; eigenvalue gradients are gauge-free for the polynomial back.
    A = roots_to_lpc(torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64))[None].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda A: roots_to_lpc(lpc_to_roots(A)), (A,))


def test_empty_order():
    empty = torch.zeros(3, 0)
    for f in (reflection_to_lpc, lpc_to_reflection, roots_to_lpc):
        assert f(empty).shape == (3, 0)
    assert is_stable(empty).all() and lpc_to_roots(empty).shape == (3, 0)
    # No sections: the polynomial 1.
    for width in (3, 6):
        assert sos_to_lpc(torch.zeros(3, 0, width)).shape == (3, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_roots_of_half_precision_are_computed_in_float32(dtype):
    roots = torch.tensor([[0.5, -0.25, 0.75]])
    A = roots_to_lpc(roots).to(dtype)
    found = lpc_to_roots(A)
    assert found.dtype == torch.complex64
    expected = lpc_to_roots(A.float())
    torch.testing.assert_close(found, expected)
    torch.testing.assert_close(found.real.sort(-1).values, roots.sort(-1).values, rtol=0, atol=2e-2)


ERROR_CASES = [
    pytest.param(lambda: reflection_to_lpc([0.5]), TypeError, "k must be a torch.Tensor", id="list"),
    pytest.param(lambda: reflection_to_lpc(torch.tensor(0.5)), ValueError, r"k must have shape \(\*, N\)", id="0d"),
    pytest.param(lambda: lpc_to_reflection(torch.ones(3, dtype=torch.int32)), TypeError, "A has dtype", id="int"),
    pytest.param(lambda: is_stable(torch.tensor(0.5)), ValueError, "A must have shape", id="0d-stable"),
    pytest.param(lambda: sos_to_lpc(torch.ones(2, 4)), ValueError, r"sos must have shape \(\*, S, 6\)", id="sos-width"),
    pytest.param(lambda: sos_to_lpc(torch.ones(6)), ValueError, "sos must have shape", id="sos-1d"),
]


@pytest.mark.parametrize("call, error, match", ERROR_CASES)
def test_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
