"""``sample_wise_lpc`` on every CPU backend against the reference loop.

Every case checks the output ``y``, the final state ``zf`` and the gradients of
x, A and zi under random upstream gradients for both ``y`` and ``zf``. The
reference runs in float64 or complex128 on the same inputs, with gradients by
autograd through the loop; results in single precision are held to
``TOLERANCES[float32]`` (norm-wise, see conftest.py), double precision to
``TOLERANCES[float64]``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.signal
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import (
    DTYPES,
    TOLERANCES,
    WIDE,
    assert_close,
    filter_inputs,
    make_generator,
    randn,
    relative_error,
)
from torchlpc import _dispatch, linear_recurrence, sample_wise_lpc
from torchlpc.reference import allpole_reference, allpole_vjp_reference

NAMES = ("y", "zf", "grad_x", "grad_A", "grad_zi")


def reference_results(x, A, zi, grad_y, grad_zf):
    """y, zf and the three gradients, in double precision, by autograd through the loop."""
    batch, T, N = x.shape[:-1], x.shape[-1], A.shape[-1]
    B = math.prod(batch)
    x, A, zi = (t.detach().to(WIDE[t.dtype]).requires_grad_() for t in (x, A, zi))
    y = allpole_reference(x.reshape(B, T), A.reshape(B, A.shape[-2], N), zi.reshape(B, N))
    y = y.reshape(*batch, T)
    zf = torch.cat([zi.flip(-1), y], dim=-1)[..., -N:].flip(-1)
    upstream = (grad_y.to(y.dtype), grad_zf.to(y.dtype))
    # With T = 0 the loop never reads A: its gradient is zeros, not None.
    grads = torch.autograd.grad((y, zf), (x, A, zi), upstream, materialize_grads=True)
    return (y.detach(), zf.detach(), *grads)


def library_results(x, A, zi, grad_y, grad_zf):
    """y, zf and the gradients of the given tensors, through ``sample_wise_lpc``."""
    leaves = [t.detach().requires_grad_() for t in (x, A, zi)]
    y, zf = sample_wise_lpc(*leaves, return_zf=True)
    grads = torch.autograd.grad((y, zf), leaves, (grad_y, grad_zf))
    return (y.detach(), zf.detach(), *grads)


def upstream_gradients(x, N, dtype, seed):
    generator = make_generator(seed)
    grad_y = randn(*x.shape, dtype=dtype, generator=generator)
    grad_zf = randn(*x.shape[:-1], N, dtype=dtype, generator=generator)
    return grad_y, grad_zf


def check_against_reference(x, A, zi, dtype, seed=0):
    N = A.shape[-1]
    grad_y, grad_zf = upstream_gradients(x, N, dtype, seed + 1000)
    got = library_results(x, A, zi, grad_y, grad_zf)
    expected = reference_results(x, A, zi, grad_y, grad_zf)
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert g.shape == e.shape, f"{name}: shape {tuple(g.shape)}, expected {tuple(e.shape)}"
        assert_close(g, e, dtype, name)


SHAPES = [
    pytest.param((3,), 64, 4, id="B3-T64-N4"),
    pytest.param((1,), 33, 2, id="B1-odd-T"),
    pytest.param((2,), 1, 3, id="T1"),
    pytest.param((2,), 3, 8, id="T<N"),
    pytest.param((2,), 8, 8, id="T=N"),
    pytest.param((2,), 65, 1, id="N1"),
    pytest.param((2,), 100, 16, id="N16"),
    pytest.param((2, 3), 31, 3, id="batch-2x3"),
    pytest.param((), 20, 3, id="no-batch"),
    pytest.param((0,), 5, 2, id="B0"),
]

VARIANTS = [
    pytest.param("varying", id="time-varying"),
    pytest.param("invariant", id="time-invariant"),
    pytest.param("expanded", id="expanded-stride-0"),
]


@pytest.mark.parametrize("batch, T, N", SHAPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, batch, T, N, variant, dtype):
    x, A, zi = filter_inputs(batch, T, N, dtype=dtype, seed=T * 31 + N, varying=variant == "varying")
    if variant != "expanded":
        check_against_reference(x, A, zi, dtype)
        return
    # An expanded view is filtered as time-invariant, and its base gets the
    # time-varying gradient summed over time.
    grad_y, grad_zf = upstream_gradients(x, N, dtype, seed=7)
    base = A.clone().requires_grad_()
    leaves = [x.clone().requires_grad_(), zi.clone().requires_grad_()]
    expanded = base.expand(*batch, T, N)
    assert T == 1 or expanded.stride(-2) == 0
    y, zf = sample_wise_lpc(leaves[0], expanded, leaves[1], return_zf=True)
    grad_x, grad_base, grad_zi = torch.autograd.grad((y, zf), [leaves[0], base, leaves[1]], (grad_y, grad_zf))
    varying = reference_results(x, A.expand(*batch, T, N).contiguous(), zi, grad_y, grad_zf)
    names = ("y", "zf", "grad_x", "grad_zi")
    for name, g, e in zip(names, (y, zf, grad_x, grad_zi), (*varying[:3], varying[4]), strict=True):
        assert_close(g.detach(), e, dtype, name)
    assert_close(grad_base, varying[3].sum(-2, keepdim=True), dtype, "grad_A")


@pytest.mark.parametrize(
    "batch, T, N",
    [pytest.param((2,), 0, 3, id="B2"), pytest.param((2, 3), 0, 1, id="batch-2x3-N1")],
)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_empty_time_axis(backend, batch, T, N, varying):
    x, A, zi = filter_inputs(batch, T, N, dtype=torch.float64, seed=1, varying=varying)
    leaves = [t.clone().requires_grad_() for t in (x, A, zi)]
    y, zf = sample_wise_lpc(*leaves, return_zf=True)
    assert y.shape == (*batch, 0)
    assert torch.equal(zf, zi)
    grad_zf = randn(*zi.shape, dtype=zi.dtype, generator=make_generator(2))
    grad_x, grad_A, grad_zi = torch.autograd.grad((y, zf), leaves, (torch.zeros_like(y), grad_zf))
    assert grad_x.shape == x.shape
    assert torch.equal(grad_A, torch.zeros_like(A))
    assert torch.equal(grad_zi, grad_zf)


def test_zero_initial_state_by_default(backend):
    x, A, zi = filter_inputs((2,), 20, 3, dtype=torch.float64, seed=3)
    assert torch.equal(sample_wise_lpc(x, A), sample_wise_lpc(x, A, torch.zeros_like(zi)))
    y, zf = sample_wise_lpc(x, A, return_zf=True)
    assert torch.equal(y, sample_wise_lpc(x, A))
    assert torch.equal(zf, y[:, -3:].flip(-1))


@pytest.mark.parametrize("split", [0, 1, 2, 13, 40])
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_final_state_continues_the_filter(backend, split, varying):
    x, A, zi = filter_inputs((2,), 40, 5, dtype=torch.float64, seed=4, varying=varying)
    whole, whole_zf = sample_wise_lpc(x, A, zi, return_zf=True)
    first, zf = sample_wise_lpc(x[:, :split], A[:, :split] if varying else A, zi, return_zf=True)
    rest, rest_zf = sample_wise_lpc(x[:, split:], A[:, split:] if varying else A, zf, return_zf=True)
    assert_close(torch.cat([first, rest], dim=1), whole, torch.float64, "y")
    assert_close(rest_zf, whole_zf, torch.float64, "zf")


# ----------------------------------------------------------------------------
# Memory layouts.


def _transposed(t):
    """The same values, laid out with the first two dimensions swapped in memory."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


