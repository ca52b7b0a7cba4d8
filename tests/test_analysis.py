"""LPC analysis against scipy.linalg.solve_toeplitz, upsampling, and the round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from torchlpc import sample_wise_lpc
from torchlpc.analysis import levinson_durbin, lpc_analysis, upsample_coefficients
from torchlpc.coefficients import is_stable, reflection_to_lpc
from torchlpc.filters import lfilter

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex64: dict(rtol=1e-4, atol=1e-5),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
}


def _signal(shape, dtype, generator):
    """Coloured noise (an AR(2) resonance), so the predictors are far from zero."""
    white = torch.randn(shape, dtype=torch.float64, generator=generator)
    if dtype.is_complex:
        white = torch.complex(white, torch.randn(shape, dtype=torch.float64, generator=generator))
    coloured = scipy.signal.lfilter([1.0], [1.0, -1.3, 0.8], white.numpy(), axis=-1)
    return torch.from_numpy(coloured).to(dtype)


def reference_analysis(x, order, frame_length, hop_length, window, eps, pad_mode):
    """Per frame, in NumPy: centred frames, autocorrelation, scipy's Toeplitz solver."""
    T = x.shape[-1]
    F = math.ceil(T / hop_length)
    left = frame_length // 2
    right = max(0, (F - 1) * hop_length + frame_length - left - T)
    numpy_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}[pad_mode]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(left, right)], mode=numpy_mode)
    A = np.zeros((*x.shape[:-1], F, order), dtype=x.dtype)
    gain = np.zeros((*x.shape[:-1], F))
    for index in np.ndindex(*x.shape[:-1]):
        for f in range(F):
            frame = padded[index][f * hop_length : f * hop_length + frame_length] * window
            r = np.array(
                [np.sum(frame[k:] * np.conj(frame[: frame_length - k])) for k in range(order + 1)]
            )
            r = r / np.sum(window**2)
            r[0] += eps
            a = scipy.linalg.solve_toeplitz((r[:order], np.conj(r[:order])), -r[1:])
            A[index][f] = a
            gain[index][f] = np.sqrt(np.real(r[0] + np.dot(a, np.conj(r[1:]))))
    return A, gain


