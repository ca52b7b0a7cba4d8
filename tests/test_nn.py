"""torchlpc.nn modules: AllPoleSynthesis and OnePoleSmoother."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from torchlpc import sample_wise_lpc
from torchlpc.analysis import lpc_analysis, upsample_coefficients
from torchlpc.coefficients import reflection_to_lpc
from torchlpc.filters import lfilter
from torchlpc.nn import AllPoleSynthesis, OnePoleSmoother

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.complex64: dict(rtol=1e-4, atol=1e-5),
    torch.complex128: dict(rtol=1e-10, atol=1e-12),
}


def _frames(shape, dtype, generator):
    """Stable frame-wise LPC coefficients from reflection coefficients in (-0.9, 0.9)."""
    k = 1.8 * torch.rand(shape, dtype=torch.float64, generator=generator) - 0.9
    return reflection_to_lpc(k).to(dtype)


SYNTHESIS_CASES = [
    pytest.param((2,), 64, 16, 4, "linear", id="linear"),
    pytest.param((3, 2), 50, 16, 3, "reflection", id="reflection-T-not-multiple"),
    pytest.param((1,), 9, 4, 1, "hold", id="hold-N1"),
    pytest.param((), 5, 8, 2, "linear", id="no-batch-one-frame"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("batch, T, hop, N, mode", SYNTHESIS_CASES)
def test_synthesis_is_upsample_then_filter(batch, T, hop, N, mode, dtype):
    g = torch.Generator().manual_seed(T + N)
    F = -(-T // hop)
    frames = _frames((*batch, F, N), dtype, g)
    excitation = torch.randn((*batch, T), dtype=torch.float64, generator=g).to(dtype)
    zi = torch.randn((*batch, N), dtype=torch.float64, generator=g).to(dtype)
    synth = AllPoleSynthesis(hop, mode=mode)
    y, zf = synth(excitation, frames, zi=zi, return_zf=True)
    A = upsample_coefficients(frames, hop, mode=mode, length=T)
    y_ref, zf_ref = sample_wise_lpc(excitation, A, zi, return_zf=True)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(zf, zf_ref, **TOL[dtype])
    expected = sample_wise_lpc(excitation, A)
    torch.testing.assert_close(synth(excitation, frames), expected, **TOL[dtype])


def test_synthesis_of_an_empty_excitation_returns_the_state():
    zi = torch.tensor([[0.5, -0.25]])
    y, zf = AllPoleSynthesis(4)(torch.ones(1, 0), torch.zeros(1, 0, 2), zi=zi, return_zf=True)
    assert y.shape == (1, 0)
    torch.testing.assert_close(zf, zi)


def test_synthesis_resynthesises_analysed_signal():
    g = torch.Generator().manual_seed(0)
    T, hop = 700, 64
    white = torch.randn(2, T, generator=g, dtype=torch.float64).numpy()
    x = torch.from_numpy(scipy.signal.lfilter([1.0], [1.0, -1.2, 0.7], white))
    frames, _ = lpc_analysis(x, 8, 256, hop)
    A = upsample_coefficients(frames, hop, length=T)
    inverse = torch.cat([torch.ones_like(A[..., :1]), A], -1)
    residual = lfilter(inverse, torch.ones(1, dtype=x.dtype), x)
    torch.testing.assert_close(AllPoleSynthesis(hop)(residual, frames), x, **TOL[torch.float64])


@pytest.mark.parametrize("mode", ["linear", "reflection"])
def test_synthesis_gradcheck(mode):
    g = torch.Generator().manual_seed(1)
    frames = _frames((2, 3, 2), torch.float64, g).requires_grad_(True)
    excitation = torch.randn(2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    zi = torch.randn(2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    synth = AllPoleSynthesis(4, mode=mode)
    args = (excitation, frames, zi)
    assert torch.autograd.gradcheck(synth, args, check_forward_ad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(synth, args, fast_mode=True)


SYNTHESIS_ERRORS = [
    pytest.param(lambda: AllPoleSynthesis(0), ValueError, "hop_length must be at least 1", id="hop0"),
    pytest.param(lambda: AllPoleSynthesis(4, mode="cubic"), ValueError, "mode must be one of", id="mode"),
    pytest.param(lambda: AllPoleSynthesis(4)(torch.ones(2, 9), torch.ones(2, 2, 1)), ValueError, r"frame_coefficients must have shape \(\*, F, N\) = \(2, 3, N\)", id="frame-count"),
    pytest.param(lambda: AllPoleSynthesis(4)(torch.ones(2, 8), torch.ones(3, 2, 1)), ValueError, "frame_coefficients must have shape", id="batch"),
    pytest.param(lambda: AllPoleSynthesis(4)(torch.ones(2, 8), [[0.5]]), TypeError, "frame_coefficients must be a torch.Tensor", id="list"),
]


@pytest.mark.parametrize("call, error, match", SYNTHESIS_ERRORS)
def test_synthesis_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- smoother

SMOOTHER_CASES = [
    pytest.param(0.9, (3, 40), id="scalar-pole"),
    pytest.param(torch.tensor([0.5, 0.99]), (4, 2, 30), id="pole-per-channel"),
    pytest.param(torch.tensor([[0.2], [0.7]]), (2, 3, 25), id="pole-per-batch"),
    pytest.param(0.999, (1,), id="T1"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128], ids=str)
@pytest.mark.parametrize("pole, shape", SMOOTHER_CASES)
def test_smoother_matches_scipy(pole, shape, dtype):
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)
    zi = torch.randn(shape[:-1], dtype=torch.float64, generator=g).to(dtype)
    smoother = OnePoleSmoother(pole)
    y = smoother(x, zi)
    # The pole is the module's (float32) parameter; x of another dtype uses it as it is.
    p = smoother.pole.detach().double().expand(shape[:-1]).numpy()
    xs, zs = x.numpy(), zi.numpy()
    expected = np.empty_like(xs)
    for index in np.ndindex(*shape[:-1]):
        b, a = [1 - p[index]], [1, -p[index]]
        state = scipy.signal.lfiltic(b, a, [zs[index]])
        expected[index] = scipy.signal.lfilter(b, a, xs[index], zi=state)[0]
    torch.testing.assert_close(y, torch.from_numpy(expected), **TOL[dtype])


def test_smoother_has_unit_dc_gain_and_learns_stably():
    smoother = OnePoleSmoother(0.5)
    torch.testing.assert_close(smoother(torch.ones(1, 400))[0, -1], torch.tensor(1.0))
    assert [name for name, _ in smoother.named_parameters()] == ["logit"]
    # A large step pushes the logit far; the pole stays inside (0, 1).
    optimizer = torch.optim.SGD(smoother.parameters(), lr=1e3)
    target = torch.zeros(1, 50)
    for _ in range(3):
        optimizer.zero_grad()
        loss = (smoother(torch.randn(1, 50)) - target).square().mean()
        loss.backward()
        assert torch.isfinite(smoother.logit.grad).all()
        optimizer.step()
        assert 0 <= float(smoother.pole) <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_smoother_runs_in_float32(dtype):
    # A pole near 1: rounded to half, 1 - p would be off by a few percent.
    g = torch.Generator().manual_seed(3)
    smoother = OnePoleSmoother(0.999, learnable=False)
    x = torch.randn(2, 3000, generator=g).to(dtype)
    zi = torch.tensor([0.5, -0.25]).to(dtype)
    y = smoother(x, zi)
    assert y.dtype == dtype
    # Only the final rounding to half separates it from the float32 result.
    expected = smoother(x.float(), zi.float())
    torch.testing.assert_close(y, expected.to(dtype), rtol=0, atol=0)


def test_fixed_smoother_has_no_parameters():
    smoother = OnePoleSmoother(torch.tensor([0.3, 0.6]), learnable=False)
    assert list(smoother.parameters()) == []
    assert set(smoother.state_dict()) == {"logit"}
    torch.testing.assert_close(smoother.pole, torch.tensor([0.3, 0.6]))
    doubled = smoother.double()
    assert doubled.logit.dtype == torch.float64


def test_smoother_gradcheck():
    g = torch.Generator().manual_seed(2)
    smoother = OnePoleSmoother(torch.tensor([0.4, 0.8])).double()
    x = torch.randn(2, 2, 7, dtype=torch.float64, generator=g, requires_grad=True)
    zi = torch.randn(2, 2, dtype=torch.float64, generator=g, requires_grad=True)

    def f(logit, x, zi):
        return torch.func.functional_call(smoother, {"logit": logit}, (x, zi))

    args = (smoother.logit.detach().clone().requires_grad_(True), x, zi)
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, args, fast_mode=True)


SMOOTHER_ERRORS = [
    pytest.param(lambda: OnePoleSmoother(1.0), ValueError, "pole must lie strictly between 0 and 1", id="pole-one"),
    pytest.param(lambda: OnePoleSmoother(torch.tensor([0.5, -0.1])), ValueError, "strictly between 0 and 1", id="pole-negative"),
    pytest.param(lambda: OnePoleSmoother("0.5"), TypeError, "pole must be a float or a tensor", id="pole-str"),
    pytest.param(lambda: OnePoleSmoother(torch.tensor([1, 0])), TypeError, "real floating point", id="pole-int"),
    pytest.param(lambda: OnePoleSmoother(torch.tensor([0.5, 0.6]))(torch.ones(2, 3, 10)), ValueError, r"pole \(2\) does not broadcast to the batch shape \(2, 3\)", id="pole-shape"),
    pytest.param(lambda: OnePoleSmoother()(torch.tensor(1.0)), ValueError, "x must have shape", id="0d-x"),
    pytest.param(lambda: OnePoleSmoother()(torch.ones(2, 5).half(), torch.zeros(2)), TypeError, "OnePoleSmoother: zi has dtype torch.float32 but x has dtype torch.float16", id="zi-dtype"),
    pytest.param(lambda: OnePoleSmoother()(torch.ones(2, 5), [0.0, 0.0]), TypeError, "zi must be a torch.Tensor", id="zi-list"),
]


@pytest.mark.parametrize("call, error, match", SMOOTHER_ERRORS)
def test_smoother_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
