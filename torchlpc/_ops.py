"""The ``torchlpc`` custom ops: schema, fake kernels, autograd, forward AD, vmap.

Two ops carry everything:

``torchlpc::allpole(x, A, zi) -> y``
    ``y[b, t] = x[b, t] - sum_i A[b, t, i-1] y[b, t-i]``, ``y[b, -1-k] = zi[b, k]``;
    x ``(B, T)``, A ``(B, T, N)`` or time-invariant ``(B, 1, N)``, zi ``(B, N)``;
    A may also have one row, ``(1, T, N)`` or ``(1, 1, N)``, shared by every row
    of x (read for each, never copied per row).
``torchlpc::allpole_vjp(grad_y, A, y, zi, need_A) -> (grad_x, grad_A, grad_zi)``
    the fused backward pass: the same filter run backwards in time, indexing A
    along the shifted diagonal; ``grad_A`` has A's shape (the sum over the rows
    for a shared A) and is empty when ``need_A`` is false.

The autograd kernels are ``torch.autograd.Function`` subclasses registered under
the ``Autograd`` dispatch key (rather than ``torch.library.register_autograd``)
because they also define ``jvp``: forward-mode AD needs it, and the dispatcher
hides the Function from Dynamo, so ``torch.compile`` sees one opaque op.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad

from . import _dispatch
from ._adjoint import lagged_dot, lagged_outer, lagged_scatter

_library = torch.library.Library("torchlpc", "DEF")
_library.define("allpole(Tensor x, Tensor A, Tensor zi) -> Tensor")
_library.define(
    "allpole_vjp(Tensor grad_y, Tensor A, Tensor y, Tensor zi, bool need_A) "
    "-> (Tensor, Tensor, Tensor)"
)

allpole = torch.ops.torchlpc.allpole.default
allpole_vjp = torch.ops.torchlpc.allpole_vjp.default


# ----------------------------------------------------------------------------
# Shape contract, shared by the fake kernels and the real ones.


def _raise_unless(condition: bool, message) -> None:
    """``torch._check`` for real tensors, at a fraction of its cost per call."""
    if not condition:
        raise RuntimeError(message())


def _check_operands(x: Tensor, A: Tensor, zi: Tensor, check=torch._check) -> None:
    """The ops' shape contract. Fake kernels check with ``torch._check``, which
    records symbolic shapes as guards; the real kernels use ``_raise_unless``."""
    check(x.dim() == 2, lambda: f"torchlpc::allpole: x must be (B, T), got {tuple(x.shape)}")
    check(A.dim() == 3, lambda: f"torchlpc::allpole: A must be (B, T, N), got {tuple(A.shape)}")
    check(zi.dim() == 2, lambda: f"torchlpc::allpole: zi must be (B, N), got {tuple(zi.shape)}")
    B, T = x.shape
    check(
        (A.shape[0] == B or A.shape[0] == 1)
        and (A.shape[1] == T or A.shape[1] == 1)
        and A.shape[2] >= 1,
        lambda: f"torchlpc::allpole: A {tuple(A.shape)} does not match x {tuple(x.shape)}",
    )
    check(
        zi.shape[0] == B and zi.shape[1] == A.shape[2],
        lambda: f"torchlpc::allpole: zi {tuple(zi.shape)} does not match A {tuple(A.shape)}",
    )
    check(
        x.dtype == A.dtype == zi.dtype,
        lambda: f"torchlpc::allpole: dtypes differ: x {x.dtype}, A {A.dtype}, zi {zi.dtype}",
    )


def _empty_grad_A(A: Tensor) -> Tensor:
    return A.new_empty((0, 0, 0))


@torch.library.register_fake("torchlpc::allpole")
def _allpole_fake(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    _check_operands(x, A, zi)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchlpc::allpole_vjp")
def _allpole_vjp_fake(grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool):
    _check_operands(y, A, zi)
    torch._check(grad_y.shape == y.shape, lambda: "torchlpc::allpole_vjp: grad_y and y differ in shape")
    torch._check(grad_y.dtype == y.dtype, lambda: "torchlpc::allpole_vjp: grad_y and y differ in dtype")
    grad_A = torch.empty_like(A, memory_format=torch.contiguous_format) if need_A else _empty_grad_A(A)
    return (
        torch.empty_like(grad_y, memory_format=torch.contiguous_format),
        grad_A,
        torch.empty_like(zi, memory_format=torch.contiguous_format),
    )


def _allpole_kernel(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    _check_operands(x, A, zi, _raise_unless)
    return _dispatch.allpole(x, A, zi)


def _allpole_vjp_kernel(grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool):
    _check_operands(y, A, zi, _raise_unless)
    _raise_unless(grad_y.shape == y.shape, lambda: "torchlpc::allpole_vjp: grad_y and y differ in shape")
    _raise_unless(grad_y.dtype == y.dtype, lambda: "torchlpc::allpole_vjp: grad_y and y differ in dtype")
    return _dispatch.allpole_vjp(grad_y, A, y, zi, need_A)


# One registration serves every device; _dispatch picks the kernel per device.
_library.impl("allpole", _allpole_kernel, "CompositeExplicitAutograd")
_library.impl("allpole_vjp", _allpole_vjp_kernel, "CompositeExplicitAutograd")


# ----------------------------------------------------------------------------
# Autograd.


def _zeros_if_none(tangent: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if tangent is None else tangent


def _rows_summed(grad_A: Tensor, shared: bool) -> Tensor:
    """The gradient of an A shared by every row: the sum over the rows. (Only
    second derivatives come here; the first is summed by _dispatch as it is made.)"""
    return grad_A.sum(0, keepdim=True) if shared else grad_A


def _below_autograd(op, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


class _AllpoleFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, A, zi):
        return _below_autograd(allpole, x, A, zi)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, A, zi = inputs
        ctx.save_for_backward(A, output, zi)
        ctx.save_for_forward(A, output, zi)

    @staticmethod
    def backward(ctx, grad_y):
        A, y, zi = ctx.saved_tensors
        need_x, need_A, need_zi = ctx.needs_input_grad
        grad_x, grad_A, grad_zi = filter_vjp_op(grad_y, A, y, zi, need_A)
        return (
            grad_x if need_x else None,
            grad_A if need_A else None,
            grad_zi if need_zi else None,
        )

    @staticmethod
    def jvp(ctx, dx, dA, dzi):
        # dy solves the same filter, driven by dx - sum_i dA[t, i-1] y[t-i], from state dzi.
        A, y, zi = ctx.saved_tensors
        drive = _zeros_if_none(dx, y)
        if dA is not None:
            drive = drive - lagged_dot(dA, y, zi)
        return filter_op(drive, A, _zeros_if_none(dzi, zi))


class _AllpoleVjpFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(grad_y, A, y, zi, need_A):
        return _below_autograd(allpole_vjp, grad_y, A, y, zi, need_A)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, A, y, zi, need_A = inputs
        grad_x = output[0]
        ctx.need_A = need_A
        ctx.mark_non_differentiable(*([] if need_A else [output[1]]))
        ctx.save_for_backward(A, y, zi, grad_x)
        ctx.save_for_forward(A, y, zi, grad_x)

    @staticmethod
    def backward(ctx, cot_grad_x, cot_grad_A, cot_grad_zi):
        A, y, zi, grad_x = ctx.saved_tensors
        N = A.shape[-1]
        time_invariant = A.shape[1] == 1
        shared = A.shape[0] != y.shape[0]
        has_cot_A = ctx.need_A and cot_grad_A is not None
        need_g, need_A, need_y, need_zi, _ = ctx.needs_input_grad

        # The cotangent reaching grad_x, and the forward filter applied to it
        # (started from the cotangent of grad_zi), give the grad_y and A parts.
        drive = _zeros_if_none(cot_grad_x, grad_x)
        if has_cot_A:
            drive = drive - lagged_dot(cot_grad_A, y, zi)
        h_state = _zeros_if_none(cot_grad_zi, zi)
        h = filter_op(drive, A, h_state)
        grad_A = None
        if need_A:
            grad_A = -_rows_summed(lagged_outer(grad_x, h, h_state, time_invariant), shared)

        grad_y_input = grad_zi_input = None
        if has_cot_A and (need_y or need_zi):
            grad_y_input, grad_zi_input = lagged_scatter(-cot_grad_A.conj(), grad_x, N)
        elif need_y or need_zi:
            grad_y_input, grad_zi_input = torch.zeros_like(y), torch.zeros_like(zi)
        return h if need_g else None, grad_A, grad_y_input, grad_zi_input, None

    @staticmethod
    def jvp(ctx, d_grad_y, dA, dy, dzi, _):
        A, y, zi, grad_x = ctx.saved_tensors
        N = A.shape[-1]
        drive = _zeros_if_none(d_grad_y, grad_x)
        lag_on_zi = None
        if dA is not None:
            lag_on_y, lag_on_zi = lagged_scatter(dA.conj(), grad_x, N)
            drive = drive - lag_on_y
        d_grad_x, d_grad_A, d_grad_zi = filter_vjp_op(drive, A, y, zi, ctx.need_A)
        if ctx.need_A and (dy is not None or dzi is not None):
            dy, dzi = _zeros_if_none(dy, y), _zeros_if_none(dzi, zi)
            lagged = lagged_outer(grad_x, dy, dzi, A.shape[1] == 1)
            d_grad_A = d_grad_A - _rows_summed(lagged, A.shape[0] != y.shape[0])
        if lag_on_zi is not None:
            d_grad_zi = d_grad_zi - lag_on_zi
        # Without need_A the grad_A output is an empty, non-differentiable placeholder.
        return d_grad_x, d_grad_A if ctx.need_A else None, d_grad_zi


# The Autograd kernels run on every call, so they are kept cheap. The Functions
# above are in the style torch.func needs (forward without ctx, setup_context);
# applying one of those binds its signature on every call, several times the cost
# of a small filter. The eager kernels therefore use the same derivatives through
# ctx-first subclasses, and skip autograd altogether when nothing needs a
# gradient or a tangent.
#
# In plain eager mode, where nothing but autograd can observe the call, the
# round trips through the dispatcher are skipped too and the kernels are called
# directly: every call into a Python kernel from the dispatcher costs about as
# much as filtering a few thousand samples. Anything else (torch.compile and the
# fake tensors it traces with, dispatch and function modes, tensor subclasses,
# lazy conjugate or negative views, the JIT tracer) goes through the registered
# ops, whose behaviour is the same.


# Dispatch key sets of plain tensors, per device, learnt from a new empty tensor
# the first time a device is seen. Anything else on a tensor (Batched from the
# legacy vmap of gradcheck, Conjugate, Negative, Python, functorch's wrappers)
# shows in its key set.
_plain_key_sets: set = set()


def _is_plain_eager(*tensors: Tensor) -> bool:
    if (
        torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._get_tracing_state() is not None
    ):
        return False
    for t in tensors:
        if type(t) is not Tensor:
            return False
        keys = torch._C._dispatch_keys(t).raw_repr()
        if keys not in _plain_key_sets:
            plain = torch._C._dispatch_keys(torch.empty(0, device=t.device)).raw_repr()
            _plain_key_sets.add(plain)
            if keys != plain:
                return False
    return True


def _run_allpole(x, A, zi):
    if _is_plain_eager(x, A, zi):
        return _dispatch.allpole(x, A, zi)
    return _below_autograd(allpole, x, A, zi)


def _run_allpole_vjp(grad_y, A, y, zi, need_A):
    if _is_plain_eager(grad_y, A, y, zi):
        return _dispatch.allpole_vjp(grad_y, A, y, zi, need_A)
    return _below_autograd(allpole_vjp, grad_y, A, y, zi, need_A)


def _ctx_first(function, run):
    """``function``'s derivatives, with a ctx-first forward that calls ``run``."""

    class CtxFirst(function):
        @staticmethod
        def forward(ctx, *inputs):
            output = run(*inputs)
            function.setup_context(ctx, inputs, output)
            return output

        setup_context = torch.autograd.Function.setup_context

    CtxFirst.__name__ = CtxFirst.__qualname__ = f"{function.__name__}CtxFirst"
    return CtxFirst


