"""Property-based tests of every backend against the float64 reference loop.

Hypothesis draws the call: leading batch dims (none, one or two, sizes 0 to 3),
T (0, 1, shorter than N, up to a few hundred; in the long profile one draw in 50
is 2^15 or more, for the numba path split over time), N (1 to 10), the dtype (float32,
float64, complex64, complex128, float16, bfloat16), time-varying or time-invariant
A (a time dim of size 1, or a row expanded along time with stride 0), the
layout of every argument (contiguous, a strided slice, a transposed storage,
expanded over the batch), zi or none, return_zf, and the filter: poles from well
inside the unit circle to outside it, and signal levels from tiny to overflowing.
(PyTorch has no negative strides, so a "reversed view" is a flip, which copies.)

For each draw the same public call runs on numba, chunked (and, with real dtypes
and short T, the Triton kernels under TRITON_INTERPRET=1) and on the reference
backend (the plain loop over time) in the dtype itself; the truth is the same
computation in long double, by loops over time, on the inputs as rounded to the
dtype. Outputs, zf and the gradients with respect to x, A and zi are checked
sequence by sequence: a backend's error against the truth must be at most
``FACTOR`` times the reference loop's own error, plus ``ULPS`` units in the last
place (ill-conditioned filters amplify rounding in every implementation, and
the loop's error measures how much). The loop's error is the larger of two
samples: on the inputs, and on the inputs rounded the other way in about half
of their values (one sample alone is sometimes luckily small). A sequence on
which the loop is not finite is held to nothing; unstable filters (poles at
radius 1 and beyond, which grow until they overflow) are outside the accuracy
contract, and their bound is loosened by the square root of an ulp, which only
garbage exceeds; on every other one the
backend must be finite, so NaN and Inf never leak from one sequence to another
(checked on its own too, bit for bit).

Profiles: ``ci`` (the default; derandomised, about a minute) and ``long``
(``HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py``).
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads this when its kernels are defined (see tests/test_triton.py).
    os.environ.setdefault("TRITON_INTERPRET", "1")

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torchlpc  # noqa: E402
from torchlpc import _dispatch  # noqa: E402

# A backend's error may be this many times the reference loop's own error...
FACTOR = 4
# ...plus this many units in the last place of the output dtype.
ULPS = 8

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=150, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# Sequences of 2^15 samples and more, one draw in 50, in the long profile only
# (the reference loops over time take most of a minute on one such draw).
LONG_T = PROFILE.max_examples > 500
# The interpreter runs a few hundred time steps a second.
TRITON_EXAMPLES = max(PROFILE.max_examples // 4, 1)

TRITON_USABLE = _dispatch._why_unusable("triton", torch.device("cpu"), torch.float32) is None

REAL = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
COMPLEX = [torch.complex64, torch.complex128]
from conftest import WIDE  # noqa: E402


@contextlib.contextmanager
def backend(name):
    saved = os.environ.get(_dispatch.ENV_VARIABLE)
    os.environ[_dispatch.ENV_VARIABLE] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ[_dispatch.ENV_VARIABLE]
        else:
            os.environ[_dispatch.ENV_VARIABLE] = saved


# ----------------------------------------------------------------------------
# Drawing a call.


def _poly(roots):
    """Coefficients (..., N) of prod_k (1 - r_k z^-1), without the leading 1."""
    c = torch.ones(*roots.shape[:-1], 1, dtype=roots.dtype)
    for k in range(roots.shape[-1]):
        shifted = torch.cat([c, torch.zeros_like(c[..., :1])], dim=-1)
        c = shifted - roots[..., k : k + 1] * torch.cat([torch.zeros_like(c[..., :1]), c], dim=-1)
    return c[..., 1:]


def _coefficients(generator, batch, steps, N, radius, is_complex):
    """A (*batch, steps, N) in complex128 (real when not is_complex): poles whose
    radius and angle sweep slowly over time, at most ``radius`` from the origin."""

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None] if steps > 1 else torch.zeros(1, 1, dtype=torch.float64)
    if is_complex:
        start, end = uniform(*batch, 1, N), uniform(*batch, 1, N)
        modulus = radius * (0.3 + 0.7 * (start + (end - start) * t))
        angle = 2 * math.pi * (uniform(*batch, 1, N) + 0.1 * t)
        return _poly(torch.polar(modulus, angle))
    pairs = (N + 1) // 2
    start, end = uniform(*batch, 1, pairs), uniform(*batch, 1, pairs)
    modulus = radius * (0.3 + 0.7 * (start + (end - start) * t))
    angle = math.pi * (uniform(*batch, 1, pairs) + 0.05 * t)
    poles = torch.polar(modulus, angle)
    roots = torch.cat([poles, poles.conj()], dim=-1)[..., :N]
    if N % 2:
        roots[..., N // 2] = modulus[..., -1].to(roots.dtype) * torch.where(
            uniform(*batch, 1) < 0.5, -1.0, 1.0
        ).to(roots.dtype)
    return _poly(roots).real


@st.composite
def calls(draw, dtypes=REAL + COMPLEX, max_T=300, min_batch=0):
    dtype = draw(st.sampled_from(dtypes))
    batch = tuple(draw(st.lists(st.integers(min_batch, 3), min_size=0 if min_batch == 0 else 1, max_size=2)))
    N = draw(st.integers(1, 10))
    T = draw(st.one_of(st.integers(0, 2 * N), st.integers(0, max_T)))
    if LONG_T and draw(st.integers(0, 49)) == 0:
        # Long enough for the numba time-invariant path split over threads.
        T = draw(st.integers(1 << 15, (1 << 15) + 100))
    kind = draw(st.sampled_from(["varying", "invariant", "expanded"]))
    radius = draw(
        st.one_of(
            st.floats(0.05, 0.95),
            st.floats(0.95, 0.9995),
            st.floats(1.0, 1.6),  # unstable: growing, overflowing in long runs
        )
    )
    level = 10.0 ** draw(st.one_of(st.floats(-3, 3), st.floats(-30, 30)))
    return dict(
        dtype=dtype,
        batch=batch,
        T=T,
        N=N,
        kind=kind,
        radius=radius,
        level=level,
        zi=draw(st.booleans()),
        return_zf=draw(st.booleans()),
        layouts={name: draw(st.sampled_from(["contiguous", "strided", "transposed", "expanded"])) for name in ("x", "A", "zi")},
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _laid_out(value, layout):
    """``value`` with the same values in another layout."""
    if layout == "strided" and value.dim() >= 1:
        wider = torch.zeros(*value.shape[:-1], 2 * value.shape[-1], dtype=value.dtype)
        wider[..., ::2] = value
        return wider[..., ::2]
    if layout == "transposed" and value.dim() >= 2:
        return value.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "expanded" and value.dim() >= 2 and value.shape[0] > 1:
        # Expanded over the first batch dim: every batch element the same.
        return value[:1].clone().expand(value.shape)
    return value.clone(memory_format=torch.contiguous_format)


def _inputs(call):
    """x, A, zi (or None), grad_y, grad_zf as float64/complex128 leaves' values, and
    the layouts to pass them in."""
    generator = torch.Generator().manual_seed(call["seed"])
    is_complex = call["dtype"].is_complex
    wide = WIDE[call["dtype"]]
    batch, T, N = call["batch"], call["T"], call["N"]

    def randn(*shape):
        if is_complex:
            return torch.randn(*shape, generator=generator, dtype=torch.complex128)
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x = call["level"] * randn(*batch, T)
    steps = T if call["kind"] == "varying" else 1
    A = _coefficients(generator, batch, max(steps, 1), N, call["radius"], is_complex).to(wide)
    if call["kind"] == "varying" and T == 0:
        A = A[..., :0, :]
    zi = call["level"] * randn(*batch, N) if call["zi"] else None
    grad_y = randn(*batch, T)
    grad_zf = randn(*batch, N)
    return x, A, zi, grad_y, grad_zf


def _run(call, x, A, zi, grad_y, grad_zf, dtype):
    """The public call on inputs in ``dtype`` and the given layouts: outputs (y, zf
    or None) and gradients (x, A, zi or None), all detached."""
    layouts = call["layouts"]
    x = _laid_out(x.to(dtype), layouts["x"]).requires_grad_()
    if call["kind"] == "expanded":
        row = _laid_out(A.to(dtype), layouts["A"]).requires_grad_()
        A_in = row.expand(*row.shape[:-2], call["T"], row.shape[-1])
        A_leaf = row
    else:
        A_leaf = _laid_out(A.to(dtype), layouts["A"]).requires_grad_()
        A_in = A_leaf
    zi_leaf = None if zi is None else _laid_out(zi.to(dtype), layouts["zi"]).requires_grad_()
    result = torchlpc.sample_wise_lpc(x, A_in, zi_leaf, return_zf=call["return_zf"])
    y, zf = result if call["return_zf"] else (result, None)
    loss = (y * grad_y.to(dtype).conj()).real.sum()
    if zf is not None:
        loss = loss + (zf * grad_zf.to(dtype).conj()).real.sum()
    leaves = [x, A_leaf] + ([] if zi_leaf is None else [zi_leaf])
    grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
    grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]
    named = {"y": y, "zf": zf, "grad_x": grads[0], "grad_A": grads[1]}
    if zi_leaf is not None:
        named["grad_zi"] = grads[2]
    return {k: None if v is None else v.detach() for k, v in named.items()}


def _long_double_truth(call, x, A, zi, grad_y, grad_zf):
    """What :func:`_run` returns, computed in long double (complex: clongdouble) by
    loops over time, from the inputs as rounded to the dtype and laid out. On x86-64
    long double carries 11 more bits than float64, enough to measure the float64
    loop's own error."""
    dtype, layouts, batch, N = call["dtype"], call["layouts"], call["batch"], call["N"]
    T = call["T"]
    B = math.prod(batch)
    exact = np.clongdouble if dtype.is_complex else np.longdouble

    def prepared(value, name):
        value = _laid_out(value.to(dtype), layouts[name]).to(WIDE[dtype])
        return value.resolve_conj().numpy().astype(exact)

    invariant = call["kind"] != "varying"
    x_ = prepared(x, "x").reshape(B, T)
    A_ = prepared(A, "A").reshape(B, 1 if invariant else T, N)
    zi_ = prepared(zi, "zi").reshape(B, N) if zi is not None else np.zeros((B, N), dtype=exact)
    grad_y_ = grad_y.to(WIDE[dtype]).to(dtype).to(WIDE[dtype]).numpy().astype(exact).reshape(B, T)
    grad_zf_ = grad_zf.to(WIDE[dtype]).to(dtype).to(WIDE[dtype]).numpy().astype(exact).reshape(B, N)

    def row(t):
        return A_[:, 0 if invariant else t]

    padded = np.concatenate([zi_[:, ::-1], np.zeros_like(x_)], axis=1)
    for t in range(T):
        padded[:, N + t] = x_[:, t] - (row(t) * padded[:, t : N + t][:, ::-1]).sum(-1)
    y = padded[:, N:]
    zf = padded[:, T:][:, ::-1]  # zf[k] = y[T-1-k], reaching into zi
    # Cotangent of the padded output: grad_y, plus grad_zf where zf reads.
    pending = np.zeros((B, N + T), dtype=exact)
    pending[:, N:] = grad_y_
    if call["return_zf"]:
        pending[:, T:] += grad_zf_[:, ::-1]
    for t in range(T - 1, -1, -1):
        pending[:, t : N + t] -= np.conj(row(t)[:, ::-1]) * pending[:, N + t, None]
    grad_x = pending[:, N:]
    grad_A = np.stack(
        [-grad_x * np.conj(padded[:, N - i : N - i + T]) for i in range(1, N + 1)], axis=-1
    )
    if invariant:
        grad_A = grad_A.sum(1, keepdims=True)
    grad_zi = pending[:, :N][:, ::-1]

    def back(value, shape):
        return torch.from_numpy(np.ascontiguousarray(value.astype(np.complex128 if dtype.is_complex else np.float64))).reshape(shape)

    A_shape = (*batch, 1 if invariant else T, N)
    named = {
        "y": back(y, (*batch, T)),
        "zf": back(zf, (*batch, N)) if call["return_zf"] else None,
        "grad_x": back(grad_x, (*batch, T)),
        "grad_A": back(grad_A, A_shape),
    }
    if zi is not None:
        named["grad_zi"] = back(grad_zi, (*batch, N))
    return named


