"""Leading dimensions broadcast: one filter for many signals, without a copy per row.

Outputs and the gradients of every argument are checked against autograd through
the reference loops run on explicitly expanded (materialised) inputs, whose
gradients autograd reduces back to the broadcast shapes; on every CPU backend, and
on the Triton kernels (in Triton's interpreter without CUDA).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import assert_close, filter_inputs, make_generator, randn
from torch.autograd import gradcheck, gradgradcheck

import torchlpc
from torchlpc import _dispatch, linear_recurrence, sample_wise_lpc
from torchlpc.reference import allpole_reference, linear_recurrence_reference

DTYPE = torch.float64

# As in test_triton.py: without CUDA the Triton kernels run in Triton's interpreter,
# which reads TRITON_INTERPRET when they are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def lpc_case(x_batch, a_batch, zi_batch, T, N, *, varying=True, expand_a=False, seed=0):
    """Inputs of the given batch shapes (zi_batch None for no zi); with ``expand_a``
    the coefficients are a stride-0 expansion of their first row to x's batch."""
    x, _, _ = filter_inputs(x_batch, T, N, dtype=DTYPE, seed=seed)
    _, A, _ = filter_inputs(a_batch, T, N, dtype=DTYPE, seed=seed + 1, varying=varying)
    if expand_a:
        A = A.expand(*x_batch, *A.shape[-2:])
    zi = None
    if zi_batch is not None:
        zi = randn(*zi_batch, N, dtype=DTYPE, generator=make_generator(seed + 2))
    return x, A, zi


def reference_lpc(x, A, zi, batch):
    """y by the reference loops on inputs expanded to ``batch`` and copied."""
    T, N = x.shape[-1], A.shape[-1]
    if zi is None:
        zi = x.new_zeros(N)
    rows = torch.Size(batch).numel()
    y = allpole_reference(
        x.expand(*batch, T).reshape(rows, T),
        A.expand(*batch, *A.shape[-2:]).reshape(rows, A.shape[-2], N),
        zi.expand(*batch, N).reshape(rows, N),
    )
    return y.reshape(*batch, T)


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def gradients(output, inputs, seed=3):
    weights = randn(*output.shape, dtype=output.dtype, generator=make_generator(seed))
    present = [t for t in inputs if t is not None]
    return torch.autograd.grad((output * weights).sum(), present)


LPC_CASES = [
    # x batch, a batch, zi batch (None: no zi), T, N
    pytest.param((5,), (1,), (5,), 40, 3, id="shared-a"),
    pytest.param((5,), (), (), 40, 3, id="a-and-zi-without-batch"),
    pytest.param((5,), (5,), (1,), 40, 3, id="shared-zi"),
    pytest.param((5,), (1,), None, 40, 1, id="shared-a-order1"),
    pytest.param((5,), (1,), (1,), 40, 2, id="shared-a-order2"),
    pytest.param((5,), (1,), (5,), 40, 9, id="shared-a-order9"),
    pytest.param((5,), (1,), (5,), 3, 5, id="shared-a-T-below-N"),
    pytest.param((2, 3), (2, 1), (1, 3), 30, 3, id="partial-a"),
    pytest.param((2, 3), (1, 3), (2, 1), 30, 3, id="partial-a-inner"),
    pytest.param((1,), (4,), (4,), 30, 3, id="x-broadcast"),
    pytest.param((3, 1), (1, 4), None, 30, 2, id="both-broadcast"),
]


@pytest.mark.parametrize("x_batch, a_batch, zi_batch, T, N", LPC_CASES)
@pytest.mark.parametrize("varying", [True, False], ids=["varying", "invariant"])
def test_sample_wise_lpc_broadcasts(backend, x_batch, a_batch, zi_batch, T, N, varying):
    x, A, zi = leaves(*lpc_case(x_batch, a_batch, zi_batch, T, N, varying=varying))
    batch = torch.broadcast_shapes(x_batch, a_batch, zi_batch or ())
    y, zf = sample_wise_lpc(x, A, zi, return_zf=True)
    expected = reference_lpc(x, A, zi, batch)
    assert y.shape == (*batch, T) and zf.shape == (*batch, N)
    assert_close(y, expected, DTYPE, "y")
    got, want = gradients(y, (x, A, zi)), gradients(expected, (x, A, zi))
    for name, g, w in zip(("x", "a", "zi"), got, want):
        assert g.shape == w.shape
        assert_close(g, w, DTYPE, f"grad {name}")