# Called by the Autograd kernels, which may see any kind of tensor...
_AllpoleEagerFunction = _ctx_first(_AllpoleFunction, _run_allpole)
_AllpoleVjpEagerFunction = _ctx_first(_AllpoleVjpFunction, _run_allpole_vjp)
# ...and by filter_op and filter_vjp_op once they know the call is plain eager.
_AllpoleDirectFunction = _ctx_first(_AllpoleFunction, _dispatch.allpole)
_AllpoleVjpDirectFunction = _ctx_first(_AllpoleVjpFunction, _dispatch.allpole_vjp)


def _needs_autograd(*tensors: Tensor) -> bool:
    if forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _allpole_autograd(x, A, zi):
    if _needs_autograd(x, A, zi):
        return _AllpoleEagerFunction.apply(x, A, zi)
    return _run_allpole(x, A, zi)


def _allpole_vjp_autograd(grad_y, A, y, zi, need_A):
    if _needs_autograd(grad_y, A, y, zi):
        return _AllpoleVjpEagerFunction.apply(grad_y, A, y, zi, need_A)
    return _run_allpole_vjp(grad_y, A, y, zi, need_A)


_library.impl("allpole", _allpole_autograd, "Autograd")
_library.impl("allpole_vjp", _allpole_vjp_autograd, "Autograd")


