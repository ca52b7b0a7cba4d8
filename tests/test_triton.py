"""The Triton kernels (torchlpc.kernels.cuda_triton) against the reference loops.

First the kernels alone; then the library on them (TORCHLPC_BACKEND=triton):
outputs and gradients, gradcheck with forward AD and double backward, vmap,
jacfwd/jacrev/hessian, and torch.compile(fullgraph=True), in both variants.

On a machine without CUDA the kernels run on CPU tensors in Triton's
interpreter. Triton reads TRITON_INTERPRET when a kernel is defined, that is
when cuda_triton is first imported, so it is switched on here, at collection,
before any test imports the kernels (``setdefault``: an explicit setting wins;
it stays set for the session, where only Triton reads it). The interpreter runs
a few hundred time steps a second, hence the tiny shapes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import numpy as np
import pytest
import torch

from conftest import (
    filter_inputs,
    long_double_results,
    make_generator,
    randn,
    worst_long_double_error,
)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.autograd import gradcheck, gradgradcheck  # noqa: E402

from torchlpc import linear_recurrence, sample_wise_lpc  # noqa: E402
from torchlpc.kernels import cuda_triton  # noqa: E402
from torchlpc.reference import (  # noqa: E402
    allpole_reference,
    allpole_vjp_reference,
    linear_recurrence_reference,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
UNUSABLE = cuda_triton.why_unusable(DEVICE)
# Outside CI a machine without Triton skips these tests; CI (CI=true, .ci/run,
# which installs Triton with the test extra) must run them, so there a kernel
# that cannot run fails instead of skipping.
requires_kernels = pytest.mark.skipif(
    UNUSABLE is not None and not os.environ.get("CI"),
    reason=f"Triton kernels cannot run: {UNUSABLE}",
)

# Largest error allowed, relative to the largest magnitude of the float64
# reference (a filter's small outputs carry the absolute error of its large ones).
TOLERANCES = {torch.float64: 1e-11, torch.float32: 2e-5}


def stable_coefficients(B, T, N, radius, generator):
    """Real rows ``(B, T, N)`` of a stable all-pole filter with slowly drifting pole pairs."""
    free = (N + 1) // 2

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    t = torch.arange(T, dtype=torch.float64)[:, None]
    phase = 2 * math.pi * uniform(B, 1, free)
    drift = 1 - 0.025 * (1 + torch.sin(t / 80 + phase))
    modulus = radius * (0.5 + 0.5 * uniform(B, 1, free)) * drift
    angle = math.pi * uniform(B, 1, free) + 0.05 * torch.sin(t / 110 + phase)
    poles = torch.polar(modulus, angle)
    poles = torch.cat([poles, poles.conj()], dim=-1)[..., :N]
    if N % 2:
        poles[..., N // 2] = poles[..., N // 2].real.to(poles.dtype)
    coefficients = torch.zeros(B, T, N + 1, dtype=torch.complex128)
    coefficients[..., 0] = 1
    for k in range(N):
        coefficients[..., 1:] -= poles[..., k : k + 1] * coefficients[..., :-1].clone()
    return coefficients[..., 1:].real.contiguous()


def make_inputs(B, T, N, time_invariant, radius=0.9, seed=0):
    """float64 ``x, A, zi, grad_y`` on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    A = stable_coefficients(B, 1 if time_invariant else T, N, radius, generator)
    x, zi, grad_y = (
        torch.randn(*shape, generator=generator, dtype=torch.float64)
        for shape in ((B, T), (B, N), (B, T))
    )
    return x, A, zi, grad_y


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert actual.device.type == DEVICE.type
    tolerance = TOLERANCES[actual.dtype]
    actual = actual.cpu().to(expected.dtype)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= tolerance * max(scale, 1.0), (error, scale)