def _rows(tensor, batch):
    """(B, rest) view: one row per sequence."""
    B = math.prod(batch)
    return tensor.reshape(B, -1) if B else tensor.reshape(0, 0)


def _row_errors(got, truth, batch):
    """Per sequence: max |got - truth| / max |truth| in double precision."""
    got = _rows(got.to(truth.dtype), batch)
    truth = _rows(truth, batch)
    if truth.shape[1] == 0:
        return torch.zeros(truth.shape[0], dtype=torch.float64)
    scale = truth.abs().amax(1)
    difference = (got - truth).abs().amax(1)
    return torch.where(scale > 0, difference / torch.where(scale > 0, scale, 1), difference)


def _ulp(dtype):
    real = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)
    return torch.finfo(real).eps


def _check_against_reference(call, results, truth, loop_errors, name):
    """Every sequence on which the loop in the dtype is finite: the backend's
    result is within FACTOR x the loop's error + ULPS ulps of the truth."""
    batch = call["batch"]
    for key, expected in truth.items():
        got = results[key]
        if expected is None:
            assert got is None, f"{name}: {key} returned where none was expected"
            continue
        assert got.shape == expected.shape and got.dtype == call["dtype"], (
            f"{name}: {key} {tuple(got.shape)} {got.dtype}, expected {tuple(expected.shape)} {call['dtype']}"
        )
        loop_error = loop_errors[key]
        backend_error = _row_errors(got, expected, batch)
        bound = FACTOR * loop_error + ULPS * _ulp(call["dtype"])
        if call["radius"] >= 1:
            # Unstable filters are outside the accuracy contract (issue 15 bounds
            # stable ones): there only garbage fails.
            bound = bound + math.sqrt(_ulp(call["dtype"]))
        truth_finite = torch.isfinite(_rows(expected, batch)).all(1)
        held = torch.isfinite(loop_error) & truth_finite
        bad = held & ~(backend_error <= bound)
        assert not bad.any(), (
            f"{name}: {key}: sequences {bad.nonzero().flatten().tolist()} off by "
            f"{backend_error[bad].tolist()}, bound {bound[bad].tolist()} "
            f"(reference loop in {call['dtype']}: {loop_error[bad].tolist()})"
        )


