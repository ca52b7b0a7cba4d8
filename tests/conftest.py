"""Shared fixtures and helpers for the torchlpc tests.

Five things live here:

* ``TORCHLPC_CPU_COMPILE=wait`` for the session (unless set): automatic dispatch
  would otherwise run a call on the chunked path while its numba kernels
  compile in the background, so that which kernel a test exercises would depend
  on timing. tests/test_cpu_compile.py tests the background mode itself.

* NaN-poisoning: for the whole session, ``torch.empty``, ``torch.empty_like`` and
  ``Tensor.new_empty`` hand out floating point and complex tensors filled with
  NaN instead of whatever the allocator returned, and so do the CPU kernels'
  cache of output memory (whose reused memory holds old outputs), so a kernel
  that leaves part of its output unwritten fails loudly instead of passing on
  leftover values.
* The ``backend`` fixture, which runs a test once per CPU backend by setting
  ``TORCHLPC_BACKEND`` (read on every call).
* Random inputs: stable filter coefficients built from reflection coefficients,
  a dtype-keyed tolerance table, and a norm-wise error measure.
* A ground truth in long double for real filters, to measure float64 errors on
  ill-conditioned ones.

Test modules import the helpers with ``from conftest import ...``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TORCHLPC_CPU_COMPILE", "wait")

from torchlpc.kernels import _buffers

# ----------------------------------------------------------------------------
# NaN-poisoning of uninitialised memory.

_ORIGINAL_EMPTY = torch.empty
_ORIGINAL_EMPTY_LIKE = torch.empty_like
_ORIGINAL_NEW_EMPTY = torch.Tensor.new_empty
_ORIGINAL_NEW_OUTPUT = _buffers.new_output


def _poison(tensor):
    # Dynamo inlines this wrapper when a compiled function allocates; poisoning
    # there would put a fill into the graph, so compiled code is left alone.
    if torch.compiler.is_compiling():
        return tensor
    if tensor.is_floating_point() or tensor.is_complex():
        with torch.no_grad():
            tensor.fill_(float("nan"))
    return tensor


def _poisoned_empty(*args, **kwargs):
    return _poison(_ORIGINAL_EMPTY(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_ORIGINAL_EMPTY_LIKE(*args, **kwargs))


def _poisoned_new_empty(self, *args, **kwargs):
    return _poison(_ORIGINAL_NEW_EMPTY(self, *args, **kwargs))


def _poisoned_new_output(*args, **kwargs):
    return _poison(_ORIGINAL_NEW_OUTPUT(*args, **kwargs))


@pytest.fixture(autouse=True, scope="session")
def poison_uninitialised_memory():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "empty", _poisoned_empty)
        patch.setattr(torch, "empty_like", _poisoned_empty_like)
        patch.setattr(torch.Tensor, "new_empty", _poisoned_new_empty)
        patch.setattr(_buffers, "new_output", _poisoned_new_output)
        yield
    # Torch is shared with everything else in the process (plugins, atexit hooks).
    assert torch.empty is _ORIGINAL_EMPTY and torch.empty_like is _ORIGINAL_EMPTY_LIKE
    assert torch.Tensor.new_empty is _ORIGINAL_NEW_EMPTY


# ----------------------------------------------------------------------------
# Backends.

CPU_BACKENDS = ["numba", "chunked", "reference"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request, monkeypatch):
    """Forces one backend for the duration of a test and returns its name."""
    monkeypatch.setenv("TORCHLPC_BACKEND", request.param)
    return request.param


# ----------------------------------------------------------------------------
# Tolerances and error measure.

# Largest error allowed, as a fraction of the largest magnitude of the reference
# (computed in float64 or complex128 from the same inputs). A norm-wise bound:
# a recursive filter's small outputs are differences of large ones and carry
# their absolute error, so element-wise relative bounds would be meaningless.
# float32: about 100 units in the last place for filters of order <= 8 with
# poles inside radius 0.9 over a few hundred samples. Order 16 is at the edge,
# and inherently so: on 16 rows of 255 samples the float32 reference loop
# itself is off by 1e-5 to 5e-5 (numba and chunked alike), so single-precision
# tests at that order keep to a couple of rows and about a hundred samples.
TOLERANCES = {
    torch.float32: 1e-5,
    torch.complex64: 1e-5,
    torch.float64: 1e-12,
    torch.complex128: 1e-12,
}

WIDE = {
    torch.float16: torch.float64,
    torch.bfloat16: torch.float64,
    torch.float32: torch.float64,
    torch.float64: torch.float64,
    torch.complex64: torch.complex128,
    torch.complex128: torch.complex128,
}

DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.complex64, id="complex64"),
    pytest.param(torch.complex128, id="complex128"),
]


def relative_error(got, expected):
    """``max |got - expected| / max |expected|`` computed in double precision.

    NaN anywhere in ``got`` or ``expected`` gives NaN, which fails every bound.
    """
    assert got.shape == expected.shape, (got.shape, expected.shape)
    expected = expected.to(WIDE[expected.dtype])
    got = got.to(expected.dtype)
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    difference = (got - expected).abs().max().item()
    if math.isnan(scale) or math.isnan(difference):
        return math.nan
    return difference / scale if scale > 0 else difference


def assert_close(got, expected, dtype, name=""):
    """``got`` (in ``dtype``) within ``TOLERANCES[dtype]`` of ``expected``, norm-wise."""
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    error = relative_error(got, expected)
    tolerance = TOLERANCES[dtype]
    assert error <= tolerance, f"{name}: relative error {error:.3g} > {tolerance:.1g}"


# ----------------------------------------------------------------------------
# Random inputs.


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype, generator):
    """Standard normal samples of ``dtype`` (complex: unit variance overall)."""
    if dtype.is_complex:
        real = torch.randn((*shape, 2), generator=generator, dtype=torch.float64) / math.sqrt(2)
        return torch.view_as_complex(real).to(dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def step_up(k):
    """LPC coefficients ``(*, N)`` from reflection coefficients ``(*, N)``.

    Levinson's step-up recursion,
    ``a_m[i] = a_{m-1}[i] + k_m conj(a_{m-1}[m-i])``, ``a_m[m] = k_m``, for the
    denominator ``1 + sum_i a[i-1] z^-i``; every zero is inside the unit circle
    when every ``|k_m| < 1``.
    """
    N = k.shape[-1]
    a = k.new_zeros(k.shape)
    for m in range(1, N + 1):
        previous = a[..., : m - 1].clone()
        a[..., : m - 1] = previous + k[..., m - 1 : m] * previous.flip(-1).conj()
        a[..., m - 1] = k[..., m - 1]
    return a


def stable_coefficients(
    batch, T, N, *, dtype, generator, radius=0.9, k_low=0.0, k_high=0.95, varying=True
):
    """Coefficients ``(*batch, T, N)`` (``T = 1`` when not ``varying``) of a stable filter.

    Every time step's filter has its poles inside ``radius``: reflection
    coefficients with modulus in ``[k_low, k_high)`` give a polynomial with zeros
    inside the unit circle, and ``a[i-1] * radius**i`` scales them into the disc
    of that radius. Reflection coefficients near 1 in modulus put every pole near
    the circle of radius ``radius`` (their product has modulus
    ``|k_N| radius**N``). Over time the moduli drift slowly along random
    sinusoids, with a little per-sample jitter, as LPC coefficients of speech do.
    """
    batch = tuple(batch)
    steps = T if varying else 1
    real = torch.float64

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, dtype=real)

    t = torch.arange(steps, dtype=real)[:, None]
    phase = 2 * math.pi * uniform(*batch, 1, N)
    speed = 2 * math.pi / (20 + 200 * uniform(*batch, 1, N))
    jitter = 0.1 * uniform(*batch, steps, N)
    fraction = (0.45 + 0.45 * torch.sin(speed * t + phase) + jitter).clamp(0, 1)
    modulus = k_low + (k_high - k_low) * fraction
    if dtype.is_complex:
        angle = 2 * math.pi * uniform(*batch, 1, N) + 0.3 * torch.sin(speed * t / 3 + phase)
        k = torch.polar(modulus, angle)
    else:
        sign = torch.where(uniform(*batch, 1, N) < 0.5, -1.0, 1.0).to(real)
        k = sign * modulus
    scale = radius ** torch.arange(1, N + 1, dtype=real)
    return (step_up(k) * scale).to(dtype)


def filter_inputs(batch, T, N, *, dtype, seed, varying=True, **coefficients):
    """``(x, A, zi)`` for a stable filter: signal and state standard normal."""
    generator = make_generator(seed)
    batch = tuple(batch)
    x = randn(*batch, T, dtype=dtype, generator=generator)
    A = stable_coefficients(
        batch, T, N, dtype=dtype, generator=generator, varying=varying, **coefficients
    )
    zi = randn(*batch, N, dtype=dtype, generator=generator)
    return x, A, zi


def poles(A):
    """Roots of ``z^N + sum_i A[i-1] z^(N-i)`` for every row of ``A (*, N)``, as numpy."""
    rows = A.detach().reshape(-1, A.shape[-1]).to(WIDE[A.dtype]).numpy()
    return [np.roots(np.concatenate([[1.0], row])) for row in rows]


# ----------------------------------------------------------------------------
# Ground truth in extended precision, for float64 on ill-conditioned filters.


def long_double_results(x, A, zi, grad_y):
    """y, grad_x, grad_A, grad_zi of a real filter in long double, by loops over time.

    Takes CPU tensors. On x86-64 numpy's long double has a 64-bit mantissa, 11
    bits more than float64: enough to measure float64 errors on filters whose
    clustered poles near the unit circle cost float64 loops several digits.
    """
    x, A, zi, grad_y = (t.numpy().astype(np.longdouble) for t in (x, A, zi, grad_y))
    B, T = x.shape
    N = A.shape[-1]

    def row(t):
        return A[:, t if A.shape[1] > 1 else 0]

    # padded[:, N + t] is y[t]; padded[:, :N] the initial state, oldest first.
    padded = np.concatenate([zi[:, ::-1], np.zeros_like(x)], axis=1)
    for t in range(T):
        padded[:, N + t] = x[:, t] - (row(t) * padded[:, t : N + t][:, ::-1]).sum(-1)
    # pending[:, N + t] is what has been pushed onto time t, t = -N ... T - 1.
    pending = np.zeros((B, N + T), dtype=np.longdouble)
    for t in range(T - 1, -1, -1):
        pending[:, N + t] += grad_y[:, t]
        pending[:, t : N + t] -= row(t)[:, ::-1] * pending[:, N + t, None]
    grad_x = pending[:, N:]
    grad_A = np.stack([-grad_x * padded[:, N - i : N - i + T] for i in range(1, N + 1)], axis=-1)
    if A.shape[1] == 1:
        grad_A = grad_A.sum(1, keepdims=True)
    return padded[:, N:], grad_x, grad_A, pending[:, :N][:, ::-1]


def worst_long_double_error(results, truth):
    """The worst, over y and the three gradients, of ``max |error| / max |truth|``."""
    return max(
        float(np.abs(r.detach().cpu().numpy().astype(np.longdouble) - t).max() / np.abs(t).max())
        for r, t in zip(results, truth, strict=True)
    )

