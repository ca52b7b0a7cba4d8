"""Every error the public functions raise, and what they raise it for.

Arguments are checked before any work starts, with a message that names the
function, the argument and, for shapes, every shape involved. Backend selection
errors (``TORCHLPC_BACKEND``) come from the dispatcher, when an op first runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchlpc import linear_recurrence, sample_wise_lpc

B, T, N = 2, 5, 3


def lpc_inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, generator=generator).to(dtype)
    A = (0.1 * torch.randn(B, T, N, generator=generator)).to(dtype)
    zi = torch.randn(B, N, generator=generator).to(dtype)
    return x, A, zi


def recurrence_inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    a = (0.5 * torch.rand(B, T, generator=generator)).to(dtype)
    x = torch.randn(B, T, generator=generator).to(dtype)
    zi = torch.randn(B, generator=generator).to(dtype)
    return a, x, zi


def call_lpc(**changes):
    x, a, zi = lpc_inputs()
    arguments = dict(x=x, a=a, zi=zi)
    arguments.update({name: change(arguments[name]) for name, change in changes.items()})
    return sample_wise_lpc(**arguments)


def call_recurrence(**changes):
    a, x, zi = recurrence_inputs()
    arguments = dict(a=a, x=x, zi=zi)
    arguments.update({name: change(arguments[name]) for name, change in changes.items()})
    return linear_recurrence(**arguments)


CALLS = {"sample_wise_lpc": call_lpc, "linear_recurrence": call_recurrence}
ARGUMENTS = [
    pytest.param("sample_wise_lpc", "x", id="lpc-x"),
    pytest.param("sample_wise_lpc", "a", id="lpc-a"),
    pytest.param("sample_wise_lpc", "zi", id="lpc-zi"),
    pytest.param("linear_recurrence", "a", id="recurrence-a"),
    pytest.param("linear_recurrence", "x", id="recurrence-x"),
    pytest.param("linear_recurrence", "zi", id="recurrence-zi"),
]


# ----------------------------------------------------------------------------
# Types and dtypes.

NOT_TENSORS = [
    pytest.param(lambda t: t.tolist(), "list", id="list"),
    pytest.param(lambda t: t.numpy(), "ndarray", id="numpy"),
    pytest.param(lambda t: 0.5, "float", id="float"),
    pytest.param(lambda t: "x", "str", id="str"),
]


@pytest.mark.parametrize("convert, type_name", NOT_TENSORS)
@pytest.mark.parametrize("function, argument", ARGUMENTS)
def test_non_tensor_argument(function, argument, convert, type_name):
    message = f"{function}: {argument} must be a torch.Tensor, got {type_name}"
    with pytest.raises(TypeError, match=re.escape(message)):
        CALLS[function](**{argument: convert})


BAD_DTYPES = [
    pytest.param(torch.int64, id="int64"),
    pytest.param(torch.int32, id="int32"),
    pytest.param(torch.uint8, id="uint8"),
    pytest.param(torch.bool, id="bool"),
    pytest.param(torch.complex32, id="complex32"),
    pytest.param(torch.float8_e4m3fn, id="float8_e4m3fn"),
]


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", BAD_DTYPES)
@pytest.mark.parametrize("function, argument", ARGUMENTS)
def test_integer_and_bool_dtypes(function, argument, dtype):
    message = f"{function}: {argument} has dtype {dtype}; expected a floating point or complex dtype"
    with pytest.raises(TypeError, match=re.escape(message)):
        CALLS[function](**{argument: lambda t: t.to(dtype)})


MIXED = [
    pytest.param("sample_wise_lpc", "a", torch.float64, id="lpc-a-float64"),
    pytest.param("sample_wise_lpc", "zi", torch.float64, id="lpc-zi-float64"),
    pytest.param("sample_wise_lpc", "zi", torch.complex64, id="lpc-zi-complex64"),
    pytest.param("sample_wise_lpc", "a", torch.float16, id="lpc-a-float16"),
    pytest.param("sample_wise_lpc", "x", torch.bfloat16, id="lpc-x-bfloat16"),
    pytest.param("linear_recurrence", "a", torch.float64, id="recurrence-a-float64"),
    pytest.param("linear_recurrence", "zi", torch.complex64, id="recurrence-zi-complex64"),
    pytest.param("linear_recurrence", "x", torch.float64, id="recurrence-x-float64"),
]


@pytest.mark.parametrize("function, argument, dtype", MIXED)
def test_mixed_dtypes(function, argument, dtype):
    # Changing x itself makes every other argument the odd one out.
    with pytest.raises(TypeError, match=f"{function}: .* has dtype .* but x has dtype") as info:
        CALLS[function](**{argument: lambda t: t.to(dtype)})
    assert str(dtype) in str(info.value)
    assert "convert them to one dtype" in str(info.value)


def test_half_precision_with_single_precision_is_mixed():
    x, A, zi = lpc_inputs()
    with pytest.raises(TypeError, match=re.escape("a has dtype torch.float32 but x has dtype torch.float16")):
        sample_wise_lpc(x.half(), A, zi.half())


@pytest.mark.parametrize("function, argument", [ARGUMENTS[1], ARGUMENTS[2], ARGUMENTS[3], ARGUMENTS[5]])
def test_mismatched_devices(function, argument):
    # The meta device stands in for a second device; it exists on every machine.
    with pytest.raises(ValueError, match=f"{argument} is on meta but x is on cpu; move them to one device"):
        CALLS[function](**{argument: lambda t: t.to("meta")})


# ----------------------------------------------------------------------------
# Shapes.

LPC_SHAPES = [
    pytest.param(dict(x=lambda t: t[0, 0]), "x must have shape (*, T), got a 0-dimensional tensor", id="x-0d"),
    pytest.param(
        dict(a=lambda t: t[0, 0]),
        "a must have shape (*, T, N) or (*, 1, N), at least 2 dimensions; got x (2, 5) and a (3)",
        id="a-1d",
    ),
    pytest.param(
        dict(a=lambda t: t[..., None]),
        "a (2, 5, 3, 1) does not fit x (2, 5): its time dimension (second to last) must be 5 "
        "(time-varying) or 1 (time-invariant)",
        id="a-extra-dim",
    ),
    pytest.param(
        dict(a=lambda t: torch.cat([t, t[:1]])),
        "the batch (leading) dimensions do not broadcast: x (2,), a (3,), zi (2,)",
        id="a-batch-mismatch",
    ),
    pytest.param(
        dict(a=lambda t: t[:, :3]),
        "a (2, 3, 3) does not fit x (2, 5): its time dimension (second to last) must be 5 "
        "(time-varying) or 1 (time-invariant)",
        id="a-time-mismatch",
    ),
    pytest.param(
        dict(x=lambda t: t[:, :4]),
        "a (2, 5, 3) does not fit x (2, 4)",
        id="x-time-mismatch",
    ),
    pytest.param(
        dict(a=lambda t: t[..., :0]),
        "a (2, 5, 0) has filter order N = 0; N must be at least 1",
        id="N0",
    ),
    pytest.param(
        dict(a=lambda t: t[:, :1, :0]),
        "a (2, 1, 0) has filter order N = 0",
        id="N0-time-invariant",
    ),
    pytest.param(
        dict(zi=lambda t: t[:, :2]),
        "zi must have shape (*, N) with N = 3 to fit a (2, 5, 3); got (2, 2)",
        id="zi-wrong-N",
    ),
    pytest.param(
        dict(zi=lambda t: t[0, 0]),
        "zi must have shape (*, N) with N = 3 to fit a (2, 5, 3); got ()",
        id="zi-0d",
    ),
    pytest.param(
        dict(zi=lambda t: torch.cat([t, t[:1]])),
        "the batch (leading) dimensions do not broadcast: x (2,), a (2,), zi (3,)",
        id="zi-batch-mismatch",
    ),
    pytest.param(
        dict(zi=lambda t: torch.stack([t, t, t], 1)),
        "the batch (leading) dimensions do not broadcast: x (2,), a (2,), zi (2, 3)",
        id="zi-extra-dim",
    ),
]


@pytest.mark.parametrize("changes, message", LPC_SHAPES)
def test_sample_wise_lpc_shapes(changes, message):
    with pytest.raises(ValueError, match=re.escape("sample_wise_lpc: ") + ".*" + re.escape(message)):
        call_lpc(**changes)


RECURRENCE_SHAPES = [
    pytest.param(dict(x=lambda t: t[0, 0]), "x must have shape (*, T), got a 0-dimensional tensor", id="x-0d"),
    pytest.param(
        dict(a=lambda t: t[:, :3]),
        "a must have shape (*, T) with T = 5 as in x, or (*, 1) for a time-invariant recurrence; "
        "got a (2, 3) and x (2, 5)",
        id="a-time-mismatch",
    ),
    pytest.param(
        dict(a=lambda t: torch.cat([t, t[:1]])),
        "the batch (leading) dimensions do not broadcast: a (3,), x (2,), zi (2,)",
        id="a-batch-mismatch",
    ),
    pytest.param(
        dict(a=lambda t: t[..., None]),
        "the batch (leading) dimensions do not broadcast: a (2, 5), x (2,), zi (2,)",
        id="a-extra-dim",
    ),
    pytest.param(dict(a=lambda t: t[0, 0]), "got a () and x (2, 5)", id="a-0d"),
    pytest.param(dict(a=lambda t: t[:, :0]), "got a (2, 0) and x (2, 5)", id="a-empty-time"),
    pytest.param(
        dict(zi=lambda t: torch.cat([t, t[:1]])),
        "the batch (leading) dimensions do not broadcast: a (2,), x (2,), zi (3,)",
        id="zi-batch-mismatch",
    ),
    pytest.param(
        dict(zi=lambda t: torch.stack([t, t, t], 1)),
        "the batch (leading) dimensions do not broadcast: a (2,), x (2,), zi (2, 3)",
        id="zi-extra-dim",
    ),
]


@pytest.mark.parametrize("changes, message", RECURRENCE_SHAPES)
def test_linear_recurrence_shapes(changes, message):
    with pytest.raises(ValueError, match=re.escape("linear_recurrence: ") + ".*" + re.escape(message)):
        call_recurrence(**changes)


VALID_EDGES = [
    pytest.param((7,), (7, 2), (2,), id="1d-x"),
    pytest.param((7,), (1, 2), None, id="1d-x-time-invariant"),
    pytest.param((2, 3, 4), (2, 3, 1, 2), (2, 3, 2), id="extra-batch-time-invariant"),
    pytest.param((2, 0), (2, 0, 3), (2, 3), id="T0"),
    pytest.param((2, 0), (2, 1, 3), None, id="T0-time-invariant"),
    pytest.param((0, 4), (0, 4, 2), (0, 2), id="B0"),
]


@pytest.mark.parametrize("x_shape, A_shape, zi_shape", VALID_EDGES)
def test_edge_shapes_are_accepted(x_shape, A_shape, zi_shape):
    x, A = torch.zeros(x_shape), torch.zeros(A_shape)
    zi = None if zi_shape is None else torch.zeros(zi_shape)
    y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    assert y.shape == x.shape and zf.shape == (*x_shape[:-1], A_shape[-1])


def test_error_before_any_work(monkeypatch):
    """Invalid arguments never reach the backend, so a bogus backend is not noticed."""
    monkeypatch.setenv("TORCHLPC_BACKEND", "bogus")
    with pytest.raises(ValueError, match="zi must have shape"):
        call_lpc(zi=lambda t: t[:, :2])


# ----------------------------------------------------------------------------
# Backend selection.


@pytest.mark.parametrize("value", ["bogus", "cuda", "numba,chunked"])
@pytest.mark.parametrize("function", ["sample_wise_lpc", "linear_recurrence"])
def test_unknown_backend(monkeypatch, function, value):
    monkeypatch.setenv("TORCHLPC_BACKEND", value)
    message = f"TORCHLPC_BACKEND={value!r} is not a backend; expected one of numba, triton, chunked, reference"
    with pytest.raises(ValueError, match=re.escape(message)):
        CALLS[function]()


@pytest.mark.parametrize("value", ["", "auto", "AUTO", " Numba ", "Reference"])
def test_backend_names_are_trimmed_and_case_insensitive(monkeypatch, value):
    monkeypatch.setenv("TORCHLPC_BACKEND", value)
    x, A, zi = lpc_inputs(torch.float64)
    monkeypatch.setenv("TORCHLPC_BACKEND", "reference")
    expected = sample_wise_lpc(x, A, zi)
    monkeypatch.setenv("TORCHLPC_BACKEND", value)
    torch.testing.assert_close(sample_wise_lpc(x, A, zi), expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("device", ["cuda", "mps", "meta"])
def test_forced_numba_rejects_other_devices(monkeypatch, device):
    """numba runs CPU tensors only; forced on another device's tensors it raises, it does not fall back.

    The choice is made per call from the tensors' device, so it is checked on
    the selection itself: this machine need not have the device.
    """
    from torchlpc import _dispatch

    monkeypatch.setenv("TORCHLPC_BACKEND", "numba")
    message = (
        f"TORCHLPC_BACKEND=numba was requested, but the numba backend runs on CPU tensors only, "
        f"not on {device!r} tensors."
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _dispatch.select_backend(torch.device(device), torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_forced_triton_rejects_complex(monkeypatch):
    """Triton has no complex type; a forced triton backend raises instead of falling back.

    Deterministic whether or not Triton's interpreter is on in this session
    (tests/test_triton.py switches it on): CPU tensors are rejected without
    it, complex ones with it.
    """
    monkeypatch.setenv("TORCHLPC_BACKEND", "triton")
    x, A, zi = lpc_inputs(torch.complex64)
    with pytest.raises(RuntimeError, match=re.escape("TORCHLPC_BACKEND=triton was requested, but")):
        sample_wise_lpc(x, A, zi)


def test_forced_triton_on_cpu_tensors_without_interpreter():
    """In a fresh interpreter without TRITON_INTERPRET, CPU tensors cannot run on Triton.

    A subprocess, because Triton reads TRITON_INTERPRET once, when torchlpc's
    kernels are first imported, and tests/test_triton.py may already have
    imported them with the interpreter on.
    """
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["TORCHLPC_BACKEND"] = "triton"
    script = (
        "import torch, torchlpc\n"
        "try:\n"
        "    torchlpc.sample_wise_lpc(torch.zeros(1, 4), torch.zeros(1, 4, 2))\n"
        "except RuntimeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TORCHLPC_BACKEND=triton was requested, but "), result.stdout
    if importlib.util.find_spec("triton") is None:
        assert "needs the 'triton' package" in result.stdout
    else:
        assert "CPU tensors need Triton's interpreter" in result.stdout
        assert "TRITON_INTERPRET=1" in result.stdout


# ----------------------------------------------------------------------------
# The table of docs/errors.md: every call on that page, run as written.

ERRORS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
_ROW = re.compile(r"^\|\s*`(?P<call>[^`]+)`\s*\|\s*(?P<raises>\w+)\s*\|\s*`(?P<message>[^`]+)`\s*\|$")


def _documented_rows():
    rows = []
    for line in ERRORS_PAGE.read_text().splitlines():
        match = _ROW.match(line.strip())
        if match:
            rows.append(pytest.param(*match.group("call", "raises", "message"), id=match["call"]))
    return rows


def _documented_namespace():
    """What the page's setup block defines (its first Python block)."""
    text = ERRORS_PAGE.read_text()
    setup = re.search(r"```python\n(.*?)```", text, re.S)[1]
    namespace = {}
    exec(compile(setup, str(ERRORS_PAGE), "exec"), namespace)
    return namespace


DOCUMENTED = _documented_rows()


@pytest.mark.parametrize("call, raises, message", DOCUMENTED)
def test_documented_error(call, raises, message):
    namespace = _documented_namespace()
    with pytest.raises((TypeError, ValueError)) as info:
        eval(call, namespace)
    assert type(info.value).__name__ == raises, f"{call} raised {info.type.__name__}: {info.value}"
    assert message in str(info.value), f"{call}: {info.value}"


def test_every_public_function_is_in_the_table():
    import torchlpc
    import torchlpc.nn

    # Callables only: nn, core and recurrence are modules, EXTENSION_LOADED a flag.
    public = [
        name for name in torchlpc.__all__
        if name not in ("nn", "core", "recurrence", "EXTENSION_LOADED")
    ] + list(torchlpc.nn.__all__)
    called = {re.match(r"\w+", row.values[0])[0] for row in DOCUMENTED}
    assert set(public) <= called, f"not in docs/errors.md: {sorted(set(public) - called)}"
    assert len(DOCUMENTED) >= 90