def _check_call(call, backends):
    x, A, zi, grad_y, grad_zf = _inputs(call)
    truth = _long_double_truth(call, x, A, zi, grad_y, grad_zf)
    loop_errors = _loop_errors(call, x, A, zi, grad_y, grad_zf, truth)
    # One sample of the loop's error can be luckily small; a second rounding of
    # the same inputs (each value moved by about an ulp) gives a second sample.
    nudged = _nudged(call, x, A, zi)
    second = _loop_errors(call, *nudged, grad_y, grad_zf, _long_double_truth(call, *nudged, grad_y, grad_zf))
    for key, errors in second.items():
        loop_errors[key] = torch.maximum(loop_errors[key], errors)
    for name in backends:
        with backend(name):
            results = _run(call, x, A, zi, grad_y, grad_zf, call["dtype"])
        _check_against_reference(call, results, truth, loop_errors, name)


def _nudged(call, x, A, zi):
    generator = torch.Generator().manual_seed(call["seed"] + 1)
    ulp = _ulp(call["dtype"])

    def nudge(value):
        if value is None:
            return None
        sign = torch.randint(0, 2, value.shape, generator=generator, dtype=torch.int8) * 2 - 1
        return value * (1 + ulp * sign.to(torch.float64))

    return nudge(x), nudge(A), nudge(zi)