def run(B, T, N, time_invariant, dtype, need_A=True, radius=0.9, seed=0, **variant):
    """Run both kernels on the test device and compare with the float64 reference."""
    x, A, zi, grad_y = make_inputs(B, T, N, time_invariant, radius, seed)
    y_ref = allpole_reference(x, A, zi)
    grad_x_ref, grad_A_ref, grad_zi_ref = allpole_vjp_reference(grad_y, A, y_ref, zi)

    x_d, A_d, zi_d, grad_y_d, y_ref_d = (t.to(DEVICE, dtype) for t in (x, A, zi, grad_y, y_ref))
    y = cuda_triton.allpole(x_d, A_d, zi_d, **variant)
    assert y.dtype == dtype and y.is_contiguous()
    assert_close(y, y_ref)

    grad_x, grad_A, grad_zi = cuda_triton.allpole_vjp(
        grad_y_d, A_d, y_ref_d, zi_d, need_A, **variant
    )
    assert grad_x.dtype == grad_zi.dtype == dtype
    assert_close(grad_x, grad_x_ref)
    assert_close(grad_zi, grad_zi_ref)
    if need_A:
        assert grad_A.dtype == dtype
        assert_close(grad_A, grad_A_ref)
    else:
        assert grad_A.shape == (0, 0, 0)


SEQUENTIAL = {"variant": "sequential"}


def chunks_of(L):
    return {"variant": "chunked", "chunk_size": L}


# (B, T, N, time_invariant, variant)
CASES = [
    pytest.param(2, 1, 3, False, SEQUENTIAL, id="seq-T1"),
    pytest.param(2, 2, 5, False, SEQUENTIAL, id="seq-T_below_N"),
    pytest.param(2, 9, 1, False, SEQUENTIAL, id="seq-N1"),
    pytest.param(2, 11, 5, False, SEQUENTIAL, id="seq-N5_padded_block"),
    pytest.param(1, 7, 100, False, SEQUENTIAL, id="seq-N100_above_T"),
    pytest.param(1, 9, 40, False, chunks_of(4), id="chunked-N40_above_L_and_T"),
    pytest.param(2, 13, 3, False, chunks_of(4), id="chunked-partial_chunk_of_1"),
    pytest.param(2, 12, 3, False, chunks_of(4), id="chunked-whole_chunks"),
    pytest.param(2, 11, 5, False, chunks_of(2), id="chunked-chunk_below_N"),
    pytest.param(1, 6, 2, False, chunks_of(1), id="chunked-chunk_of_1"),
    pytest.param(2, 10, 1, False, chunks_of(3), id="chunked-N1"),
    pytest.param(2, 1, 3, False, chunks_of(4), id="chunked-T1"),
    pytest.param(1, 3, 5, False, chunks_of(2), id="chunked-T_below_N"),
    pytest.param(2, 1, 3, True, SEQUENTIAL, id="ti-seq-T1"),
    pytest.param(2, 11, 5, True, SEQUENTIAL, id="ti-seq-N5"),
    pytest.param(2, 13, 3, True, chunks_of(4), id="ti-chunked-partial_chunk"),
    pytest.param(2, 11, 5, True, chunks_of(2), id="ti-chunked-chunk_below_N"),
    pytest.param(2, 10, 1, True, chunks_of(3), id="ti-chunked-N1"),
    pytest.param(1, 3, 5, True, chunks_of(2), id="ti-chunked-T_below_N"),
]


@requires_kernels
@pytest.mark.parametrize("B, T, N, time_invariant, variant", CASES)
def test_float64_matches_reference(B, T, N, time_invariant, variant):
    run(B, T, N, time_invariant, torch.float64, **variant)


@requires_kernels
@pytest.mark.parametrize(
    "B, T, N, time_invariant, variant",
    [
        pytest.param(2, 11, 5, False, SEQUENTIAL, id="seq"),
        pytest.param(2, 13, 3, False, chunks_of(4), id="chunked"),
        pytest.param(2, 13, 3, True, SEQUENTIAL, id="ti-seq"),
        pytest.param(2, 11, 5, True, chunks_of(2), id="ti-chunked"),
    ],
)
def test_float32_matches_reference(B, T, N, time_invariant, variant):
    run(B, T, N, time_invariant, torch.float32, **variant)