def test_expanded_batch_is_read_once(backend):
    """An a expanded with stride 0 along the batch is filtered as one row, and the
    gradient reaches the tensor that was expanded."""
    x, A, _ = leaves(*lpc_case((6,), (1,), None, 30, 3))
    y = sample_wise_lpc(x, A.expand(6, 30, 3))
    expected = reference_lpc(x, A, None, (6,))
    assert_close(y, expected, DTYPE, "y")
    got, want = gradients(y, (x, A)), gradients(expected, (x, A))
    for name, g, w in zip(("x", "a"), got, want):
        assert_close(g, w, DTYPE, f"grad {name}")


RECURRENCE_CASES = [
    # a batch, x batch, zi batch (None: no zi), T
    pytest.param((1,), (5,), (5,), 40, id="shared-pole"),
    pytest.param((), (5,), (), 40, id="pole-and-zi-without-batch"),
    pytest.param((5,), (1,), (1,), 40, id="x-broadcast"),
    pytest.param((2, 1), (1, 3), None, 40, id="both-broadcast"),
]


@pytest.mark.parametrize("a_batch, x_batch, zi_batch, T", RECURRENCE_CASES)
@pytest.mark.parametrize("varying", [True, False], ids=["varying", "invariant"])
def test_linear_recurrence_broadcasts(backend, a_batch, x_batch, zi_batch, T, varying):
    generator = make_generator(5)
    a = 0.9 * torch.rand(*a_batch, T if varying else 1, dtype=DTYPE, generator=generator)
    x = randn(*x_batch, T, dtype=DTYPE, generator=generator)
    zi = None if zi_batch is None else randn(*zi_batch, dtype=DTYPE, generator=generator)
    a, x, zi = leaves(a, x, zi)
    batch = torch.broadcast_shapes(a_batch, x_batch, zi_batch or ())
    y = linear_recurrence(a, x, zi)
    rows = batch.numel()
    expected = linear_recurrence_reference(
        a.expand(*batch, a.shape[-1]).reshape(rows, -1),
        x.expand(*batch, T).reshape(rows, T),
        (x.new_zeros(()) if zi is None else zi).expand(batch).reshape(rows),
    ).reshape(*batch, T)
    assert_close(y, expected, DTYPE, "y")
    got, want = gradients(y, (a, x, zi)), gradients(expected, (a, x, zi))
    for name, g, w in zip(("a", "x", "zi"), got, want):
        assert g.shape == w.shape
        assert_close(g, w, DTYPE, f"grad {name}")


GRADCHECK_CASES = [
    pytest.param((3,), (1,), (3,), 6, 2, id="shared-a"),
    pytest.param((3,), (), (1,), 6, 1, id="shared-a-order1"),
    pytest.param((2, 2), (1, 2), (2, 1), 4, 3, id="partial"),
]


@pytest.mark.parametrize("x_batch, a_batch, zi_batch, T, N", GRADCHECK_CASES)
def test_gradcheck(backend, x_batch, a_batch, zi_batch, T, N):
    inputs = leaves(*lpc_case(x_batch, a_batch, zi_batch, T, N))
    assert gradcheck(sample_wise_lpc, tuple(inputs), check_forward_ad=True)


def test_gradgradcheck_shared_a():
    """Second derivatives with A of one row (their formulas are shared by the backends)."""
    inputs = leaves(*lpc_case((2,), (1,), (2,), 4, 2))
    assert gradgradcheck(sample_wise_lpc, tuple(inputs), check_fwd_over_rev=True)


def test_gradcheck_linear_recurrence_shared_pole(backend):
    generator = make_generator(6)
    a = 0.9 * torch.rand(1, 6, dtype=DTYPE, generator=generator)
    x = randn(3, 6, dtype=DTYPE, generator=generator)
    zi = randn(3, dtype=DTYPE, generator=generator)
    assert gradcheck(linear_recurrence, tuple(leaves(a, x, zi)), check_forward_ad=True)