LAYOUTS = [
    pytest.param("transposed", id="transposed"),
    pytest.param("sliced", id="sliced"),
    pytest.param("flipped", id="flipped"),
    pytest.param("batch-broadcast", id="A-expanded-over-batch"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float64, id="float64"), pytest.param(torch.complex64, id="complex64")]
)
def test_non_contiguous_inputs(backend, layout, varying, dtype):
    B, T, N = 3, 24, 4
    x, A, zi = filter_inputs((2 * B,), 2 * T, 2 * N, dtype=dtype, seed=5, varying=varying)
    if layout == "transposed":
        x, zi = _transposed(x[:B, :T]), _transposed(zi[:B, :N])
        A = A[:B, : T if varying else 1, :N].permute(2, 1, 0).contiguous().permute(2, 1, 0)
    elif layout == "sliced":
        x, zi = x[::2, ::2], zi[::2, 1::2]
        A = A[::2, ::2 if varying else 1, :N]
    elif layout == "flipped":
        x, zi = x[:B, :T].flip(-1), zi[:B, :N].flip(0)
        A = A[:B, : T if varying else 1, :N].flip(0)
        if varying:
            A = A.flip(1)
    else:
        x, zi = x[:B, :T], zi[:B, :N]
        A = A[:1, : T if varying else 1, :N].expand(B, -1, -1)
    if layout != "flipped":
        assert not x.is_contiguous() and not A.is_contiguous() and not zi.is_contiguous()
    check_against_reference(x, A, zi, dtype)