@requires_kernels
@pytest.mark.parametrize(
    "time_invariant, variant",
    [
        pytest.param(False, SEQUENTIAL, id="seq"),
        pytest.param(False, chunks_of(3), id="chunked"),
        pytest.param(True, chunks_of(3), id="ti-chunked"),
    ],
)
def test_without_grad_A(time_invariant, variant):
    run(2, 8, 3, time_invariant, torch.float64, need_A=False, **variant)


@requires_kernels
def test_automatic_variant():
    run(1, 20, 3, False, torch.float64)


@requires_kernels
def test_chunked_float32_as_accurate_as_sequential():
    # Order 16, poles up to 0.99: chunk transition matrices dwarf the states they
    # carry. They are kept in float64, so chunking costs no accuracy; in float32
    # this case loses more than a digit.
    x, A, zi, grad_y = make_inputs(1, 64, 16, False, radius=0.99, seed=2)
    y_ref = allpole_reference(x, A, zi)
    expected = [y_ref, *allpole_vjp_reference(grad_y, A, y_ref, zi)]
    x32, A32, zi32, grad_y32, y32 = (t.to(DEVICE, torch.float32) for t in (x, A, zi, grad_y, y_ref))

    def worst_error(variant):
        results = [
            cuda_triton.allpole(x32, A32, zi32, **variant),
            *cuda_triton.allpole_vjp(grad_y32, A32, y32, zi32, True, **variant),
        ]
        return max(
            ((r.cpu().double() - e).abs().max() / e.abs().max()).item()
            for r, e in zip(results, expected)
        )

    assert worst_error(chunks_of(16)) <= 4 * worst_error(SEQUENTIAL)


def designed_filter(kind):
    """``(a, time_invariant)``: the denominator of a real filter design, or a resonator."""
    import scipy.signal

    if kind == "cheby1":
        return scipy.signal.cheby1(6, 1, 0.1)[1]
    if kind == "butter":
        return scipy.signal.butter(8, 0.05)[1]
    # Two resonators at radius 0.9995, one pole pair each.
    a = np.array([1.0])
    for angle in (0.05, 0.3):
        a = np.convolve(a, [1, -2 * 0.9995 * math.cos(angle), 0.9995**2])
    return a


