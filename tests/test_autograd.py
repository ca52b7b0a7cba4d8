"""Derivatives of every order and every transform, checked numerically.

``gradcheck`` compares the backward pass and the forward-mode (jvp) rule with
finite differences, and the vmap rule with per-column backward passes;
``gradgradcheck`` does the same for the backward of the backward, both reverse
over reverse and forward over reverse. Each runs over which inputs require a
gradient, since the backward skips work (grad_A) that is not needed. Then the
torch.func transforms: vmap, jacfwd, jacrev and hessian.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import filter_inputs, make_generator, randn, relative_error
from torchlpc import linear_recurrence, sample_wise_lpc
from torchlpc.reference import allpole_reference

DOUBLE = [
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.complex128, id="complex128"),
]

VARIANTS = [
    pytest.param("varying", id="time-varying"),
    pytest.param("invariant", id="time-invariant"),
    pytest.param("expanded", id="expanded-stride-0"),
]

WRT = [
    pytest.param(("x",), id="x"),
    pytest.param(("A",), id="A"),
    pytest.param(("zi",), id="zi"),
    pytest.param(("A", "zi"), id="A-zi"),
    pytest.param(("x", "A", "zi"), id="all"),
]

GRADCHECK = dict(check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
GRADGRADCHECK = dict(check_fwd_over_rev=True, check_batched_grad=True)


def lpc_function(variant, wrt, return_zf, **inputs):
    """A function of the tensors named in ``wrt`` only; the others are held fixed."""
    T = inputs["x"].shape[-1]

    def function(*tensors):
        named = {**inputs, **dict(zip(wrt, tensors, strict=True))}
        A = named["A"]
        if variant == "expanded":
            A = A.expand(*A.shape[:-2], T, A.shape[-1])
        return sample_wise_lpc(named["x"], A, named["zi"], return_zf=return_zf)

    return function, tuple(inputs[name].clone().requires_grad_() for name in wrt)


def make_inputs(variant, dtype, B=2, T=7, N=3, seed=0):
    x, A, zi = filter_inputs((B,), T, N, dtype=dtype, seed=seed, varying=variant == "varying")
    return dict(x=x, A=A, zi=zi)


@pytest.mark.parametrize("return_zf", [False, True], ids=["y", "y-zf"])
@pytest.mark.parametrize("wrt", WRT)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DOUBLE)
def test_gradcheck(dtype, variant, wrt, return_zf):
    function, args = lpc_function(variant, wrt, return_zf, **make_inputs(variant, dtype))
    assert gradcheck(function, args, **GRADCHECK)


@pytest.mark.parametrize("return_zf", [False, True], ids=["y", "y-zf"])
@pytest.mark.parametrize("wrt", WRT)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DOUBLE)
def test_gradgradcheck(dtype, variant, wrt, return_zf):
    function, args = lpc_function(variant, wrt, return_zf, **make_inputs(variant, dtype, T=5))
    assert gradgradcheck(function, args, **GRADGRADCHECK)


@pytest.mark.parametrize(
    "B, T, N",
    [
        pytest.param(2, 1, 2, id="T1"),
        pytest.param(1, 2, 4, id="T<N"),
        pytest.param(2, 6, 1, id="N1"),
    ],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_awkward_sizes(B, T, N, variant):
    inputs = make_inputs(variant, torch.float64, B=B, T=T, N=N, seed=1)
    function, args = lpc_function(variant, ("x", "A", "zi"), True, **inputs)
    assert gradcheck(function, args, **GRADCHECK)
    assert gradgradcheck(function, args, **GRADGRADCHECK)


@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_gradcheck_empty_time_axis(variant):
    inputs = make_inputs(variant, torch.float64, B=2, T=0, N=2, seed=1)
    function, args = lpc_function(variant, ("x", "A", "zi"), True, **inputs)
    assert gradcheck(function, args, **GRADCHECK)


@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_gradgradcheck_empty_time_axis(variant):
    """The batched part once failed with T = 0: see test_batched_double_backward_with_empty_time_axis."""
    inputs = make_inputs(variant, torch.float64, B=2, T=0, N=2, seed=1)
    function, args = lpc_function(variant, ("x", "A", "zi"), True, **inputs)
    assert gradgradcheck(function, args, **GRADGRADCHECK)


@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_gradcheck_on_every_backend(backend, variant):
    function, args = lpc_function(
        variant, ("x", "A", "zi"), True, **make_inputs(variant, torch.complex128, seed=2)
    )
    assert gradcheck(function, args, **GRADCHECK)
    assert gradgradcheck(function, args, **GRADGRADCHECK)


def test_gradcheck_extra_batch_dimensions():
    x, A, zi = filter_inputs((2, 2), 5, 2, dtype=torch.float64, seed=3)
    args = tuple(t.requires_grad_() for t in (x, A, zi))
    function = lambda *a: sample_wise_lpc(*a, return_zf=True)  # noqa: E731
    assert gradcheck(function, args, **GRADCHECK)
    assert gradgradcheck(function, args, **GRADGRADCHECK)


# ----------------------------------------------------------------------------
# linear_recurrence.

LR_WRT = [
    pytest.param(("a",), id="a"),
    pytest.param(("x",), id="x"),
    pytest.param(("zi",), id="zi"),
    pytest.param(("a", "x", "zi"), id="all"),
]


@pytest.mark.parametrize("wrt", LR_WRT)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", DOUBLE)
def test_linear_recurrence_gradcheck(dtype, varying, wrt):
    generator = make_generator(4)
    B, T = 2, 7
    inputs = dict(
        a=0.8 * randn(B, T if varying else 1, dtype=dtype, generator=generator),
        x=randn(B, T, dtype=dtype, generator=generator),
        zi=randn(B, dtype=dtype, generator=generator),
    )

    def function(*tensors):
        return linear_recurrence(**{**inputs, **dict(zip(wrt, tensors, strict=True))})

    args = tuple(inputs[name].clone().requires_grad_() for name in wrt)
    assert gradcheck(function, args, **GRADCHECK)
    assert gradgradcheck(function, args, **GRADGRADCHECK)


# ----------------------------------------------------------------------------
# torch.func.


@pytest.mark.parametrize(
    "in_dims",
    [
        pytest.param((0, 0, 0), id="all-batched"),
        pytest.param((0, None, 0), id="shared-A"),
        pytest.param((None, 0, None), id="only-A-batched"),
        pytest.param((1, 2, 1), id="inner-dims"),
    ],
)
@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
@pytest.mark.parametrize("dtype", DOUBLE)
def test_vmap_equals_loop(in_dims, varying, dtype):
    V, B, T, N = 4, 2, 9, 3
    x, A, zi = filter_inputs((V, B), T, N, dtype=dtype, seed=5, varying=varying)
    batched = [t if d is not None else t[0] for t, d in zip((x, A, zi), in_dims, strict=True)]
    batched = [t.movedim(0, d) if d is not None else t for t, d in zip(batched, in_dims, strict=True)]

    def function(x, A, zi):
        return sample_wise_lpc(x, A, zi, return_zf=True)

    y, zf = torch.func.vmap(function, in_dims=in_dims)(*batched)
    for v in range(V):
        args = [t[v] if d is not None else t[0] for t, d in zip((x, A, zi), in_dims, strict=True)]
        expected_y, expected_zf = function(*args)
        assert relative_error(y[v], expected_y) <= 1e-15
        assert relative_error(zf[v], expected_zf) <= 1e-15


@pytest.mark.parametrize("varying", [True, False], ids=["time-varying", "time-invariant"])
def test_per_sample_gradients_with_vmap(varying):
    """vmap(grad) over examples equals one backward pass per example."""
    V, T, N = 3, 8, 2
    x, A, zi = filter_inputs((V,), T, N, dtype=torch.float64, seed=6, varying=varying)
    weights = randn(V, T, dtype=torch.float64, generator=make_generator(7))

    def loss(x, A, zi, w):
        y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
        return (w * y).sum() + (zf**2).sum()

    got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)))(x, A, zi, weights)
    for v in range(V):
        leaves = [t[v].clone().requires_grad_() for t in (x, A, zi)]
        expected = torch.autograd.grad(loss(*leaves, weights[v]), leaves)
        for g, e in zip(got, expected, strict=True):
            assert relative_error(g[v], e) <= 1e-13


@pytest.mark.parametrize("argnum", [0, 1, 2], ids=["x", "A", "zi"])
@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_jacobians_agree(argnum, variant):
    inputs = make_inputs(variant, torch.float64, T=6, N=2, seed=8)
    args = (inputs["x"], inputs["A"], inputs["zi"])

    def function(*args):
        return sample_wise_lpc(*args, return_zf=True)

    forward = torch.func.jacfwd(function, argnums=argnum)(*args)
    reverse = torch.func.jacrev(function, argnums=argnum)(*args)
    by_backward = torch.autograd.functional.jacobian(function, args, vectorize=False)
    by_backward = [row[argnum] for row in by_backward]
    for f, r, b in zip(forward, reverse, by_backward, strict=True):
        assert relative_error(f, b) <= 1e-13
        assert relative_error(r, b) <= 1e-13


@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_hessian_wrt_A(variant):
    inputs = make_inputs(variant, torch.float64, T=6, N=2, seed=9)
    weights = randn(2, 6, dtype=torch.float64, generator=make_generator(10))

    def loss(A):
        y, zf = sample_wise_lpc(inputs["x"], A, inputs["zi"], return_zf=True)
        return (weights * y).sum() + (y**2).sum() + zf.sum() ** 2

    A = inputs["A"]
    hessian = torch.func.hessian(loss)(A)
    twice_reverse = torch.func.jacrev(torch.func.jacrev(loss))(A)
    by_backward = torch.autograd.functional.hessian(loss, A)
    assert hessian.shape == (*A.shape, *A.shape)
    assert relative_error(hessian, twice_reverse) <= 1e-13
    assert relative_error(hessian, by_backward) <= 1e-13
    flat = hessian.reshape(A.numel(), A.numel())
    assert relative_error(flat, flat.T) <= 1e-13


@pytest.mark.parametrize("argnum", [0, 2], ids=["x", "zi"])
def test_hessian_wrt_signal_and_state(argnum):
    """Forward over reverse with A fixed: the backward then has no grad_A output."""
    inputs = make_inputs("varying", torch.float64, T=6, N=2, seed=13)
    args = (inputs["x"], inputs["A"], inputs["zi"])

    def loss(*args):
        return (sample_wise_lpc(*args) ** 2).sum()

    hessian = torch.func.hessian(loss, argnums=argnum)(*args)
    twice_reverse = torch.func.jacrev(torch.func.jacrev(loss, argnums=argnum), argnums=argnum)(*args)
    assert relative_error(hessian, twice_reverse) <= 1e-13


def test_jvp_matches_directional_finite_difference():
    inputs = make_inputs("varying", torch.complex128, T=9, N=3, seed=11)
    generator = make_generator(12)
    primals = (inputs["x"], inputs["A"], inputs["zi"])
    tangents = tuple(randn(*t.shape, dtype=t.dtype, generator=generator) for t in primals)
    _, jvp = torch.func.jvp(sample_wise_lpc, primals, tangents)
    step = 1e-6
    plus = sample_wise_lpc(*(p + step * t for p, t in zip(primals, tangents, strict=True)))
    minus = sample_wise_lpc(*(p - step * t for p, t in zip(primals, tangents, strict=True)))
    assert relative_error(jvp, (plus - minus) / (2 * step)) <= 1e-8


# ----------------------------------------------------------------------------
# Regressions, each the smallest input that shows the bug.


@pytest.mark.parametrize("argnum", [0, 2], ids=["x", "zi"])
def test_forward_over_reverse_without_grad_A(argnum):
    """jvp of the backward when A needs no gradient (torch.func.hessian w.r.t. x or zi).

    The backward op then returns an empty, non-differentiable grad_A; its jvp
    rule (_AllpoleVjpFunction.jvp in torchlpc/_ops.py) must return None there,
    not a tensor, or autograd raises "Function's jvp returned a gradient at
    position 1, but the corresponding forward output is not a differentiable
    Tensor" (it did, before e6934c3). The Hessian of sum(y**2) in x is
    2 J^T J, J the filter's matrix.
    """
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    A = torch.full((1, 3, 1), -0.5, dtype=torch.float64)
    zi = torch.tensor([[1.0]], dtype=torch.float64)
    args = [x, A, zi]

    def loss(value):
        return (sample_wise_lpc(*args[:argnum], value, *args[argnum + 1 :]) ** 2).sum()

    hessian = torch.func.hessian(loss)(args[argnum])
    J = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]], dtype=torch.float64)
    if argnum == 2:
        J = torch.tensor([[0.5], [0.25], [0.125]], dtype=torch.float64)
    expected = 2 * J.T @ J
    assert relative_error(hessian.reshape(expected.shape), expected) <= 1e-15


def test_batched_double_backward_with_empty_time_axis():
    """Double backward over a batch of cotangents (is_grads_batched) with T = 0.

    torchlpc/_adjoint.py lagged_scatter sliced padded[..., :N]; with T = 0
    that slice spans the whole tensor and becomes aten::alias, which the
    batched-gradient vmap of torch.autograd.grad cannot batch: "Batching rule
    not implemented for aten::alias" (before e6934c3).
    """
    x = torch.zeros(2, 0, dtype=torch.float64, requires_grad=True)
    A = torch.zeros(2, 0, 2, dtype=torch.float64, requires_grad=True)
    zi = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    _, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    _, grad_A, _ = torch.autograd.grad(zf, (x, A, zi), torch.ones_like(zf), create_graph=True)
    cotangents = torch.zeros(3, *grad_A.shape, dtype=torch.float64)
    second = torch.autograd.grad(grad_A, zi, cotangents, is_grads_batched=True, allow_unused=True)[0]
    assert second is None or torch.equal(second, torch.zeros(3, 2, 2, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["varying", "invariant"])
def test_second_order_with_huge_order(variant):
    """Forward mode and double backward at N = 10**6 over T = 3, against autograd through the loop.

    The lag helpers in torchlpc/_adjoint.py loop over the shorter of time and
    lag; lagged_scatter once built N padded copies of the whole T + N signal,
    which at this size is hours of work for one double backward.
    """
    T, N = 3, 10**6
    generator = make_generator(15)
    x = randn(1, T, dtype=torch.float64, generator=generator)
    A = 1e-3 * randn(1, T if variant == "varying" else 1, N, dtype=torch.float64, generator=generator)
    zi = randn(1, N, dtype=torch.float64, generator=generator)
    primals = (x, A, zi)
    tangents = tuple(randn(*t.shape, dtype=t.dtype, generator=generator) for t in primals)
    weights = (randn(1, T, dtype=torch.float64, generator=generator), randn(1, N, dtype=torch.float64, generator=generator))
    cotangents = tuple(randn(*t.shape, dtype=t.dtype, generator=generator) for t in primals)

    def library(x, A, zi):
        return sample_wise_lpc(x, A, zi, return_zf=True)

    def reference(x, A, zi):
        y = allpole_reference(x, A, zi)
        return y, torch.cat([zi.flip(-1), y], dim=-1)[..., -N:].flip(-1)

    def second_order(function):
        leaves = [t.clone().requires_grad_() for t in primals]
        y, zf = function(*leaves)
        loss = (weights[0] * y).sum() + (weights[1] * zf).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        inner = sum((c * g).sum() for c, g in zip(cotangents, grads, strict=True))
        return torch.autograd.grad(inner, leaves, allow_unused=True, materialize_grads=True)

    for name, got, expected in [
        ("jvp", torch.func.jvp(library, primals, tangents)[1], torch.func.jvp(reference, primals, tangents)[1]),
        ("double backward", second_order(library), second_order(reference)),
    ]:
        for g, e in zip(got, expected, strict=True):
            assert relative_error(g, e) <= 1e-12, name