# zf and grad_zi are N numbers each: the loop's error on them alone is a draw (on
# two resonators at radius 0.9995 one float32 rounding order of the backward gave
# grad_zi ten times the error of another, both plain loops). Their baseline is at
# least the loop's error where they come from, as in the accuracy suite
# (benchmarks/accuracy.py): the last WINDOW samples of y, the first of grad_x.
WINDOW = 256


def _loop_errors(call, x, A, zi, grad_y, grad_zf, truth):
    """Per output, per sequence: the reference loop's error in the dtype itself."""
    with backend("reference"):
        loop = _run(call, x, A, zi, grad_y, grad_zf, call["dtype"])
    batch = call["batch"]
    errors = {
        key: _row_errors(loop[key], expected, batch)
        for key, expected in truth.items()
        if expected is not None
    }
    W = max(WINDOW, call["N"])
    regions = {"zf": ("y", slice(-W, None)), "grad_zi": ("grad_x", slice(None, W))}
    for key, (source, window) in regions.items():
        if key in errors and truth[source].shape[-1] > 0:
            region = _row_errors(loop[source][..., window], truth[source][..., window], batch)
            errors[key] = torch.maximum(errors[key], region)
    if "grad_zi" in errors:
        errors["grad_zi"] = torch.maximum(errors["grad_zi"], _grad_zi_rounding(call, A, truth))
    bound = _y_rounding(call, x, A, zi, truth)
    for key in ("y", "zf"):
        if key in errors:
            scale = _rows(truth[key], batch).abs().amax(1) if truth[key].numel() else bound
            relative = torch.where(scale > 0, bound / torch.where(scale > 0, scale, 1), bound)
            errors[key] = torch.maximum(errors[key], relative)
    return errors