@pytest.mark.parametrize("N", [1, 2, 3, 9])
def test_shared_coefficients_are_not_copied(backend, monkeypatch, N):
    """The backend's kernel gets the caller's (1, T, N) memory, not a (B, T, N) copy."""
    B, T = 8, 64
    x, A, zi = lpc_case((B,), (1,), (B,), T, N)
    seen = []
    if backend == "reference":
        module, name = torchlpc.reference, "allpole_reference"
    else:
        module, name = _dispatch._kernels(backend), "allpole"
    original = getattr(module, name)

    def spy(x, A, zi):
        seen.append((tuple(A.shape), A.data_ptr()))
        return original(x, A, zi)

    monkeypatch.setattr(module, name, spy)
    sample_wise_lpc(x, A, zi)
    assert seen == [((1, T, N), A.data_ptr())]


def test_vmap_over_shared_coefficients(backend):
    """vmap with an unbatched shared a, and per-sample gradients of a batched one."""
    S, B, T, N = 3, 4, 20, 2
    xs, _, _ = lpc_case((S, B), (1,), None, T, N)
    _, A, _ = lpc_case((1,), (1,), None, T, N)
    _, As, _ = lpc_case((S, 1), (S, 1), None, T, N, seed=7)

    ys = torch.vmap(lambda x: sample_wise_lpc(x, A))(xs)
    assert_close(ys, reference_lpc(xs, A, None, (S, B)), DTYPE, "y")

    def loss(A, x):
        return sample_wise_lpc(x, A).square().sum()

    per_sample = torch.vmap(torch.func.grad(loss))(As, xs)
    for s in range(S):
        A_s = As[s].detach().requires_grad_()
        (expected,) = torch.autograd.grad(reference_lpc(xs[s], A_s, None, (B,)).square().sum(), A_s)
        assert_close(per_sample[s], expected, DTYPE, f"grad a, sample {s}")


def test_opcheck_with_a_shared_row():
    """The ops' schema, fake kernels, autograd and vmap with A of one row for B rows."""
    x, A, zi = lpc_case((3,), (1,), (3,), 9, 2)
    torch.library.opcheck(torch.ops.torchlpc.allpole.default, [t.requires_grad_() for t in (x, A, zi)])
    y = sample_wise_lpc(x.detach(), A.detach(), zi.detach())
    grad_y = randn(*y.shape, dtype=DTYPE, generator=make_generator(4))
    args = [t.detach().requires_grad_() for t in (grad_y, A, y, zi)]
    torch.library.opcheck(torch.ops.torchlpc.allpole_vjp.default, (*args, True))


@pytest.mark.parametrize(
    "x_batch, a_batch, zi_batch, T, N",
    [
        pytest.param((3,), (1,), (1,), 8, 2, id="shared-a"),
        pytest.param((2, 2), (2, 1), None, 8, 3, id="partial-a"),
    ],
)
def test_triton_broadcasts(monkeypatch, x_batch, a_batch, zi_batch, T, N):
    """Triton indexes A by row, so a shared row reaches it copied to the batch
    (by _dispatch); results and gradients are the same."""
    from torchlpc.kernels import cuda_triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unusable = cuda_triton.why_unusable(device)
    if unusable is not None and not os.environ.get("CI"):
        pytest.skip(f"Triton kernels cannot run: {unusable}")
    monkeypatch.setenv("TORCHLPC_BACKEND", "triton")
    inputs = [None if t is None else t.to(device) for t in lpc_case(x_batch, a_batch, zi_batch, T, N)]
    x, A, zi = leaves(*inputs)
    batch = torch.broadcast_shapes(x_batch, a_batch, zi_batch or ())
    y = sample_wise_lpc(x, A, zi)
    expected = reference_lpc(x, A, zi, batch)
    assert_close(y, expected, DTYPE, "y")
    got, want = gradients(y, (x, A, zi)), gradients(expected, (x, A, zi))
    for name, g, w in zip(("x", "a", "zi"), got, want):
        assert_close(g, w, DTYPE, f"grad {name}")