# torch.func transforms (grad, vjp, jacrev, jvp...) cannot run an autograd.Function
# from inside the dispatcher, so under them the Functions are applied directly.
# Plain eager calls go straight to the Autograd kernels (see above); everything
# else calls the registered ops.


def filter_op(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """``torchlpc::allpole`` with autograd, usable under every transform."""
    if torch._C._are_functorch_transforms_active():
        return _AllpoleFunction.apply(x, A, zi)
    if _is_plain_eager(x, A, zi):
        if _needs_autograd(x, A, zi):
            return _AllpoleDirectFunction.apply(x, A, zi)
        return _dispatch.allpole(x, A, zi)
    return allpole(x, A, zi)


def filter_vjp_op(grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool):
    """``torchlpc::allpole_vjp`` with autograd, usable under every transform."""
    if torch._C._are_functorch_transforms_active():
        return _AllpoleVjpFunction.apply(grad_y, A, y, zi, need_A)
    if _is_plain_eager(grad_y, A, y, zi):
        if _needs_autograd(grad_y, A, y, zi):
            return _AllpoleVjpDirectFunction.apply(grad_y, A, y, zi, need_A)
        return _dispatch.allpole_vjp(grad_y, A, y, zi, need_A)
    return allpole_vjp(grad_y, A, y, zi, need_A)


# ----------------------------------------------------------------------------
# linear_recurrence, y[t] = a[t] y[t-1] + x[t], is allpole with A = -a. On the
# numba backend in plain eager mode the pole goes to the kernels as it is, and
# no negated copy of it (nor of its gradient) is made: two passes over memory of
# the signal's size, a third of the work of a first-order filter.


class _LinearRecurrenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, x, zi):
        y = _dispatch._kernels("numba").linear_recurrence(a, x, zi)
        ctx.save_for_backward(a, y, zi)
        ctx.save_for_forward(a, y, zi)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        a, y, zi = ctx.saved_tensors
        need_a, need_x, need_zi = ctx.needs_input_grad
        if (
            not torch.is_grad_enabled()
            and _is_plain_eager(grad_y)
            and _dispatch.numba_ready("linear_recurrence_vjp", grad_y)
        ):
            grad_a, grad_x, grad_zi = _dispatch._kernels("numba").linear_recurrence_vjp(
                grad_y, a, y, zi, need_a
            )
        else:
            # create_graph (derivatives of this one), an upstream gradient that is
            # no plain tensor (batched by gradcheck, say), or the kernel still
            # compiling: the op.
            grad_x, grad_A, grad_zi = filter_vjp_op(grad_y, -a[..., None], y, zi[..., None], need_a)
            grad_a, grad_zi = (-grad_A[..., 0] if need_a else None), grad_zi[..., 0]
        return grad_a, grad_x if need_x else None, grad_zi if need_zi else None

    @staticmethod
    def jvp(ctx, da, dx, dzi):
        # dy is the same recurrence driven by dx + da[t] y[t-1], from state dzi.
        a, y, zi = ctx.saved_tensors
        drive = _zeros_if_none(dx, y)
        if da is not None:
            drive = drive + da * torch.cat([zi[:, None], y[:, :-1]], dim=1)
        return linear_recurrence_op(a, drive, _zeros_if_none(dzi, zi))