@requires_kernels
@pytest.mark.parametrize(
    "kind, time_invariant",
    [
        pytest.param("cheby1", False, id="cheby1-tv"),
        pytest.param("butter", True, id="butter-ti"),
        pytest.param("resonators", False, id="resonators-tv"),
    ],
)
def test_float32_real_filters_within_4x_of_the_plain_recursion(kind, time_invariant):
    # Every path's float32 error on real designs (low cutoffs, poles near the
    # unit circle) is within 4x of the plain float32 recursion's: the reference
    # loop run in float32. Errors against the float64 reference, relative to
    # its largest magnitude, for y and each gradient. grad_zi is four numbers:
    # the loop's error on them is a draw (on the resonators another rounding
    # order of the same loop is ten times worse), so its baseline is at least
    # the loop's error on grad_x, where it comes from, as in benchmarks/accuracy.py.
    B, T = 1, 128
    a = torch.from_numpy(designed_filter(kind)[1:])
    N = a.numel()
    generator = make_generator(40)
    # Every input rounded to float32 first: the float64 truth is for the same values
    # that the float32 runs see (on the resonators, rounding the coefficients alone
    # moves the result by more than the float32 loop's error).
    x, grad_y = (randn(B, T, dtype=torch.float32, generator=generator).double() for _ in range(2))
    zi = randn(B, N, dtype=torch.float32, generator=generator).double()
    A = a.float().double().expand(B, 1 if time_invariant else T, N).contiguous()
    y64 = allpole_reference(x, A, zi)
    expected = [y64, *allpole_vjp_reference(grad_y, A, y64, zi)]

    def errors(results):
        return [
            ((r.cpu().double() - e).abs().max() / e.abs().max()).item()
            for r, e in zip(results, expected, strict=True)
        ]

    def plain_errors(x, A, zi, grad_y):
        y64 = allpole_reference(x, A, zi)
        truth = [y64, *allpole_vjp_reference(grad_y, A, y64, zi)]
        x32, A32, zi32, grad_y32 = (t.float() for t in (x, A, zi, grad_y))
        y32 = allpole_reference(x32, A32, zi32)
        results = [y32, *allpole_vjp_reference(grad_y32, A32, y32, zi32)]
        return [((r.double() - e).abs().max() / e.abs().max()).item() for r, e in zip(results, truth)]

    # The loop's error is itself a draw: over 200 inputs, adding grad_y[t] first
    # or last in the backward gave the same error distribution but ratios from
    # 0.16 to 5 on single inputs. So the baseline is the worst of three draws:
    # the input, and the input with every value of x, zi and grad_y moved by one
    # float32 ulp (twice).
    draws = [plain_errors(x, A, zi, grad_y)]
    for seed in (1, 2):
        signs = make_generator(seed)

        def nudged(t):
            sign = torch.randint(0, 2, t.shape, generator=signs).double() * 2 - 1
            return (t.float().double() * (1 + 2.0**-23 * sign)).float().double()

        draws.append(plain_errors(nudged(x), A, nudged(zi), nudged(grad_y)))
    plain = [max(column) for column in zip(*draws)]
    plain[3] = max(plain[3], plain[1])
    x32, A32, zi32, grad_y32 = (t.float() for t in (x, A, zi, grad_y))
    args = [t.to(DEVICE) for t in (x32, A32, zi32, grad_y32)]
    for variant in (SEQUENTIAL, chunks_of(40)):
        y = cuda_triton.allpole(*args[:3], **variant)
        grads = cuda_triton.allpole_vjp(args[3], args[1], y, args[2], True, **variant)
        got = errors([y, *grads])
        ratios = [g / p for g, p in zip(got, plain)]
        assert max(ratios) <= 4, (variant, "y, grad_x, grad_A, grad_zi", got, plain)


@requires_kernels
@pytest.mark.parametrize("variant", [SEQUENTIAL, chunks_of(3)], ids=["seq", "chunked"])
def test_strided_inputs(variant):
    x, A, zi, grad_y = make_inputs(2, 8, 3, False)
    y_ref = allpole_reference(x, A, zi)
    expected = allpole_vjp_reference(grad_y, A, y_ref, zi)

    def strided(t):
        # Same values, every other element of a buffer twice the size.
        t = t.to(DEVICE)
        return torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)[..., 0]

    A_columns = A.to(DEVICE).transpose(1, 2).contiguous().transpose(1, 2)
    args = (strided(x), A_columns, strided(zi))
    assert_close(cuda_triton.allpole(*args, **variant), y_ref)
    grad_y, y_ref = strided(grad_y), strided(y_ref)
    grads = cuda_triton.allpole_vjp(grad_y, A_columns, y_ref, args[2], True, **variant)
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted)


@requires_kernels
def test_empty_time_axis():
    x = torch.zeros(2, 0, dtype=torch.float64, device=DEVICE)
    A = torch.zeros(2, 1, 3, dtype=torch.float64, device=DEVICE)
    zi = torch.randn(2, 3, dtype=torch.float64, device=DEVICE)
    assert cuda_triton.allpole(x, A, zi).shape == (2, 0)
    grad_x, grad_A, grad_zi = cuda_triton.allpole_vjp(x, A, x, zi, True)
    assert grad_x.shape == (2, 0)
    assert grad_A.shape == (2, 1, 3) and not grad_A.any()
    assert grad_zi.shape == (2, 3) and not grad_zi.any()


