"""Numba kernels prepared in the background (torchlpc.kernels.cpu_compile).

Each case runs in a fresh Python process: whether a kind of call has its
kernels is process state, and the rest of the suite runs with
``TORCHLPC_CPU_COMPILE=wait`` (conftest). The processes share the suite's numba
disk cache, so a preparation there loads rather than compiles; what is tested
is which path serves each call, the results, the log line, and forks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torchlpc.kernels import cpu_compile

PRELUDE = """
import logging, os, sys
import torch
import torchlpc
from torchlpc import _dispatch
from torchlpc.kernels import cpu_compile, chunked
from torchlpc.reference import allpole_reference, allpole_vjp_reference

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
calls = []
original = chunked.allpole
def counted(*args):
    calls.append("chunked")
    return original(*args)
chunked.allpole = counted

def inputs(dtype=torch.float64, T=300, N=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, T, dtype=dtype, generator=g)
    A = 0.2 * torch.rand(2, T, N, dtype=dtype, generator=g) - 0.1
    zi = torch.randn(2, N, dtype=dtype, generator=g)
    return x, A, zi
"""


def run(script: str, mode: str | None) -> str:
    environment = dict(os.environ)
    environment.pop(cpu_compile.ENV_VARIABLE, None)
    environment.pop("TORCHLPC_BACKEND", None)
    if mode is not None:
        environment[cpu_compile.ENV_VARIABLE] = mode
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        capture_output=True, text=True, env=environment, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.extended  # a Python process of its own
def test_background_mode_serves_first_calls_from_the_chunked_path():
    out = run(
        """
        x, A, zi = inputs()
        y = torchlpc.sample_wise_lpc(x, A, zi)
        assert calls == ["chunked"], calls
        key = ("allpole", torch.float64, 3, False, False)
        assert key not in cpu_compile._ready
        torch.testing.assert_close(y, allpole_reference(x, A, zi))
        cpu_compile.wait_for_all()
        assert key in cpu_compile._ready
        again = torchlpc.sample_wise_lpc(x, A, zi)
        assert calls == ["chunked"], calls  # the numba kernels this time
        torch.testing.assert_close(again, y)
        print("done")
        """,
        mode="background",
    )
    lines = [line for line in out.splitlines() if "preparing numba CPU kernels" in line]
    assert len(lines) == 1, out
    assert "allpole, float64, orders 3-7, time-varying in the background" in lines[0]
    assert out.strip().endswith("done")


@pytest.mark.extended  # a Python process of its own
def test_background_mode_backward_and_linear_recurrence():
    run(
        """
        x, A, zi = inputs(torch.float32, N=1)
        leaves = [t.clone().requires_grad_() for t in (x, A, zi)]
        y = torchlpc.sample_wise_lpc(*leaves)
        grad_y = torch.randn_like(y)
        grads = torch.autograd.grad(y, leaves, grad_y)
        expected = allpole_vjp_reference(grad_y, A, allpole_reference(x, A, zi), zi)
        for got, wanted in zip(grads, expected):
            torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-4)
        a = torch.rand(2, 300, requires_grad=True)
        signal = torch.randn(2, 300, requires_grad=True)
        out = torchlpc.linear_recurrence(a, signal)
        out.sum().backward()
        assert a.grad is not None and signal.grad is not None
        cpu_compile.wait_for_all()
        kinds = {key[0] for key in cpu_compile._ready}
        # The recurrence's forward ran as allpole on the chunked path, and so its
        # backward is allpole_vjp: linear_recurrence_vjp was never asked for.
        assert kinds == {"allpole", "allpole_vjp", "linear_recurrence"}, kinds
        """,
        mode="background",
    )


@pytest.mark.extended  # a Python process of its own
def test_wait_mode_runs_the_kernels_from_the_first_call():
    out = run(
        """
        x, A, zi = inputs()
        torchlpc.sample_wise_lpc(x, A, zi)
        assert calls == [], calls
        print("done")
        """,
        mode="wait",
    )
    assert "this call waits for them" in out


def test_deterministic_algorithms_mean_wait(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VARIABLE, "background")
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert cpu_compile.mode() == "wait"
    finally:
        torch.use_deterministic_algorithms(saved)
    assert cpu_compile.mode() == "background"


def test_unknown_mode_is_an_error(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VARIABLE, "later")
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="TORCHLPC_CPU_COMPILE='later' is not a mode"):
        torch.ops.torchlpc.allpole(x, torch.zeros(1, 4, 1), torch.zeros(1, 1))


@pytest.mark.extended  # a Python process of its own
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_compiling_leaves_a_working_child():
    # The fork waits for the preparation in flight; a child that inherited a held
    # numba compiler lock would hang on its first compilation (here float32).
    run(
        """
        import multiprocessing
        x, A, zi = inputs()
        torchlpc.sample_wise_lpc(x, A, zi)
        assert cpu_compile._running, "the preparation should still be running"

        def child():
            os.environ["TORCHLPC_CPU_COMPILE"] = "wait"
            x32, A32, zi32 = (t.float() for t in inputs(N=8))
            y = torchlpc.sample_wise_lpc(x32, A32, zi32)
            torch.testing.assert_close(y, allpole_reference(x32, A32, zi32), rtol=1e-4, atol=1e-4)

        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        process.join(240)
        assert process.exitcode == 0, process.exitcode
        """,
        mode="background",
    )