def _y_rounding(call, x, A, zi, truth):
    """Per sequence: the rounding bound of the sums that make y (absolute; y and
    zf, which is y's last values, take it relative to their own largest value).

    ``y[t] = x[t] - sum_i A[t, i-1] y[t-i]`` sums N + 1 terms; in any order its
    rounding error is at most about (N + 1) u (|x[t]| + sum_i |A[t, i-1]| |y[t-i]|).
    Where the terms cancel (T < N, the state's terms dominating) that is far above
    an ulp of y and the loop's own error is a lucky draw below it (the Triton
    kernel sums the row as a tree: 5.5 times the loop's error, 8 ulps of y).
    """
    batch, T, N = call["batch"], call["T"], call["N"]
    B = math.prod(batch)
    y = _rows(truth["y"], batch).abs().to(torch.float64)
    if B == 0 or T == 0:
        return torch.zeros(B, dtype=torch.float64)
    state = torch.zeros(B, N, dtype=torch.float64) if zi is None else _rows(zi.expand(*batch, N), batch)
    padded = torch.cat([state.abs().to(torch.float64).flip(-1), y], dim=1)
    coefficients = A.expand(*batch, *A.shape[-2:]).reshape(B, -1, N).abs().to(torch.float64)
    terms = _rows(x, batch).abs().to(torch.float64)
    for i in range(1, N + 1):
        terms = terms + coefficients[:, :, i - 1] * padded[:, N - i : N - i + T]
    return _ulp(call["dtype"]) / 2 * (N + 1) * terms.amax(1)


def _grad_zi_rounding(call, A, truth):
    """Per sequence: the rounding bound of the sum that makes grad_zi, relative to grad_zi.

    ``grad_zi[k] = -sum_t conj(A[t, t+k]) grad_x[t]`` over the first n = N - k
    steps. Summed in any order, its rounding error is at most about n u sum |terms|
    (u the unit roundoff); where the terms cancel that is far above an ulp of
    grad_zi, and the loop's own error is a lucky draw below it (2 ulps of grad_zi,
    on a case where the Triton kernels and the chunked path, summing in another
    order, erred by 22: 5 ulps of sum |terms|, within the bound of 7).
    """
    batch, N = call["batch"], call["N"]
    B = math.prod(batch)
    grad_x = _rows(truth["grad_x"], batch).abs()
    grad_zi = _rows(truth["grad_zi"], batch).abs()
    if B == 0 or grad_x.shape[1] == 0:
        return torch.zeros(B, dtype=torch.float64)
    coefficients = A.expand(*batch, *A.shape[-2:]).reshape(B, -1, N).abs().to(torch.float64)
    sums = torch.zeros(B, N, dtype=torch.float64)
    for k in range(N):
        steps = min(N - k, grad_x.shape[1])
        rows = torch.arange(steps) if coefficients.shape[1] > 1 else torch.zeros(steps, dtype=torch.long)
        sums[:, k] = steps * (coefficients[:, rows, torch.arange(steps) + k] * grad_x[:, :steps]).sum(1)
    scale = grad_zi.amax(1)
    terms = _ulp(call["dtype"]) / 2 * sums.amax(1)
    return torch.where(scale > 0, terms / torch.where(scale > 0, scale, 1), terms)


@settings(PROFILE)
@given(calls())
def test_cpu_backends_against_the_reference(call):
    _check_call(call, ["numba", "chunked"])


@pytest.mark.skipif(not TRITON_USABLE and not os.environ.get("CI"), reason="Triton cannot run here")
@settings(PROFILE, max_examples=TRITON_EXAMPLES)
@given(calls(dtypes=[torch.float32, torch.float64], max_T=40))
def test_triton_against_the_reference(call):
    _check_call(call, ["triton"])


@settings(PROFILE)
@given(
    calls(dtypes=[torch.float32, torch.float64, torch.complex64], min_batch=2),
    st.sampled_from(["x", "A", "zi"]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.sampled_from(["numba", "chunked"]),
)
def test_non_finite_values_stay_in_their_sequence(call, where, value, name):
    """A NaN or Inf in one sequence's x, A or zi leaves every other sequence's
    output and gradients as they are without it."""
    call = dict(call, zi=True, layouts={k: "contiguous" for k in ("x", "A", "zi")})
    if call["T"] == 0:
        call["T"] = 1
    x, A, zi, grad_y, grad_zf = _inputs(call)
    with backend(name):
        clean = _run(call, x, A, zi, grad_y, grad_zf, call["dtype"])
        poisoned = {"x": x.clone(), "A": A.clone(), "zi": zi.clone()}
        flat = poisoned[where].view(math.prod(call["batch"]), -1)
        flat[0, flat.shape[1] // 2] = value
        results = _run(call, poisoned["x"], poisoned["A"], poisoned["zi"], grad_y, grad_zf, call["dtype"])
    for key, expected in clean.items():
        if expected is None:
            continue
        got = _rows(results[key], call["batch"])[1:]
        expected = _rows(expected, call["batch"])[1:]
        torch.testing.assert_close(
            got, expected, rtol=0, atol=0, equal_nan=True,
            msg=lambda m: f"{name}: {key} of other sequences changed by a {value} in {where}: {m}",
        )