@requires_kernels
def test_complex_is_refused_before_launch():
    x = torch.zeros(1, 4, dtype=torch.complex128, device=DEVICE)
    A = torch.zeros(1, 4, 2, dtype=torch.complex128, device=DEVICE)
    zi = torch.zeros(1, 2, dtype=torch.complex128, device=DEVICE)
    with pytest.raises(NotImplementedError, match="complex"):
        cuda_triton.allpole(x, A, zi)
    with pytest.raises(NotImplementedError, match="complex"):
        cuda_triton.allpole_vjp(x, A, x, zi, True)


@pytest.mark.parametrize(
    "device, dtype, expected",
    [
        pytest.param("mps", None, "CUDA", id="mps"),
        pytest.param("xpu", torch.float32, "CUDA", id="xpu"),
        pytest.param(DEVICE.type, torch.complex64, "complex", id="complex"),
        pytest.param(DEVICE.type, torch.float16, "half precision in float32", id="float16"),
        pytest.param(DEVICE.type, torch.bfloat16, "half precision in float32", id="bfloat16"),
    ],
)
def test_why_unusable_explains(device, dtype, expected):
    reason = cuda_triton.why_unusable(torch.device(device), dtype)
    assert reason is not None
    assert expected in reason or "not installed" in reason
    if dtype is not None and not dtype.is_complex:
        assert "complex" not in reason


@requires_kernels
def test_half_precision_is_refused_before_launch():
    x = torch.zeros(1, 4, dtype=torch.float16, device=DEVICE)
    A = torch.zeros(1, 4, 2, dtype=torch.float16, device=DEVICE)
    zi = torch.zeros(1, 2, dtype=torch.float16, device=DEVICE)
    with pytest.raises(NotImplementedError, match="not torch.float16 .the public functions"):
        cuda_triton.allpole(x, A, zi)


@requires_kernels
@pytest.mark.parametrize(
    "N, variant, message",
    [
        pytest.param(65, chunks_of(2), "N can be at most 64, not 65", id="chunked"),
        pytest.param(4097, SEQUENTIAL, "N can be at most 4096, not 4097", id="sequential"),
    ],
)
def test_order_too_large_for_registers_is_refused_before_launch(N, variant, message):
    # The chunked kernels hold an N x N float64 transition matrix in registers,
    # and every kernel the last N values (tests/test_triton_compile.py checks
    # that the largest orders compile).
    x = torch.zeros(1, 3, dtype=torch.float32, device=DEVICE)
    A = torch.zeros(1, 1, N, dtype=torch.float32, device=DEVICE)
    zi = torch.zeros(1, N, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        cuda_triton.allpole(x, A, zi, **variant)
    with pytest.raises(ValueError, match=message):
        cuda_triton.allpole_vjp(x, A, x, zi, True, **variant)


@requires_kernels
def test_chunks_whose_scratch_outweighs_the_inputs_are_refused_before_launch():
    # Chunks of one step at N = 64: 8 B C N (N + 3) bytes of float64 states and
    # transition matrices, 65 MiB here, against 0.5 MiB of inputs.
    B, T, N = 1, 2000, 64
    assert cuda_triton.chunked_scratch_bytes(B, T, N) > 1 << 26
    x = torch.zeros(B, T, dtype=torch.float32, device=DEVICE)
    A = torch.zeros(B, T, N, dtype=torch.float32, device=DEVICE)
    zi = torch.zeros(B, N, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="use longer chunks"):
        cuda_triton.allpole(x, A, zi, chunk_size=1)
    with pytest.raises(ValueError, match="use longer chunks"):
        cuda_triton.allpole_vjp(x, A, x, zi, True, chunk_size=1)


@requires_kernels
def test_chunked_at_the_largest_order():
    # N = 64 is the chunked kernels' largest order; T < N, two chunks.
    run(1, 3, 64, True, torch.float64, **chunks_of(2))


def test_imports_and_explains_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)
    spec = importlib.util.spec_from_file_location("_without_triton", cuda_triton.__file__)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up while the class is being made.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    assert "not installed" in module.why_unusable(torch.device("cuda"))