class _AllocationRecorder(TorchDispatchMode):
    """Records the largest storage any aten or torchlpc op returns, and the A each op call gets."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op_coefficients = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.torchlpc.allpole.default, torch.ops.torchlpc.allpole_vjp.default):
            self.op_coefficients.append(tuple(args[1].shape))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("function", ["sample_wise_lpc", "linear_recurrence"])
@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(torch.float32, id="float32"),
        pytest.param(torch.float16, id="float16"),
        pytest.param(torch.bfloat16, id="bfloat16"),
    ],
)
def test_expanded_coefficients_are_never_materialised(function, dtype):
    """A view expanded along time runs the time-invariant op, forward and backward.

    No op, autograd's included, returns a tensor with a storage the size of a
    per-sample A (slicing the view had autograd build a dense zero gradient for it,
    and the float32 upcast of a half-precision view copied it), and the tensor it
    was expanded from gets the gradient of the time-invariant filter (to rounding:
    it arrives as T equal shares).
    """
    B, T, N = 2, 255, 1 if function == "linear_recurrence" else 16
    x, row, zi = (t.to(dtype) for t in filter_inputs((B,), T, N, dtype=torch.float32, seed=22, varying=False))
    leaves = [t.clone().requires_grad_() for t in (x, row, zi)]
    grad_y = randn(B, T, dtype=torch.float32, generator=make_generator(23)).to(dtype)

    def run(x, row, zi, expand):
        if function == "sample_wise_lpc":
            return sample_wise_lpc(x, row.expand(B, T, N) if expand else row, zi)
        a = -row[..., 0]
        return linear_recurrence(a.expand(B, T) if expand else a, x, zi[..., 0])

    recorder = _AllocationRecorder()
    with recorder:
        y = run(*leaves, expand=True)
        grads = torch.autograd.grad(y, leaves, grad_y)
    assert recorder.op_coefficients == [(B, 1, N), (B, 1, N)]
    if N > 1:
        # (With N = 1 a per-sample a is no larger than x: the op's A says it all.)
        per_sample = B * T * N * torch.finfo(torch.float32).bits // 8
        assert recorder.largest < per_sample, f"{recorder.largest} bytes, a per-sample A is {per_sample}"

    expected = [t.clone().requires_grad_() for t in (x, row, zi)]
    expected_y = run(*expected, expand=False)
    expected_grads = torch.autograd.grad(expected_y, expected, grad_y)
    assert torch.equal(y, expected_y)
    for name, g, e in zip(("grad_x", "grad_A", "grad_zi"), grads, expected_grads, strict=True):
        if dtype == torch.float32:
            assert_close(g, e.double(), dtype, name)
        else:
            torch.testing.assert_close(g, e, msg=name)


@pytest.mark.parametrize(
    "view",
    [
        pytest.param(torch.conj, id="conj"),
        pytest.param(torch._neg_view, id="neg"),
    ],
)
@pytest.mark.parametrize("argument", [0, 1, 2], ids=["x", "A", "zi"])
def test_lazy_conjugate_and_negative_views(backend, view, argument):
    """Tensors whose conj or neg bit is set are read as the values they stand for."""
    inputs = list(filter_inputs((2,), 12, 3, dtype=torch.complex128, seed=20))
    values = view(inputs[argument])
    assert values.is_conj() or values.is_neg()
    grad_y, grad_zf = upstream_gradients(inputs[0], 3, torch.complex128, seed=21)
    resolved = [*inputs]
    resolved[argument] = values.resolve_conj().resolve_neg()
    inputs[argument] = values
    got = library_results(*inputs, grad_y, grad_zf)
    expected = reference_results(*resolved, grad_y, grad_zf)
    for name, g, e in zip(NAMES, got, expected, strict=True):
        assert_close(g, e, torch.complex128, name)


# ----------------------------------------------------------------------------
# Half precision.

HALF = [
    pytest.param(torch.float16, id="float16"),
    pytest.param(torch.bfloat16, id="bfloat16"),
]


@pytest.mark.parametrize("upstream", ["y", "zf"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_half_precision_is_computed_in_float32(backend, dtype, varying, upstream):
    """Bit for bit the float32 result, rounded.

    One upstream gradient at a time: with both, autograd adds the two in the
    input dtype where zf overlaps y, which rounds differently from float32.
    """
    x, A, zi = (t.to(dtype) for t in filter_inputs((2,), 30, 3, dtype=torch.float32, seed=6, varying=varying))
    grad_y, grad_zf = (g.to(dtype) for g in upstream_gradients(x, 3, torch.float32, seed=7))
    if upstream == "y":
        grad_zf = torch.zeros_like(grad_zf)
    else:
        grad_y = torch.zeros_like(grad_y)
    got = library_results(x, A, zi, grad_y, grad_zf)
    single = library_results(x.float(), A.float(), zi.float(), grad_y.float(), grad_zf.float())
    for name, g, s in zip(NAMES, got, single, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g, s.to(dtype), rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------
# Non-finite values.


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_non_finite_input_propagates(backend, value, varying):
    x, A, zi = filter_inputs((2,), 20, 3, dtype=torch.float64, seed=8, varying=varying)
    x[0, 7] = value
    y = sample_wise_lpc(x, A, zi)
    clean = sample_wise_lpc(x[1:], A[1:], zi[1:])
    assert torch.isfinite(y[0, :7]).all()
    assert_close(y[0, :7], allpole_reference(x[:1], A[:1], zi[:1])[0, :7], torch.float64, "before")
    if math.isnan(value):
        assert y[0, 7:].isnan().all()
    else:
        assert y[0, 7] == value
        assert not torch.isfinite(y[0, 7:]).any()
    assert torch.equal(y[1:], clean), "a non-finite value leaked into another row"


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "argument, varying, first",
    [
        pytest.param("A", True, 7, id="A-time-varying"),
        pytest.param("A", False, 0, id="A-time-invariant"),
        pytest.param("zi", True, 0, id="zi"),
    ],
)
def test_non_finite_coefficient_or_state_propagates(backend, argument, varying, first, value):
    """A non-finite coefficient or state makes its row non-finite from the first sample that reads it.

    So does the gradient that depends on it (grad_x on A, grad_A on the outputs
    and so on zi); the other row, outputs and gradients, is bit for bit what it
    is without the bad value.
    """
    x, A, zi = filter_inputs((2,), 20, 3, dtype=torch.float64, seed=24, varying=varying)
    bad = {"A": A.clone(), "zi": zi.clone()}
    if argument == "A":
        bad["A"][0, first if varying else 0, 2] = value
    else:
        bad["zi"][0, 0] = value
    leaves = [t.clone().requires_grad_() for t in (x, bad["A"], bad["zi"])]
    y = sample_wise_lpc(*leaves)
    grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    clean = [t[1:].clone().requires_grad_() for t in (x, A, zi)]
    clean_y = sample_wise_lpc(*clean)
    clean_grads = torch.autograd.grad(clean_y, clean, torch.ones_like(clean_y))
    assert torch.isfinite(y[0, :first]).all()
    assert not torch.isfinite(y[0, first:]).any()
    dependent = grads[0] if argument == "A" else grads[1]
    assert not torch.isfinite(dependent[0]).all()
    assert torch.equal(y[1:], clean_y), "a non-finite value leaked into another row"
    for g, c in zip(grads, clean_grads, strict=True):
        assert torch.equal(g[1:], c), "a non-finite value leaked into another row's gradient"


def test_non_finite_gradient_propagates(backend):
    x, A, zi = filter_inputs((2,), 20, 3, dtype=torch.float64, seed=9)
    leaves = [t.clone().requires_grad_() for t in (x, A, zi)]
    grad_y = torch.ones(2, 20, dtype=torch.float64)
    grad_y[0, 12] = math.nan
    grad_x, grad_A, grad_zi = torch.autograd.grad(sample_wise_lpc(*leaves), leaves, grad_y)
    assert grad_x[0, :13].isnan().all() and torch.isfinite(grad_x[0, 13:]).all()
    assert grad_A[0, :13].isnan().all() and torch.isfinite(grad_A[0, 13:]).all()
    assert grad_zi[0].isnan().all()
    assert torch.isfinite(grad_x[1]).all() and torch.isfinite(grad_A[1]).all()
    assert torch.isfinite(grad_zi[1]).all()


# ----------------------------------------------------------------------------
# Poles near the unit circle over long signals.

LONG_T = 4096
NEAR_CIRCLE = dict(radius=0.999, k_low=0.9, k_high=0.999)


def lfilter_results(x, a, zi, grad_y):
    """y and the gradients of <grad_y, y> for a time-invariant real filter, from scipy.

    The adjoint of a time-invariant all-pole filter run from rest is the same
    filter (conjugated) run backwards in time, so grad_x comes from lfilter too;
    grad_a[i-1] = -sum_t grad_x[t] y[t-i] and grad_zi[k] = -sum_t a[t+k] grad_x[t].
    """
    denominator = np.concatenate([[1.0], a])
    N = len(a)
    y = scipy.signal.lfilter([1.0], denominator, x, zi=scipy.signal.lfiltic([1.0], denominator, y=zi))[0]
    grad_x = scipy.signal.lfilter([1.0], denominator, grad_y[::-1])[::-1]
    padded = np.concatenate([zi[::-1], y])
    T = len(x)
    grad_a = np.array([-(grad_x * padded[N - i : N - i + T]).sum() for i in range(1, N + 1)])
    grad_zi = np.array([-sum(a[t + k] * grad_x[t] for t in range(N - k) if t < T) for k in range(N)])
    return y, grad_x, grad_a, grad_zi


def test_lfilter_results_helper_matches_reference():
    """The scipy-based ground truth of the next test, checked once against the loop on a short input."""
    x, A, zi = filter_inputs((1,), 50, 4, dtype=torch.float64, seed=10, varying=False, **NEAR_CIRCLE)
    grad_y = randn(1, 50, dtype=torch.float64, generator=make_generator(11))
    expected = reference_results(x, A, zi, grad_y, torch.zeros_like(zi))
    got = lfilter_results(x[0].numpy(), A[0, 0].numpy(), zi[0].numpy(), grad_y[0].numpy())
    for name, g, e in zip(("y", "grad_x", "grad_A", "grad_zi"), got, (expected[0], *expected[2:]), strict=True):
        assert_close(torch.from_numpy(np.ascontiguousarray(g)), e.reshape(-1), torch.float64, name)


def _worst_error(results, truth):
    return max(
        float(np.abs(np.asarray(r, dtype=np.longdouble) - t).max() / np.abs(t).max())
        for r, t in zip(results, truth, strict=True)
    )


@pytest.mark.parametrize("N", [pytest.param(2, id="N2"), pytest.param(8, id="N8")])
def test_near_unit_circle_time_invariant_matches_lfilter(backend, N):
    """Against scipy's lfilter in extended precision (long double).

    With eight poles clustered at modulus 0.998 to 0.999 the problem itself is
    ill-conditioned: scipy's own float64 lfilter is off by up to about 4e-12
    there. So the bound is the table's float64 tolerance or four times the
    error of scipy's float64 lfilter on the same row, whichever is larger; the
    worst of y and the three gradients is compared, since one result's error
    alone varies several-fold with summation order.
    """
    x, A, zi = filter_inputs((2,), LONG_T, N, dtype=torch.float64, seed=12, varying=False, **NEAR_CIRCLE)
    grad_y = randn(2, LONG_T, dtype=torch.float64, generator=make_generator(13))
    got = library_results(x, A, zi, grad_y, torch.zeros_like(zi))
    assert got[0].abs().max() > 10 * x.abs().max(), "the poles should resonate"
    for b in range(2):
        row = [t[b].reshape(-1).numpy() for t in (x, A, zi, grad_y)]
        truth = lfilter_results(*(r.astype(np.longdouble) for r in row))
        scipy_error = _worst_error(lfilter_results(*row), truth)
        error = _worst_error([t[b].reshape(-1).numpy() for t in (got[0], *got[2:])], truth)
        bound = max(TOLERANCES[torch.float64], 4 * scipy_error)
        assert error <= bound, f"row {b}: error {error:.3g}, scipy float64 {scipy_error:.3g}"


@functools.lru_cache(maxsize=None)
def _long_varying_case(N):
    x, A, zi = filter_inputs((2,), LONG_T, N, dtype=torch.float64, seed=14, **NEAR_CIRCLE)
    grad_y = randn(2, LONG_T, dtype=torch.float64, generator=make_generator(15))
    with torch.no_grad():
        y = allpole_reference(x, A, zi)
        grads = allpole_vjp_reference(grad_y, A, y, zi)
    return (x, A, zi, grad_y), (y, *grads)


@pytest.mark.parametrize("N", [pytest.param(4, id="N4")])
def test_near_unit_circle_time_varying_matches_reference(backend, N):
    inputs, expected = _long_varying_case(N)
    x, A, zi, grad_y = inputs
    got = library_results(x, A, zi, grad_y, torch.zeros_like(zi))
    assert expected[0].abs().max() > 10 * x.abs().max(), "the poles should resonate"
    for name, g, e in zip(("y", "grad_x", "grad_A", "grad_zi"), (got[0], *got[2:]), expected, strict=True):
        assert_close(g, e, torch.float64, name)


# ----------------------------------------------------------------------------
# Backends agree, and numba's parallel and serial drivers are both exercised.


@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_backends_agree(monkeypatch, varying, dtype):
    x, A, zi = filter_inputs((3,), 80, 5, dtype=dtype, seed=16, varying=varying)
    grad_y, grad_zf = upstream_gradients(x, 5, dtype, seed=17)
    results = {}
    for name in ("numba", "chunked", "reference"):
        monkeypatch.setenv("TORCHLPC_BACKEND", name)
        results[name] = library_results(x, A, zi, grad_y, grad_zf)
    for other in ("chunked", "reference"):
        for name, g, e in zip(NAMES, results["numba"], results[other], strict=True):
            error = relative_error(g, e)
            assert error <= TOLERANCES[dtype], f"numba vs {other}, {name}: {error:.3g}"


# B * T * N coefficient reads from which the numba backend splits the batch over
# threads (when B > 1 and PyTorch allows more than one thread); restated here
# so that a change shows up.
PARALLEL_MIN_WORK = 1 << 16

DRIVER_CASES = [
    pytest.param(3, 64, 4, "serial", id="small-serial"),
    pytest.param(32, 255, 8, "serial", id="just-below-threshold-serial"),
    pytest.param(32, 256, 8, "parallel", id="at-threshold-parallel"),
    pytest.param(1, 256, 256, "serial", id="one-row-serial"),
]


def contractive_inputs(B, T, N, *, dtype, varying, seed):
    """Rows with sum |A[t]| <= 1/2: stable and well conditioned at any order, time-varying or not.

    Direct-form polynomials of high order with all their roots inside a fixed
    radius have coefficients of astronomical size, whose outputs no precision
    can resolve; these serve when the order is high only to make the work large.
    """
    generator = make_generator(seed)
    x = randn(B, T, dtype=dtype, generator=generator)
    steps = T if varying else 1
    A = (torch.rand(B, steps, N, generator=generator, dtype=torch.float64) - 0.5) / N
    if dtype.is_complex:
        A = A * torch.exp(2j * math.pi * torch.rand(B, steps, N, generator=generator, dtype=torch.float64))
    zi = randn(B, N, dtype=dtype, generator=generator)
    return x, A.to(dtype), zi


@pytest.fixture
def two_threads():
    """At least two PyTorch threads, which the numba backend follows, for the test's duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("B, T, N, driver", DRIVER_CASES)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float64, id="float64"), pytest.param(torch.complex64, id="complex64")]
)
def test_numba_drivers(monkeypatch, two_threads, B, T, N, driver, varying, dtype):
    """Sizes on either side of the threshold run serially or split over threads, and match the reference.

    Serial: one kernel call over the whole batch. Parallel: several calls on
    consecutive slices of the batch, which together cover it once.
    """
    from torchlpc.kernels import cpu_numba, cpu_threads

    assert cpu_threads._PARALLEL_MIN_WORK == PARALLEL_MIN_WORK
    assert (B > 1 and B * T * N >= PARALLEL_MIN_WORK) == (driver == "parallel")
    monkeypatch.setenv("TORCHLPC_BACKEND", "numba")
    rows = {}
    original = cpu_numba.run_over_batch

    def recording(kernel, work, *arguments, **options):
        def counted(*sliced):
            rows.setdefault(kernel.__name__, []).append(sliced[0].shape[0])
            return kernel(*sliced)

        return original(counted, work, *arguments, **options)

    monkeypatch.setattr(cpu_numba, "run_over_batch", recording)
    if N > 16:
        x, A, zi = contractive_inputs(B, T, N, dtype=dtype, varying=varying, seed=18)
    else:
        x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=18, varying=varying)
    check_against_reference(x, A, zi, dtype)
    assert len(rows) == 2, rows
    for name, sizes in rows.items():
        assert sum(sizes) == B, (name, sizes)
        if driver == "serial":
            assert sizes == [B], (name, sizes)
        else:
            assert len(sizes) > 1 and max(sizes) < B, (name, sizes)


