"""torchlpc 0.7.2's public surface: names, signatures, argument names, semantics.

0.7.2's own tests (tests/test_grad.py, tests/test_vmap.py from its sdist) run
unmodified against this package in CI, by .ci/torchlpc072_tests.py; they take
minutes, so they are not part of this run. These are the cheap checks of what
they rely on, and of the differences docs/migrating.md lists.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from conftest import filter_inputs, make_generator, randn

import torchlpc
from torchlpc import linear_recurrence, sample_wise_lpc

DTYPE = torch.float64


def lpc_inputs(B=3, T=12, N=2, seed=0):
    return filter_inputs((B,), T, N, dtype=DTYPE, seed=seed)


def recurrence_inputs(B=3, T=12, seed=1):
    generator = make_generator(seed)
    decay = 0.9 * torch.rand(B, T, dtype=DTYPE, generator=generator)
    impulse = randn(B, T, dtype=DTYPE, generator=generator)
    initial_state = randn(B, dtype=DTYPE, generator=generator)
    return decay, impulse, initial_state


def test_sample_wise_lpc_has_072_signature():
    parameters = inspect.signature(sample_wise_lpc).parameters
    assert [(p.name, p.default, p.kind) for p in parameters.values()] == [
        ("x", inspect.Parameter.empty, inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("a", inspect.Parameter.empty, inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("zi", None, inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("return_zf", False, inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]


def test_coefficients_by_keyword_a():
    x, A, zi = lpc_inputs()
    torch.testing.assert_close(sample_wise_lpc(x, a=A, zi=zi), sample_wise_lpc(x, A, zi))
    with pytest.raises(TypeError, match="unexpected keyword argument 'A'"):
        sample_wise_lpc(x, A=A)


NAMES = [
    pytest.param(lambda: torchlpc.LPC, lambda: torchlpc.core.LPC, id="LPC"),
    pytest.param(lambda: torchlpc.Recurrence, lambda: torchlpc.recurrence.Recurrence, id="Recurrence"),
    pytest.param(
        lambda: torchlpc.recurrence.RecurrenceCUDA, lambda: torchlpc.recurrence.Recurrence,
        id="RecurrenceCUDA",
    ),
]


@pytest.mark.parametrize("name, same_as", NAMES)
def test_072_names(name, same_as):
    assert name() is same_as()
    assert issubclass(name(), torch.autograd.Function)


def test_extension_loaded_means_the_ops_exist():
    assert torchlpc.EXTENSION_LOADED is True
    assert callable(torch.ops.torchlpc.lpc) and callable(torch.ops.torchlpc.scan)


def lpc_entry_points():
    return [
        pytest.param(torchlpc.core.LPC.apply, id="LPC.apply"),
        pytest.param(torch.ops.torchlpc.lpc, id="torch.ops.torchlpc.lpc"),
    ]


@pytest.mark.parametrize("entry", lpc_entry_points())
def test_lpc_entry_points_are_sample_wise_lpc(entry):
    x, A, zi = (t.requires_grad_() for t in lpc_inputs())
    y = entry(x, A, zi)
    expected = sample_wise_lpc(x, A, zi)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    weights = torch.randn_like(y)
    got = torch.autograd.grad((y * weights).sum(), (x, A, zi))
    want = torch.autograd.grad((expected * weights).sum(), (x, A, zi))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(lambda d, i, s: torchlpc.Recurrence.apply(d, i, s), id="Recurrence.apply"),
        pytest.param(lambda d, i, s: torch.ops.torchlpc.scan(i, d, s), id="torch.ops.torchlpc.scan"),
    ],
)
def test_recurrence_entry_points_are_linear_recurrence(entry):
    decay, impulse, initial_state = (t.requires_grad_() for t in recurrence_inputs())
    y = entry(decay, impulse, initial_state)
    expected = linear_recurrence(decay, impulse, initial_state)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    weights = torch.randn_like(y)
    got = torch.autograd.grad((y * weights).sum(), (decay, impulse, initial_state))
    want = torch.autograd.grad((expected * weights).sum(), (decay, impulse, initial_state))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


ERRORS = [
    pytest.param(
        lambda x, A, zi, d, i, s: torchlpc.LPC.apply(x, A[:, :3], zi),
        "LPC.apply: A (3, 3, 2) does not fit x (3, 12)", id="LPC.apply",
    ),
    pytest.param(
        lambda x, A, zi, d, i, s: torch.ops.torchlpc.lpc(x, A, zi[:, :1]),
        "torch.ops.torchlpc.lpc: zi must have shape (*, N) with N = 2 to fit A (3, 12, 2)",
        id="torch.ops.torchlpc.lpc",
    ),
    pytest.param(
        lambda x, A, zi, d, i, s: torchlpc.Recurrence.apply(d, i[:, :5], s),
        "Recurrence.apply: decay must have shape (*, T) with T = 5 as in impulse",
        id="Recurrence.apply",
    ),
    pytest.param(
        lambda x, A, zi, d, i, s: torch.ops.torchlpc.scan(i, d.int(), s),
        "torch.ops.torchlpc.scan: a has dtype torch.int32", id="torch.ops.torchlpc.scan",
    ),
]


@pytest.mark.parametrize("call, message", ERRORS)
def test_errors_name_the_072_entry_point(call, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        call(*lpc_inputs(), *recurrence_inputs())


@pytest.mark.parametrize("T", [1, 2, 3, 4], ids=lambda T: f"T{T}")
def test_final_state_reaches_into_zi_when_T_is_below_N(T):
    """0.7.2 returned y[:, -N:].flip(1), only T entries when T < N; here zf always has N."""
    x, A, zi = lpc_inputs(T=T, N=3)
    y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    assert zf.shape == (3, 3)
    expected = torch.cat([y.flip(1), zi], dim=1)[:, :3]
    torch.testing.assert_close(zf, expected, rtol=0, atol=0)