@pytest.mark.parametrize(
    "B, T, N, expected",
    [
        pytest.param(1, 1 << 16, 8, "chunked", id="one_long_row"),
        pytest.param(1, 100, 8, "sequential", id="short"),
        pytest.param(1, 1 << 16, 64, "sequential", id="high_order"),
        pytest.param(1 << 20, 1 << 12, 8, "sequential", id="large_batch"),
    ],
)
def test_choose_triton_variant(B, T, N, expected):
    variant, L = cuda_triton.choose_triton_variant(B, T, N, DEVICE)
    assert variant == expected
    if variant == "sequential":
        assert L == T
    else:
        assert 64 <= L < T and L & (L - 1) == 0


@requires_kernels
@pytest.mark.parametrize("time_invariant", [False, True], ids=["tv", "ti"])
def test_chunked_float64_clustered_poles_as_accurate_as_sequential(monkeypatch, time_invariant):
    # Twelve poles clustered at modulus 0.998 to 0.999. Float64 inputs have no wider
    # chunk states, and the scan alone is 40 to 30,000 times less accurate than
    # the sequential kernel on such filters; the refinement launches bring it back
    # (see the module docstring).
    B, T, N, seed = 1, 96, 12, 100
    x, A, zi = filter_inputs(
        (B,), T, N, dtype=torch.float64, seed=seed, varying=not time_invariant,
        radius=0.999, k_low=0.9, k_high=0.999,
    )
    grad_y = randn(B, T, dtype=torch.float64, generator=make_generator(seed + 1))
    truth = long_double_results(x, A, zi, grad_y)
    assert np.abs(truth[0]).max() > 10 * x.abs().max().item(), "the poles should resonate"
    x, A, zi, grad_y = (t.to(DEVICE) for t in (x, A, zi, grad_y))

    def worst_error(variant):
        y = cuda_triton.allpole(x, A, zi, **variant)
        grads = cuda_triton.allpole_vjp(grad_y, A, y, zi, True, **variant)
        return worst_long_double_error([y, *grads], truth)

    bound = max(TOLERANCES[torch.float64], 4 * worst_error(SEQUENTIAL))
    assert worst_error(chunks_of(16)) <= bound
    # The case is hard enough to need the refinement.
    monkeypatch.setattr(cuda_triton, "_refines", lambda dtype, several_chunks: False)
    assert worst_error(chunks_of(16)) > bound


# ----------------------------------------------------------------------------
# The library on the Triton backend: the registered ops, their autograd, jvp
# and vmap rules, and torch.compile, with TORCHLPC_BACKEND=triton forcing these
# kernels (on CPU tensors under the interpreter when there is no GPU). The
# "chunked" rows force the chunked variant with chunks of 2, so that every call
# has several chunks and, for odd T, a partial last one.

LIBRARY_VARIANTS = [
    pytest.param("sequential", id="seq"),
    # The chunked variant's launches are several per call, each interpreted: the
    # library-level tests through it take minutes, so they run in CI's extended
    # step (the chunked kernels' own tests above run in every suite).
    pytest.param("chunked", id="chunked", marks=pytest.mark.extended),
]


@pytest.fixture(params=LIBRARY_VARIANTS)
def triton_backend(request, monkeypatch):
    """Routes every op to the Triton kernels, in the variant of the parameter."""
    monkeypatch.setenv("TORCHLPC_BACKEND", "triton")

    def choose(B, T, N, device):
        return ("chunked", 2) if request.param == "chunked" else ("sequential", T)

    monkeypatch.setattr(cuda_triton, "choose_triton_variant", choose)
    # The kernels' calls, so that a test can tell they ran.
    calls = []
    for name in ("allpole", "allpole_vjp"):
        kernel = getattr(cuda_triton, name)

        def counted(*args, _kernel=kernel, _name=name, **kwargs):
            calls.append(_name)
            return _kernel(*args, **kwargs)

        monkeypatch.setattr(cuda_triton, name, counted)
    return calls


def library_inputs(B, T, N, time_invariant, dtype=torch.float64, seed=20):
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=seed, varying=not time_invariant)
    return tuple(t.to(DEVICE) for t in (x, A, zi))