# (batch, T, order, frame_length, hop_length, window, pad_mode)
ANALYSIS_CASES = [
    pytest.param((2,), 1000, 8, 256, 128, "hann", "constant", id="hann-T-multiple-of-hop"),
    pytest.param((3,), 777, 12, 200, 100, "hamming", "reflect", id="hamming-reflect-odd-T"),
    pytest.param((2, 2), 300, 4, 101, 37, "blackman", "replicate", id="blackman-odd-frame"),
    pytest.param((1,), 50, 6, 64, 16, "rectangular", "constant", id="T-below-frame"),
    pytest.param((2,), 400, 1, 64, 64, "hann", "constant", id="N1-no-overlap"),
    pytest.param((2,), 1, 2, 8, 4, "hann", "constant", id="T1"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize(
    "batch, T, order, frame_length, hop_length, window, pad_mode", ANALYSIS_CASES
)
def test_matches_solve_toeplitz(batch, T, order, frame_length, hop_length, window, pad_mode, dtype):
    g = torch.Generator().manual_seed(T + order)
    x = _signal((*batch, T), dtype, g)
    A, gain = lpc_analysis(x, order, frame_length, hop_length, window=window, pad_mode=pad_mode)
    assert A.shape == (*batch, math.ceil(T / hop_length), order) and A.dtype == dtype
    assert gain.shape == A.shape[:-1]
    if window == "rectangular":
        w = np.ones(frame_length)
    else:
        w = scipy.signal.get_window(window, frame_length)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    A_ref, gain_ref = reference_analysis(
        x.to(wide).numpy(), order, frame_length, hop_length, w, 1e-9, pad_mode
    )
    torch.testing.assert_close(A, torch.from_numpy(A_ref).to(dtype), **TOL[dtype])
    torch.testing.assert_close(gain, torch.from_numpy(gain_ref).to(gain.dtype), **TOL[dtype])


def test_gain_is_rms_of_frame_residual():
    # The autocorrelation method's error is the residual energy of the windowed frame,
    # extended by N zeros, per unit of window energy.
    g = torch.Generator().manual_seed(0)
    x = _signal((1, 512), torch.float64, g)
    order, L, hop = 6, 128, 64
    A, gain = lpc_analysis(x, order, L, hop, eps=0.0)
    w = scipy.signal.get_window("hann", L)
    padded = np.pad(x[0].numpy(), (L // 2, L))
    for f in (2, 5):
        frame = np.concatenate([padded[f * hop : f * hop + L] * w, np.zeros(order)])
        residual = scipy.signal.lfilter([1.0, *A[0, f].numpy()], [1.0], frame)
        expected = torch.tensor(np.sum(residual**2) / np.sum(w**2))
        torch.testing.assert_close(gain[0, f] ** 2, expected)


def test_float32_sharp_resonances_stay_finite_and_stable():
    # Two formants with poles at radius 0.999: in float32 arithmetic the recursion used
    # to return NaN or unstable filters on many frames.
    T, fs = 8000, 8000.0
    t = torch.arange(T, dtype=torch.float64)
    excitation = (t % 80 == 0).double()
    poles = [0.999 * complex(math.cos(w), math.sin(w)) for w in (2 * math.pi * 700 / fs, 2 * math.pi * 1200 / fs)]
    denominator = np.poly(poles + [p.conjugate() for p in poles]).real
    signal = torch.from_numpy(scipy.signal.lfilter([1.0], denominator, excitation.numpy()))
    A, gain = lpc_analysis(signal.float(), order=16, frame_length=400, hop_length=160)
    assert A.dtype == gain.dtype == torch.float32
    assert torch.isfinite(A).all() and torch.isfinite(gain).all()
    assert is_stable(A.double()).all()
    expected, _ = lpc_analysis(signal.float().double(), order=16, frame_length=400, hop_length=160)
    torch.testing.assert_close(A.double(), expected, rtol=1e-4, atol=1e-4)


def _largest_pole_radius(A):
    """max |root| over the frames, from the coefficients as returned (in double precision)."""
    rows = A.detach().reshape(-1, A.shape[-1]).to(torch.complex128).numpy()
    return max(np.abs(np.roots(np.concatenate([[1.0], row]))).max() for row in rows)


def _tones(level, dtype):
    """A pure tone (issue 15's case) and two tones beside one another, at ``level``."""
    t = torch.arange(4000, dtype=torch.float64)
    tones = torch.stack([torch.sin(0.1 * t), torch.sin(0.1 * t) + 0.5 * torch.sin(0.37 * t + 1)])
    if dtype.is_complex:
        tones = torch.exp(1j * 0.1 * t).expand(2, -1).to(torch.complex128)
    return (level * tones).to(dtype)


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(torch.float32, id="float32"),
        pytest.param(torch.float64, id="float64"),
        pytest.param(torch.complex64, id="complex64"),
        pytest.param(torch.bfloat16, id="bfloat16"),
    ],
)
@pytest.mark.parametrize("level", [1e-6, 1e-3, 1.0, 1e3, 3e4, 1e6], ids=lambda v: f"level{v:g}")
def test_filters_stable_as_returned_at_every_level(dtype, level):
    # A loud float32 tone used to come back with a pole at radius 1.0018: stable in
    # double precision, pushed outside by the rounding to float32.
    A, gain = lpc_analysis(_tones(level, dtype), order=16, frame_length=512, hop_length=256)
    assert A.dtype == dtype
    assert torch.isfinite(A.double() if not A.is_complex() else A).all()
    assert is_stable(A).all()
    assert is_stable(A.to(torch.complex128 if A.is_complex() else torch.float64)).all()
    assert _largest_pole_radius(A) < 1


def test_repair_is_no_larger_than_the_rounding_needs():
    # The loud tone's frames are pulled inward only as far as stability in float32
    # needs: the poles stay near the circle and the spectral peak near the tone
    # (within the 0.01-0.02 rad that rounding to float32 moves it anyway).
    x = 3e4 * torch.sin(0.1 * torch.arange(4000, dtype=torch.float64))
    A32, _ = lpc_analysis(x.float(), order=16, frame_length=512, hop_length=256)
    A64, _ = lpc_analysis(x.float().double(), order=16, frame_length=512, hop_length=256)
    frequencies = np.linspace(0, np.pi, 4096)
    for row in A32[3:-3]:
        assert 0.98 < _largest_pole_radius(row[None]) < 1
        denominator = np.concatenate([[1.0], row.double()])
        response = np.abs(np.polyval(denominator, np.exp(1j * frequencies)))
        assert abs(frequencies[response.argmin()] - 0.1) < 0.02
    # Frames the rounding leaves stable are the double-precision ones, rounded.
    untouched = is_stable(A64.float()) & is_stable(A64.float().double())
    torch.testing.assert_close(A32[untouched], A64.float()[untouched], rtol=0, atol=0)


def test_silent_frames_are_finite_and_differentiable():
    g = torch.Generator().manual_seed(1)
    x = _signal((2, 600), torch.float32, g)
    x[0, 200:] = 0
    x[1] = 0
    x.requires_grad_(True)
    A, gain = lpc_analysis(x, 10, 128, 64)
    assert torch.isfinite(A).all() and torch.isfinite(gain).all()
    torch.testing.assert_close(A[1], torch.zeros_like(A[1]))
    torch.testing.assert_close(gain[1], torch.full_like(gain[1], math.sqrt(1e-9)))
    assert is_stable(A).all()
    (A.square().sum() + gain.sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("order", [1, 3, 10])
def test_levinson_matches_solve_toeplitz(order, dtype):
    g = torch.Generator().manual_seed(order)
    x = _signal((4, 200), dtype, g)
    r = torch.stack([(x[:, k:] * x[:, : 200 - k].conj()).sum(-1) for k in range(order + 2)], -1)
    A, error = levinson_durbin(r, order)
    assert A.shape == (4, order) and error.shape == (4,) and not error.is_complex()
    rn = r.numpy()
    for n in range(4):
        column = rn[n, :order]
        a = scipy.linalg.solve_toeplitz((column, column.conj()), -rn[n, 1 : order + 1])
        torch.testing.assert_close(A[n], torch.from_numpy(a), **TOL[dtype])
        e = np.real(rn[n, 0] + np.dot(a, rn[n, 1 : order + 1].conj()))
        torch.testing.assert_close(error[n], torch.tensor(e), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradcheck_analysis(dtype):
    g = torch.Generator().manual_seed(2)
    x = _signal((1, 40), dtype, g).requires_grad_(True)
    window = torch.hann_window(16, dtype=torch.float64).requires_grad_(True)
    pad_mode = "constant" if dtype.is_complex else "reflect"
    f = lambda x, w: lpc_analysis(x, 3, 16, 12, window=w, pad_mode=pad_mode)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, window), check_forward_ad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, window), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_gradcheck_levinson(dtype):
    g = torch.Generator().manual_seed(3)
    x = _signal((2, 30), dtype, g)
    r = torch.stack([(x[:, k:] * x[:, : 30 - k].conj()).sum(-1) for k in range(5)], -1)
    r.requires_grad_(True)
    f = lambda r: levinson_durbin(r, eps=1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (r,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (r,))


# ---------------------------------------------------------------------------- upsampling

UPSAMPLE_CASES = [
    pytest.param(4, 3, 2, None, id="default-length"),
    pytest.param(5, 7, 3, 33, id="length-not-multiple"),
    pytest.param(1, 6, 2, None, id="one-frame"),
    pytest.param(3, 1, 4, None, id="hop1"),
    pytest.param(6, 4, 1, 10, id="length-below-frames"),
]


@pytest.mark.parametrize("F, hop, N, length", UPSAMPLE_CASES)
def test_linear_and_hold_match_numpy(F, hop, N, length):
    g = torch.Generator().manual_seed(F * hop)
    A = torch.randn(2, F, N, dtype=torch.float64, generator=g)
    T = F * hop if length is None else length
    linear = upsample_coefficients(A, hop, length=length)
    hold = upsample_coefficients(A, hop, mode="hold", length=length)
    assert linear.shape == hold.shape == (2, T, N)
    t = np.arange(T)
    for b in range(2):
        for i in range(N):
            expected = np.interp(t, np.arange(F) * hop, A[b, :, i].numpy())
            expected = torch.from_numpy(expected)
            torch.testing.assert_close(linear[b, :, i], expected, **TOL[torch.float64])
            expected = A[b, np.minimum(t // hop, F - 1), i]
            torch.testing.assert_close(hold[b, :, i], expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("N", [2, 6, 16])
def test_reflection_interpolation_stays_stable(N, dtype):
    g = torch.Generator().manual_seed(N)
    magnitude = 0.99 * torch.rand(64, 2, N, dtype=torch.float64, generator=g)
    if dtype.is_complex:
        angle = 2 * np.pi * torch.rand(64, 2, N, dtype=torch.float64, generator=g)
        k = torch.polar(magnitude, angle)
    else:
        k = magnitude * torch.sign(torch.randn(64, 2, N, dtype=torch.float64, generator=g))
    frames = reflection_to_lpc(k)
    assert is_stable(frames).all()
    upsampled = upsample_coefficients(frames, 32, mode="reflection")
    assert is_stable(upsampled).all()
    # Independent check by the roots.
    radius = max(np.abs(np.roots([1, *row])).max() for row in upsampled[:8].reshape(-1, N).numpy())
    assert radius < 1
    # The frames themselves are hit exactly.
    torch.testing.assert_close(upsampled[:, ::32][:, :2], frames, rtol=1e-9, atol=1e-10)
    if N >= 6:
        # Plain linear interpolation of the same frames leaves the stable set somewhere
        # (for real N = 2 it cannot: that stable set, a triangle, is convex).
        assert not is_stable(upsample_coefficients(frames, 32, mode="linear")).all()


ROUND_TRIP_CASES = [
    pytest.param(1024, 128, "linear", id="linear-T-multiple"),
    pytest.param(1000, 128, "reflection", id="reflection-T-not-multiple"),
    pytest.param(999, 100, "hold", id="hold"),
]


@pytest.mark.parametrize("T, hop, mode", ROUND_TRIP_CASES)
def test_analysis_upsample_resynthesis_round_trip(T, hop, mode):
    g = torch.Generator().manual_seed(T)
    x = _signal((2, T), torch.float64, g)
    frames, _ = lpc_analysis(x, 12, 2 * hop, hop)
    A = upsample_coefficients(frames, hop, mode=mode, length=T)
    assert A.shape == (2, T, 12)
    # The inverse (FIR) filter gives the residual, the all-pole filter undoes it.
    inverse = torch.cat([torch.ones_like(A[..., :1]), A], -1)
    residual = lfilter(inverse, torch.ones(1, dtype=x.dtype), x)
    assert residual.square().mean() < 0.2 * x.square().mean()
    torch.testing.assert_close(sample_wise_lpc(residual, A), x, **TOL[torch.float64])
    if T % hop == 0:
        torch.testing.assert_close(upsample_coefficients(frames, hop, mode=mode), A)


@pytest.mark.parametrize("mode", ["linear", "reflection", "hold"])
def test_no_frames_give_no_samples(mode):
    for length in (None, 0):
        A = upsample_coefficients(torch.ones(3, 0, 2), 4, mode=mode, length=length)
        assert A.shape == (3, 0, 2)


@pytest.mark.parametrize("mode", ["linear", "reflection", "hold"])
def test_gradcheck_upsample(mode):
    g = torch.Generator().manual_seed(4)
    frames = reflection_to_lpc(0.8 * torch.rand(2, 3, 3, dtype=torch.float64, generator=g) - 0.4)
    frames.requires_grad_(True)
    f = lambda A: upsample_coefficients(A, 4, mode=mode, length=11)  # noqa: E731
    assert torch.autograd.gradcheck(f, (frames,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (frames,))


ERROR_CASES = [
    pytest.param(lambda: lpc_analysis(torch.ones(100), 0, 32, 16), ValueError, "order must be at least 1", id="order0"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 2.0, 32, 16), TypeError, "order must be an int", id="order-float"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 40, 32, 16), ValueError, "frame_length 32 is too short for order 40", id="short-frame"),
    pytest.param(lambda: lpc_analysis(torch.ones(0), 2, 32, 16), ValueError, r"T >= 1", id="empty-x"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 2, 32, 16, window="kaiser"), ValueError, "unknown window 'kaiser'", id="window-name"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 2, 32, 16, window=torch.ones(31)), ValueError, r"window must have shape \(frame_length,\) = \(32,\)", id="window-shape"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 2, 32, 16, eps=-1.0), ValueError, "eps must be non-negative", id="eps"),
    pytest.param(lambda: lpc_analysis(torch.ones(100), 2, 32, 16, pad_mode="wrap"), ValueError, "pad_mode must be one of", id="pad-mode"),
    pytest.param(lambda: lpc_analysis(torch.ones(10), 2, 32, 16, pad_mode="reflect"), ValueError, "pad_mode='reflect' needs more than", id="reflect-short"),
    pytest.param(lambda: levinson_durbin(torch.ones(3), order=5), ValueError, r"order 5 needs r\[0\] .. r\[5\]", id="levinson-short"),
    pytest.param(lambda: upsample_coefficients(torch.ones(4, 2), 0), ValueError, "hop_length must be at least 1", id="hop0"),
    pytest.param(lambda: upsample_coefficients(torch.ones(2), 4), ValueError, r"A must have shape \(\*, F, N\)", id="1d-A"),
    pytest.param(lambda: upsample_coefficients(torch.ones(3, 0, 2), 4, length=5), ValueError, r"A \(3, 0, 2\) has no frames, so it cannot give length 5", id="no-frames"),
    pytest.param(lambda: upsample_coefficients(torch.ones(4, 2), 4, mode="cubic"), ValueError, "mode must be one of linear, reflection, hold", id="mode"),
    pytest.param(lambda: upsample_coefficients(torch.ones(4, 2), 4, length=-1), ValueError, "length must be a non-negative int", id="length"),
]


@pytest.mark.parametrize("call, error, match", ERROR_CASES)
def test_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
