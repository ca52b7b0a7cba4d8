"""``linear_recurrence`` against its reference loop and against ``sample_wise_lpc``."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import DTYPES, WIDE, assert_close, make_generator, randn
from torchlpc import linear_recurrence, sample_wise_lpc
from torchlpc.reference import linear_recurrence_reference


def make_inputs(batch, T, varying, dtype, seed):
    """Poles of modulus below 0.95, standard normal signal and state."""
    generator = make_generator(seed)
    steps = T if varying else 1
    modulus = 0.95 * torch.rand(*batch, steps, generator=generator, dtype=torch.float64)
    if dtype.is_complex:
        angle = 2 * math.pi * torch.rand(*batch, steps, generator=generator, dtype=torch.float64)
        a = torch.polar(modulus, angle)
    else:
        a = modulus * torch.where(torch.rand(*batch, steps, generator=generator) < 0.5, -1.0, 1.0)
    x = randn(*batch, T, dtype=dtype, generator=generator)
    zi = randn(*batch, dtype=dtype, generator=generator)
    return a.to(dtype), x, zi


def reference(a, x, zi, grad_y):
    batch, T = x.shape[:-1], x.shape[-1]
    B = math.prod(batch)
    leaves = [t.detach().to(WIDE[t.dtype]).requires_grad_() for t in (a, x, zi)]
    a2, x2, zi2 = leaves[0].reshape(B, -1), leaves[1].reshape(B, T), leaves[2].reshape(B)
    y = linear_recurrence_reference(a2, x2, zi2).reshape(*batch, T)
    grads = torch.autograd.grad(y, leaves, grad_y.to(y.dtype), materialize_grads=True)
    return (y.detach(), *grads)


def library(a, x, zi, grad_y):
    leaves = [t.clone().requires_grad_() for t in (a, x, zi)]
    y = linear_recurrence(*leaves)
    return (y.detach(), *torch.autograd.grad(y, leaves, grad_y))


SHAPES = [
    pytest.param((3,), 50, id="B3-T50"),
    pytest.param((1,), 1, id="T1"),
    pytest.param((2,), 17, id="odd-T"),
    pytest.param((2, 3), 9, id="batch-2x3"),
    pytest.param((), 12, id="no-batch"),
    pytest.param((2,), 0, id="T0"),
]


@pytest.mark.parametrize("batch, T", SHAPES)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(backend, batch, T, varying, dtype):
    a, x, zi = make_inputs(batch, T, varying, dtype, seed=T + 1)
    grad_y = randn(*x.shape, dtype=dtype, generator=make_generator(99))
    got = library(a, x, zi, grad_y)
    expected = reference(a, x, zi, grad_y)
    for name, g, e in zip(("y", "grad_a", "grad_x", "grad_zi"), got, expected, strict=True):
        assert g.shape == e.shape, name
        assert_close(g, e, dtype, name)


@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_is_first_order_lpc(varying, dtype):
    """linear_recurrence(a, x, zi) is sample_wise_lpc(x, -a[..., None], zi[..., None]), gradients too."""
    a, x, zi = make_inputs((2, 2), 30, varying, dtype, seed=1)
    grad_y = randn(*x.shape, dtype=dtype, generator=make_generator(2))
    got = library(a, x, zi, grad_y)

    leaves = [t.clone().requires_grad_() for t in (a, x, zi)]
    y = sample_wise_lpc(leaves[1], -leaves[0][..., None], leaves[2][..., None])
    expected = (y.detach(), *torch.autograd.grad(y, leaves, grad_y))
    for name, g, e in zip(("y", "grad_a", "grad_x", "grad_zi"), got, expected, strict=True):
        assert torch.equal(g, e), name


def test_zero_initial_state_by_default():
    a, x, zi = make_inputs((2,), 10, True, torch.float64, seed=3)
    assert torch.equal(linear_recurrence(a, x), linear_recurrence(a, x, torch.zeros_like(zi)))


def test_time_invariant_gradient_is_summed():
    a, x, zi = make_inputs((2,), 20, False, torch.float64, seed=4)
    grad_y = randn(2, 20, dtype=torch.float64, generator=make_generator(5))
    _, grad_a, _, _ = library(a, x, zi, grad_y)
    _, grad_a_varying, _, _ = library(a.expand(2, 20).contiguous(), x, zi, grad_y)
    assert grad_a.shape == (2, 1)
    assert_close(grad_a, grad_a_varying.sum(-1, keepdim=True), torch.float64, "grad_a")


def test_worked_example():
    a = torch.tensor([[0.5, 0.5, 2.0]])
    x = torch.tensor([[1.0, 1.0, 1.0]])
    zi = torch.tensor([4.0])
    # y0 = 0.5 * 4 + 1, y1 = 0.5 * 3 + 1, y2 = 2 * 2.5 + 1
    assert linear_recurrence(a, x, zi).tolist() == [[3.0, 2.5, 6.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    a, x, zi = (t.to(dtype) for t in make_inputs((2,), 25, True, torch.float32, seed=6))
    y = linear_recurrence(a, x, zi)
    assert y.dtype == dtype
    assert torch.equal(y, linear_recurrence(a.float(), x.float(), zi.float()).to(dtype))