def recurrence_inputs(B, T, N, time_invariant, seed):
    """float64 CPU ``a, zi1`` for linear_recurrence, and upstream gradients of the three outputs."""
    generator = make_generator(seed)
    a = 0.8 * randn(B, 1 if time_invariant else T, dtype=torch.float64, generator=generator)
    zi1 = randn(B, dtype=torch.float64, generator=generator)
    shapes = ((B, T), (B, N), (B, T))
    upstream = [randn(*shape, dtype=torch.float64, generator=generator) for shape in shapes]
    return a, zi1, upstream


def library_function(x, A, zi, a, zi1):
    y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    return y, zf, linear_recurrence(a, y, zi1)


def reference_function(x, A, zi, a, zi1):
    """library_function by the reference loops, in float64 on the CPU."""
    x, A, zi, a, zi1 = (t.cpu().double() for t in (x, A, zi, a, zi1))
    y = allpole_reference(x, A, zi)
    zf = torch.cat([zi.flip(-1), y], dim=-1)[..., -A.shape[-1] :].flip(-1)
    return y, zf, linear_recurrence_reference(a, y, zi1)


@requires_kernels
@pytest.mark.parametrize("time_invariant", [False, True], ids=["tv", "ti"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_library_matches_reference(triton_backend, time_invariant, dtype):
    B, T, N = 2, 7, 3
    x, A, zi = library_inputs(B, T, N, time_invariant, dtype)
    a, zi1, upstream = recurrence_inputs(B, T, N, time_invariant, seed=21)
    inputs = [x, A, zi, a.to(DEVICE, dtype), zi1.to(DEVICE, dtype)]

    def results(function, inputs, upstream):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        outputs = function(*leaves)
        grads = torch.autograd.grad(outputs, leaves, upstream)
        return [o.detach() for o in outputs] + list(grads)

    got = results(library_function, inputs, [u.to(DEVICE, dtype) for u in upstream])
    expected = results(reference_function, [t.cpu().double() for t in inputs], upstream)
    assert triton_backend.count("allpole") >= 2 and "allpole_vjp" in triton_backend
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == dtype
        assert_close(g, e)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_computed_in_float32(triton_backend, dtype):
    x, A, zi = (t.to(dtype) for t in library_inputs(2, 7, 3, False, torch.float32))
    upstream = randn(2, 7, dtype=torch.float32, generator=make_generator(25)).to(DEVICE)

    def results(*inputs, upstream):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y = sample_wise_lpc(*leaves)
        return [y.detach(), *torch.autograd.grad(y, leaves, upstream)]

    got = results(x, A, zi, upstream=upstream.to(dtype))
    wide = results(x.float(), A.float(), zi.float(), upstream=upstream.to(dtype).float())
    assert "allpole_vjp" in triton_backend
    for g, w in zip(got, wide, strict=True):
        assert g.dtype == dtype
        assert torch.equal(g, w.to(dtype))


@requires_kernels
@pytest.mark.parametrize("time_invariant", [False, True], ids=["tv", "ti"])
def test_gradcheck_forward_ad_and_double_backward(triton_backend, time_invariant):
    # Forward AD (jvp), batched gradients (vmap over the backward), and the
    # backward of the backward, both reverse over reverse and forward over
    # reverse. fast_mode (random projections of the Jacobians) and one row,
    # since every finite difference is a kernel launch in the interpreter.
    x, A, zi = library_inputs(1, 5, 2, time_invariant)
    args = tuple(t.clone().requires_grad_() for t in (x, A, zi))

    def function(*args):
        return sample_wise_lpc(*args, return_zf=True)

    assert gradcheck(
        function, args, fast_mode=True, check_forward_ad=True, check_batched_grad=True
    )
    assert gradgradcheck(
        function, args, fast_mode=True, check_fwd_over_rev=True, check_batched_grad=True
    )
    assert "allpole_vjp" in triton_backend


@requires_kernels
def test_torch_func_transforms(triton_backend):
    V, B, T, N = 3, 1, 5, 2
    x, A, zi = library_inputs(V * B, T, N, False, seed=22)
    x, A, zi = (t.reshape(V, B, *t.shape[1:]) for t in (x, A, zi))

    def function(x, A, zi):
        return sample_wise_lpc(x, A, zi, return_zf=True)

    # vmap, with A shared by the vmapped examples.
    y, zf = torch.func.vmap(function, in_dims=(0, None, 0))(x, A[0], zi)
    for v in range(V):
        expected = allpole_reference(*(t.cpu() for t in (x[v], A[0], zi[v])))
        assert_close(y[v], expected)
        assert_close(zf[v], expected[:, -N:].flip(-1))

    # jvp (jacfwd) and vjp (jacrev) Jacobians in A agree (gradcheck above covers
    # x and zi), and the Hessian, forward over reverse, is the reverse-over-reverse one.
    args = (x[0], A[0], zi[0])
    forward = torch.func.jacfwd(function, argnums=1)(*args)
    reverse = torch.func.jacrev(function, argnums=1)(*args)
    for f, r in zip(forward, reverse, strict=True):
        assert_close(f, r.cpu())

    def loss(A):
        y, zf = function(x[0], A, zi[0])
        return (y**2).sum() + zf.sum() ** 2

    hessian = torch.func.hessian(loss)(A[0])
    assert hessian.shape == (*A[0].shape, *A[0].shape)
    assert_close(hessian, torch.func.jacrev(torch.func.jacrev(loss))(A[0]).cpu())


@requires_kernels
@pytest.mark.parametrize("time_invariant", [False, True], ids=["tv", "ti"])
def test_compile_fullgraph(triton_backend, time_invariant):
    torch._dynamo.reset()
    try:
        B, T, N = 2, 7, 3
        x, A, zi = library_inputs(B, T, N, time_invariant, seed=23)
        a, zi1, upstream = recurrence_inputs(B, T, N, time_invariant, seed=24)
        a, zi1, *upstream = (t.to(DEVICE) for t in (a, zi1, *upstream))

        def results(function):
            leaves = [t.clone().requires_grad_() for t in (x, A, zi, a, zi1)]
            outputs = function(*leaves)
            grads = torch.autograd.grad(outputs, leaves, upstream)
            return [o.detach() for o in outputs] + list(grads)

        eager = results(library_function)
        calls = len(triton_backend)
        # fullgraph=True raises on any graph break.
        compiled = results(torch.compile(library_function, fullgraph=True))
        assert len(triton_backend) > calls, "the compiled function should run the Triton kernels"
        for c, e in zip(compiled, eager, strict=True):
            assert_close(c, e.cpu())
    finally:
        torch._dynamo.reset()


@requires_kernels
def test_automatic_choice_takes_the_chunked_path_beyond_the_largest_order(monkeypatch):
    # As on a CUDA device: automatic choice picks Triton, and an order the Triton
    # kernels cannot hold runs on the chunked path instead of raising.
    from torchlpc import _dispatch

    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "select_backend", lambda device, dtype=None, forced=None: "triton")
    ran = []
    for name in ("triton", "chunked"):
        module = _dispatch._kernels(name)
        monkeypatch.setattr(module, "allpole", lambda *args, _run=module.allpole, _name=name: (
            ran.append(_name) or _run(*args)
        ))
    generator = make_generator(5)
    for N, expected in [(3, "triton"), (cuda_triton.MAX_ORDER + 1, "chunked")]:
        x = randn(1, 3, dtype=torch.float64, generator=generator)
        zi = randn(1, N, dtype=torch.float64, generator=generator)
        A = 1e-4 * randn(1, 3, N, dtype=torch.float64, generator=generator)
        ran.clear()
        y = sample_wise_lpc(x.to(DEVICE), A.to(DEVICE), zi.to(DEVICE))
        assert ran == [expected]
        assert_close(y, allpole_reference(x, A, zi))