def _numba_runs(x: Tensor) -> bool:
    """Whether linear_recurrence's own numba kernels take a call on x (the
    environment read once)."""
    forced = _dispatch.requested_backend()
    return _dispatch.select_backend(x.device, x.dtype, forced) == "numba" and _dispatch.numba_ready(
        "linear_recurrence", x, forced=forced
    )


def linear_recurrence_op(a: Tensor, x: Tensor, zi: Tensor) -> Tensor:
    """``y[t] = a[t] y[t-1] + x[t]`` for a, x ``(B, T)`` with T >= 2 and zi ``(B,)``."""
    if (
        not torch._C._are_functorch_transforms_active()
        and _is_plain_eager(a, x, zi)
        and _numba_runs(x)
    ):
        if _needs_autograd(a, x, zi):
            return _LinearRecurrenceFunction.apply(a, x, zi)
        return _dispatch._kernels("numba").linear_recurrence(a, x, zi)
    return filter_op(x, -a[..., None], zi[..., None])


# ----------------------------------------------------------------------------
# vmap: fold the vmapped dimension into the batch dimension.


def _fold(tensor: Tensor, bdim: int | None, size: int) -> Tensor:
    if bdim is None:
        tensor = tensor.unsqueeze(0).expand(size, *tensor.shape)
    else:
        tensor = tensor.movedim(bdim, 0)
    return tensor.reshape(size * tensor.shape[1], *tensor.shape[2:])


