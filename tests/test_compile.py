"""torch.compile, the torch.library registrations, and a quiet, lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TOLERANCES, filter_inputs, make_generator, randn, relative_error
from torchlpc import linear_recurrence, sample_wise_lpc

# ----------------------------------------------------------------------------
# torch.compile.


@pytest.fixture
def fresh_dynamo():
    """Each compile test starts from, and leaves behind, an empty Dynamo cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def filter_both(x, A, zi, a, zi1):
    y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    smoothed = linear_recurrence(a, y, zi1)
    return y, zf, smoothed


@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
)
def test_compiled_matches_eager(fresh_dynamo, varying, dtype):
    B, T, N = 2, 40, 3
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=0, varying=varying)
    generator = make_generator(1)
    a = 0.5 * torch.rand(B, T if varying else 1, generator=generator, dtype=torch.float64).to(dtype)
    zi1 = randn(B, dtype=dtype, generator=generator)
    upstream = [randn(B, T, dtype=dtype, generator=generator), randn(B, N, dtype=dtype, generator=generator)]
    upstream.append(randn(B, T, dtype=dtype, generator=generator))

    def run(function):
        leaves = [t.clone().requires_grad_() for t in (x, A, zi, a, zi1)]
        outputs = function(*leaves)
        grads = torch.autograd.grad(outputs, leaves, upstream)
        return [o.detach() for o in outputs] + list(grads)

    compiled = torch.compile(filter_both, fullgraph=True)
    for got, expected in zip(run(compiled), run(filter_both), strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        # The same kernels run either way; only the glue (cat, flip) is compiled.
        assert relative_error(got, expected) <= TOLERANCES[dtype]


# Sizes from module globals: with dynamic=True Dynamo traces them as symbolic ints
# (sizes held in a closure stay constants).
DYNAMIC_B, DYNAMIC_T, DYNAMIC_N = 3, 20, 2


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
)
def test_compiled_with_dynamic_shapes_and_expanded_coefficients(fresh_dynamo, dtype):
    """Dynamic shapes, with coefficients expanded to sizes from globals, trace with no graph break.

    The shape checks once read ``A.shape[-2] not in (T, 1)``, which Dynamo
    cannot evaluate when both sides are symbolic: it traced into the ValueError.
    """
    x, A, zi = filter_inputs((DYNAMIC_B,), DYNAMIC_T, DYNAMIC_N, dtype=dtype, seed=5, varying=False)
    a = (0.5 * torch.rand(DYNAMIC_B, 1, generator=make_generator(6))).to(dtype)

    def function(x, A, zi, a):
        y = sample_wise_lpc(x, A.expand(DYNAMIC_B, DYNAMIC_T, DYNAMIC_N), zi)
        return y, linear_recurrence(a.expand(DYNAMIC_B, DYNAMIC_T), y)

    def run(function):
        leaves = [t.clone().requires_grad_() for t in (x, A, zi, a)]
        outputs = function(*leaves)
        grads = torch.autograd.grad(outputs, leaves, [torch.ones_like(o) for o in outputs])
        return [o.detach() for o in outputs] + list(grads)

    compiled = torch.compile(function, fullgraph=True, dynamic=True)
    for got, expected in zip(run(compiled), run(function), strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert relative_error(got, expected) <= TOLERANCES[dtype]


def test_compiled_without_grad(fresh_dynamo):
    x, A, zi = filter_inputs((3,), 16, 2, dtype=torch.float32, seed=2)
    compiled = torch.compile(lambda x, A, zi: sample_wise_lpc(x, A, zi, return_zf=True), fullgraph=True)
    with torch.no_grad():
        got = compiled(x, A, zi)
    expected = sample_wise_lpc(x, A, zi, return_zf=True)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


# ----------------------------------------------------------------------------
# opcheck: schema, fake kernels, autograd registration, AOT dispatch.

OPCHECK_DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.complex64, id="complex64"),
    pytest.param(torch.complex128, id="complex128"),
]


def op_inputs(varying, dtype, requires_grad):
    x, A, zi = filter_inputs((2,), 9, 3, dtype=dtype, seed=3, varying=varying)
    return [t.requires_grad_(requires_grad) for t in (x, A, zi)]


@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "no-grad"])
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES)
def test_opcheck_allpole(dtype, varying, requires_grad):
    torch.library.opcheck(torch.ops.torchlpc.allpole.default, op_inputs(varying, dtype, requires_grad))


@pytest.mark.parametrize("need_A", [True, False], ids=["need_A", "no-grad_A"])
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", OPCHECK_DTYPES)
def test_opcheck_allpole_vjp(dtype, varying, need_A):
    x, A, zi = op_inputs(varying, dtype, requires_grad=False)
    y = sample_wise_lpc(x, A, zi)
    grad_y = randn(*y.shape, dtype=dtype, generator=make_generator(4))
    args = [t.requires_grad_() for t in (grad_y, A, y, zi)]
    torch.library.opcheck(torch.ops.torchlpc.allpole_vjp.default, (*args, need_A))


def test_fake_kernels_give_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, A, zi = torch.empty(2, 7), torch.empty(2, 1, 3), torch.empty(2, 3)
        y = torch.ops.torchlpc.allpole.default(x, A, zi)
        grad_x, grad_A, grad_zi = torch.ops.torchlpc.allpole_vjp.default(y, A, y, zi, True)
        _, no_grad_A, _ = torch.ops.torchlpc.allpole_vjp.default(y, A, y, zi, False)
    assert y.shape == (2, 7) and grad_x.shape == (2, 7)
    assert grad_A.shape == (2, 1, 3) and grad_zi.shape == (2, 3)
    assert no_grad_A.numel() == 0


# ----------------------------------------------------------------------------
# Plain eager calls skip the dispatcher; everything else goes through the ops.


class _RecordingMode(TorchDispatchMode):
    """A dispatch mode that records the ops it sees and changes nothing."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_dispatcher_path_matches_plain_eager(varying):
    """Under a dispatch mode the registered ops run, forward and backward, and
    give what the direct kernel calls of plain eager mode give."""
    x, A, zi = filter_inputs((2,), 30, 3, dtype=torch.float64, seed=5, varying=varying)
    grad_y = randn(2, 30, dtype=torch.float64, generator=make_generator(6))

    def run():
        leaves = [t.detach().requires_grad_() for t in (x, A, zi)]
        y = sample_wise_lpc(*leaves)
        return (y.detach(), *torch.autograd.grad(y, leaves, grad_y))

    plain = run()
    mode = _RecordingMode()
    with mode:
        dispatched = run()
    assert {"torchlpc.allpole", "torchlpc.allpole_vjp"} <= mode.seen, mode.seen
    for p, d in zip(plain, dispatched, strict=True):
        assert relative_error(d, p) <= TOLERANCES[torch.float64]


# ----------------------------------------------------------------------------
# Import.


def _run_python(code):
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_import_is_quiet_and_lazy():
    """No warning at import, and no backend imported, let alone compiled, before a tensor needs it."""
    code = (
        "import sys, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import torchlpc\n"
        "for w in caught: print('warning:', w.category.__name__, w.message)\n"
        "heavy = ['numba', 'triton', 'torchlpc.kernels.cpu_numba', 'torchlpc.kernels.cuda_triton',\n"
        "         'torchlpc.kernels.chunked']\n"
        "for m in heavy:\n"
        "    if m in sys.modules: print('imported:', m)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_import_under_warnings_as_errors():
    result = _run_python("import torchlpc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
