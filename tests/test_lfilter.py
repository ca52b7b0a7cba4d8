"""lfilter against scipy.signal.lfilter (time-invariant) and a plain loop (time-varying)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from torchlpc.filters import lfilter

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex64: dict(rtol=1e-4, atol=1e-5),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
}


def _random(shape, dtype, generator, scale=1.0):
    real = torch.randn(shape, dtype=torch.float64, generator=generator) * scale
    if dtype.is_complex:
        imag = torch.randn(shape, dtype=torch.float64, generator=generator) * scale
        return torch.complex(real, imag).to(dtype)
    return real.to(dtype)


def _stable_denominator(shape, dtype, generator, a0=1.0):
    """(..., N + 1) denominators with all poles inside |z| < 0.9, leading coefficient a0."""
    *batch, K = shape
    N = K - 1
    radius = 0.2 + 0.7 * torch.rand((*batch, N), dtype=torch.float64, generator=generator)
    angle = torch.rand((*batch, N), dtype=torch.float64, generator=generator) * 2 * np.pi
    poles = torch.polar(radius, angle)
    if not dtype.is_complex:
        poles = poles.real  # real poles keep a real polynomial
    poly = torch.ones((*batch, 1), dtype=poles.dtype)
    for n in range(N):
        poly = torch.cat([poly, torch.zeros_like(poly[..., :1])], -1) - poles[..., n : n + 1] * (
            torch.cat([torch.zeros_like(poly[..., :1]), poly], -1)
        )
    return (a0 * poly).to(dtype)


def lfilter_loop(b, a, x, x_past, y_past):
    """The defining difference equation, one sample at a time, in NumPy."""
    B, T = x.shape
    M, N = b.shape[-1] - 1, a.shape[-1] - 1
    y = np.zeros((B, T), dtype=np.result_type(b, a, x))
    for n in range(B):
        xs = lambda t: x[n, t] if t >= 0 else x_past[n, -1 - t]  # noqa: E731
        ys = lambda t: y[n, t] if t >= 0 else y_past[n, -1 - t]  # noqa: E731
        for t in range(T):
            bt = b[n, t if b.shape[1] > 1 else 0]
            at = a[n, t if a.shape[1] > 1 else 0]
            acc = sum(bt[j] * xs(t - j) for j in range(M + 1))
            acc -= sum(at[i] * ys(t - i) for i in range(1, N + 1))
            y[n, t] = acc / at[0]
    return y


# (M, N, T, B) for time-invariant filters against scipy.
SCIPY_CASES = [
    pytest.param(2, 3, 50, 3, id="M2-N3"),
    pytest.param(4, 2, 37, 2, id="M4-N2-odd-T"),
    pytest.param(0, 1, 20, 2, id="M0-N1"),
    pytest.param(3, 0, 20, 2, id="FIR-N0"),
    pytest.param(0, 0, 9, 1, id="gain-only"),
    pytest.param(5, 6, 1, 2, id="T1"),
    pytest.param(5, 6, 3, 2, id="T-below-order"),
    pytest.param(1, 12, 64, 2, id="N12"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("M, N, T, B", SCIPY_CASES)
def test_matches_scipy_time_invariant(M, N, T, B, dtype):
    g = torch.Generator().manual_seed(1000 * M + 10 * N + T)
    b = _random((M + 1,), torch.float64, g).to(dtype)
    a = _stable_denominator((N + 1,), torch.float64, g, a0=1.7).to(dtype)
    x = _random((B, T), dtype, g)
    x_past = _random((B, M), dtype, g)
    y_past = _random((B, N), dtype, g)

    y, (x_final, y_final) = lfilter(b, a, x, zi=(x_past, y_past), return_zf=True)

    bn, an = b.numpy().astype(np.complex128 if dtype.is_complex else np.float64), a.numpy()
    for n in range(B):
        state = scipy.signal.lfiltic(bn, an, y_past[n].numpy(), x_past[n].numpy())
        if max(M, N) == 0:
            expected, final = scipy.signal.lfilter(bn, an, x[n].numpy()), state
        else:
            expected, final = scipy.signal.lfilter(bn, an, x[n].numpy(), zi=state)
        torch.testing.assert_close(y[n], torch.from_numpy(expected).to(dtype), **TOL[dtype])
        ours = scipy.signal.lfiltic(bn, an, y_final[n].numpy(), x_final[n].numpy())
        torch.testing.assert_close(
            torch.from_numpy(np.asarray(ours)), torch.from_numpy(np.asarray(final)),
            **TOL[dtype], check_dtype=False,
        )


def test_zero_initial_conditions_by_default():
    g = torch.Generator().manual_seed(0)
    b, a = _random((3,), torch.float64, g), _stable_denominator((3,), torch.float64, g)
    x = _random((2, 30), torch.float64, g)
    expected = scipy.signal.lfilter(b.numpy(), a.numpy(), x.numpy(), axis=-1)
    torch.testing.assert_close(lfilter(b, a, x), torch.from_numpy(expected), **TOL[torch.float64])
    torch.testing.assert_close(lfilter(b, a, x, zi=(None, None)), lfilter(b, a, x))


# Time dimension of b and a: T (time-varying) or 1.
TV_CASES = [
    pytest.param(3, 2, 25, True, True, id="both-varying"),
    pytest.param(3, 2, 25, True, False, id="b-varying"),
    pytest.param(3, 2, 25, False, True, id="a-varying"),
    pytest.param(0, 4, 17, False, True, id="M0-a-varying"),
    pytest.param(2, 0, 17, True, True, id="FIR-varying"),
    pytest.param(4, 3, 2, True, True, id="T2"),
]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128], ids=str
)
@pytest.mark.parametrize("M, N, T, b_varies, a_varies", TV_CASES)
def test_time_varying_matches_loop(M, N, T, b_varies, a_varies, dtype):
    g = torch.Generator().manual_seed(7 * T + M + N)
    B = 3
    b = _random((B, T if b_varies else 1, M + 1), dtype, g)
    a = _stable_denominator((B, T if a_varies else 1, N + 1), dtype, g, a0=1.3)
    a = a + 0.1 * _random(a.shape, dtype, g)  # a0 varies in time too
    x, x_past, y_past = (_random(s, dtype, g) for s in ((B, T), (B, M), (B, N)))

    y = lfilter(b, a, x, zi=(x_past, y_past))

    wide = torch.complex128 if dtype.is_complex else torch.float64
    expected = lfilter_loop(*(t.to(wide).numpy() for t in (b, a, x, x_past, y_past)))
    torch.testing.assert_close(y, torch.from_numpy(expected).to(dtype), **TOL[dtype])


@pytest.mark.parametrize("split", [1, 2, 9, 19])
def test_blocks_continue_through_final_conditions(split):
    g = torch.Generator().manual_seed(split)
    T, M, N = 20, 3, 4
    b = _random((2, T, M + 1), torch.float64, g)
    a = _stable_denominator((2, T, N + 1), torch.float64, g)
    x = _random((2, T), torch.float64, g)
    whole = lfilter(b, a, x)
    head, zf = lfilter(b[:, :split], a[:, :split], x[:, :split], return_zf=True)
    tail = lfilter(b[:, split:], a[:, split:], x[:, split:], zi=zf)
    torch.testing.assert_close(torch.cat([head, tail], -1), whole, **TOL[torch.float64])


BROADCAST_CASES = [
    pytest.param((3,), (2,), (4, 2, 30), (4, 2), id="1d-coefficients"),
    pytest.param((5, 1, 3), (5, 1, 2), (30,), (5,), id="batched-filters-one-signal"),
    pytest.param((1, 30, 3), (4, 1, 2), (4, 30), (4,), id="mixed-batch"),
]


@pytest.mark.parametrize("b_shape, a_shape, x_shape, batch", BROADCAST_CASES)
def test_batch_dimensions_broadcast(b_shape, a_shape, x_shape, batch):
    g = torch.Generator().manual_seed(3)
    b = _random(b_shape, torch.float64, g)
    a = _stable_denominator(a_shape, torch.float64, g)
    x = _random(x_shape, torch.float64, g)
    y = lfilter(b, a, x)
    T = x_shape[-1]
    assert y.shape == (*batch, T)
    full = lambda c: c.expand(*batch, c.shape[-2] if c.dim() > 1 else 1, c.shape[-1])  # noqa: E731
    flat = lambda c: full(c).reshape(-1, *full(c).shape[-2:])  # noqa: E731
    xs = x.expand(*batch, T).reshape(-1, T)
    zeros = lambda n: np.zeros((xs.shape[0], n))  # noqa: E731
    expected = lfilter_loop(flat(b).numpy(), flat(a).numpy(), xs.numpy(),
                            zeros(b.shape[-1] - 1), zeros(a.shape[-1] - 1))
    torch.testing.assert_close(y.reshape(-1, T), torch.from_numpy(expected), **TOL[torch.float64])


def test_expanded_coefficients_are_time_invariant():
    g = torch.Generator().manual_seed(8)
    b = _random((2, 1, 3), torch.float64, g).requires_grad_(True)
    a = _stable_denominator((2, 1, 4), torch.float64, g).requires_grad_(True)
    x = _random((2, 40), torch.float64, g)
    expanded = lfilter(b.expand(2, 40, 3), a.expand(2, 40, 4), x)
    torch.testing.assert_close(expanded, lfilter(b, a, x), **TOL[torch.float64])
    grads = torch.autograd.grad(expanded.sum(), (b, a))
    expected = torch.autograd.grad(lfilter(b, a, x).sum(), (b, a))
    torch.testing.assert_close(grads, expected, **TOL[torch.float64])
    with pytest.raises(ValueError, match="time dimension"):
        lfilter(b.expand(2, 39, 3), a, x)


def test_half_precision_is_computed_in_float32():
    g = torch.Generator().manual_seed(4)
    b, a = _random((1, 3), torch.float32, g), _stable_denominator((1, 3), torch.float32, g)
    x = _random((2, 40), torch.float32, g)
    y = lfilter(b.half(), a.half(), x.half())
    assert y.dtype == torch.float16
    expected = lfilter(b.half().float(), a.half().float(), x.half().float())
    torch.testing.assert_close(y.float(), expected, rtol=2e-3, atol=2e-3)


def test_vmap_matches_batch():
    g = torch.Generator().manual_seed(5)
    b = _random((4, 1, 3), torch.float64, g)
    a = _stable_denominator((4, 1, 3), torch.float64, g)
    x = _random((4, 16), torch.float64, g)
    mapped = torch.vmap(lambda bb, aa, xx: lfilter(bb, aa, xx))(b, a, x)
    torch.testing.assert_close(mapped, lfilter(b, a, x), **TOL[torch.float64])


ALL = ("b", "a", "x", "x_past", "y_past")
# (inputs requiring grad, time-varying coefficients, B, T, fast_mode, dtype); fast mode
# checks random projections of the Jacobian, the full mode every entry (float64 only,
# for time).
GRAD_CASES = [
    pytest.param(ALL, True, 1, 4, False, torch.float64, id="all-varying-full-float64"),
    *(
        pytest.param(wrt, varying, 2, 7, True, dtype, id=f"{name}-{str(dtype)[6:]}")
        for dtype in (torch.float64, torch.complex128)
        for wrt, varying, name in (
            (ALL, True, "all-varying"),
            (ALL, False, "all-invariant"),
            (("a",), True, "a-only"),
            (("b",), False, "b-only-invariant"),
            (("x_past", "y_past"), True, "state-only"),
        )
    ),
]


@pytest.mark.parametrize("wrt, varying, B, T, fast, dtype", GRAD_CASES)
def test_gradcheck(wrt, varying, B, T, fast, dtype):
    g = torch.Generator().manual_seed(6)
    M, N = 2, 3
    inputs = {
        "b": _random((B, T if varying else 1, M + 1), dtype, g),
        "a": _stable_denominator((B, T if varying else 1, N + 1), dtype, g, a0=1.2),
        "x": _random((B, T), dtype, g),
        "x_past": _random((B, M), dtype, g),
        "y_past": _random((B, N), dtype, g),
    }
    for name in wrt:
        inputs[name].requires_grad_(True)

    def f(b, a, x, x_past, y_past):
        y, (xf, yf) = lfilter(b, a, x, zi=(x_past, y_past), return_zf=True)
        return y, yf

    args = tuple(inputs.values())
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, fast_mode=fast)
    assert torch.autograd.gradgradcheck(f, args, fast_mode=fast)


ERROR_CASES = [
    pytest.param(lambda: lfilter([1.0], torch.ones(1), torch.ones(4)), TypeError, "b must be a torch.Tensor", id="b-list"),
    pytest.param(lambda: lfilter(torch.ones(2), torch.ones(1), torch.ones(4, dtype=torch.int64)), TypeError, "x has dtype", id="int-x"),
    pytest.param(lambda: lfilter(torch.ones(2), torch.ones(2), torch.ones(4).double()), TypeError, "dtype", id="mixed-dtype"),
    pytest.param(lambda: lfilter(torch.ones(2), torch.ones(2), torch.tensor(1.0)), ValueError, "x must have shape", id="0d-x"),
    pytest.param(lambda: lfilter(torch.ones(0), torch.ones(2), torch.ones(4)), ValueError, "b .* has no coefficients", id="empty-b"),
    pytest.param(lambda: lfilter(torch.ones(2, 3, 2), torch.ones(2), torch.ones(2, 4)), ValueError, "time dimension", id="b-wrong-T"),
    pytest.param(lambda: lfilter(torch.ones(3, 1, 2), torch.ones(2), torch.ones(2, 4)), ValueError, "do not broadcast", id="batch-mismatch"),
    pytest.param(lambda: lfilter(torch.ones(3), torch.ones(2), torch.ones(4), zi=torch.zeros(2)), TypeError, "zi must be a pair", id="zi-not-pair"),
    pytest.param(lambda: lfilter(torch.ones(3), torch.ones(2), torch.ones(4), zi=(torch.zeros(3), None)), ValueError, r"x_past\) must have shape \(\*, 2\)", id="x-past-size"),
    pytest.param(lambda: lfilter(torch.ones(3), torch.ones(2), torch.ones(4), zi=(None, torch.zeros(2))), ValueError, r"y_past\) must have shape \(\*, 1\)", id="y-past-size"),
]


@pytest.mark.parametrize("call, error, match", ERROR_CASES)
def test_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