def _unfold(tensor: Tensor, size: int) -> Tensor:
    return tensor.reshape(size, tensor.shape[0] // size, *tensor.shape[1:])


def _rows_of(A: Tensor, bdim: int | None, rows: int) -> Tensor:
    """A (its vmapped dim first, if any) with a per-sample batch of 1 expanded to
    ``rows``: once folded, a shared row would serve other samples' rows too."""
    if bdim is None:
        return A if A.shape[0] == rows else A.expand(rows, *A.shape[1:])
    A = A.movedim(bdim, 0)
    return A if A.shape[1] == rows else A.expand(A.shape[0], rows, *A.shape[2:])


def _x_rows(x: Tensor, bdim: int | None) -> int:
    return x.shape[0] if bdim is None else x.movedim(bdim, 0).shape[1]


@torch.library.register_vmap("torchlpc::allpole")
def _allpole_vmap(info, in_dims, x, A, zi):
    size = info.batch_size
    x_dim, A_dim, zi_dim = in_dims
    if A_dim is not None or A.shape[0] != 1:
        # (One unbatched row serves every row of every sample as it is.)
        A = _fold(_rows_of(A, A_dim, _x_rows(x, x_dim)), None if A_dim is None else 0, size)
    x, zi = _fold(x, x_dim, size), _fold(zi, zi_dim, size)
    return _unfold(allpole(x, A, zi), size), 0


@torch.library.register_vmap("torchlpc::allpole_vjp")
def _allpole_vjp_vmap(info, in_dims, grad_y, A, y, zi, need_A):
    size = info.batch_size
    g_dim, A_dim, y_dim, zi_dim = in_dims[:4]
    A_rows = A.shape[0] if A_dim is None else A.movedim(A_dim, 0).shape[1]
    if A_dim is not None or A_rows != 1 or need_A:
        # grad_A is per sample: a shared row is given to each sample separately.
        A = _fold(_rows_of(A, A_dim, _x_rows(y, y_dim)), None if A_dim is None else 0, size)
    grad_y, y, zi = _fold(grad_y, g_dim, size), _fold(y, y_dim, size), _fold(zi, zi_dim, size)
    grad_x, grad_A, grad_zi = allpole_vjp(grad_y, A, y, zi, need_A)
    if need_A:
        grad_A = _unfold(grad_A, size)
        if A_rows != grad_A.shape[1]:
            grad_A = grad_A.sum(1, keepdim=True)
    return (_unfold(grad_x, size), grad_A, _unfold(grad_zi, size)), (0, 0 if need_A else None, 0)