def test_automatic_backend_on_cpu_is_numba(monkeypatch):
    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)
    assert _dispatch.select_backend(torch.device("cpu"), torch.float32) == "numba"
    monkeypatch.setenv("TORCHLPC_BACKEND", "auto")
    assert _dispatch.select_backend(torch.device("cpu"), torch.complex64) == "numba"


# ----------------------------------------------------------------------------
# Huge orders.


@pytest.mark.parametrize(
    "T, N",
    [
        pytest.param(3, 5000, id="T3-N5000"),
        pytest.param(0, 5000, id="T0-N5000"),
        pytest.param(3, 10**6, id="T3-N1e6"),
    ],
)
def test_huge_order(backend, T, N):
    """Orders far above T: every backend, gradients included, in time and memory linear in N.

    One N x N matrix of N = 10**6 is 8 TB: the chunked backend used to allocate
    one per row for its single chunk's transition matrix, which T <= N never
    needs; the reference adjoint looped over T + N times with N lags each, and
    the chunked grad_A over all N lags.
    """
    generator = make_generator(19)
    B = 2 if N <= 5000 else 1
    x = randn(B, T, dtype=torch.float64, generator=generator)
    A = 1e-3 * randn(B, T, N, dtype=torch.float64, generator=generator)
    zi = randn(B, N, dtype=torch.float64, generator=generator)
    check_against_reference(x, A, zi, torch.float64)
