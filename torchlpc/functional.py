"""Public entry points: argument checks, shape normalisation, one op call each."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _ops

__all__ = ["sample_wise_lpc", "linear_recurrence", "empty_cpu_cache"]

_SUPPORTED = (torch.float32, torch.float64, torch.complex64, torch.complex128)
_COMPUTED_IN_FLOAT32 = (torch.float16, torch.bfloat16)


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_flag(function: str, name: str, value) -> None:
    """A bool argument: a truthy string or tensor would otherwise pass silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{function}: {name} must be a bool, got {type(value).__name__}.")


def _check_tensor(function: str, name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}.")
    if value.dtype not in _SUPPORTED + _COMPUTED_IN_FLOAT32:
        raise TypeError(
            f"{function}: {name} has dtype {value.dtype}; expected a floating point or "
            "complex dtype (float16, bfloat16, float32, float64, complex64, complex128)."
        )


def _check_same_dtype_and_device(function: str, named: dict[str, Tensor]) -> None:
    (first_name, first), *rest = named.items()
    for name, tensor in rest:
        if tensor.dtype != first.dtype:
            raise TypeError(
                f"{function}: {name} has dtype {tensor.dtype} but {first_name} has dtype "
                f"{first.dtype}; convert them to one dtype."
            )
        if tensor.device != first.device:
            raise ValueError(
                f"{function}: {name} is on {tensor.device} but {first_name} is on "
                f"{first.device}; move them to one device."
            )


def _broadcast_batch(function: str, shapes: dict[str, torch.Size]) -> tuple:
    """The batch shape of the output: the leading dims of every argument, broadcast.

    By hand rather than ``torch.broadcast_shapes``, which costs as much as
    filtering a short signal."""
    first, *others = shapes.values()
    if all(shape == first for shape in others):
        return tuple(first)
    batch: list = []
    for shape in shapes.values():
        if len(shape) > len(batch):
            batch = [1] * (len(shape) - len(batch)) + batch
        offset = len(batch) - len(shape)
        for k, size in enumerate(shape):
            if size != 1:
                if batch[offset + k] == 1:
                    batch[offset + k] = size
                elif batch[offset + k] != size:
                    listed = ", ".join(f"{name} {tuple(s)}" for name, s in shapes.items())
                    raise ValueError(
                        f"{function}: the batch (leading) dimensions do not broadcast: {listed}."
                    )
    return tuple(batch)


def _is_time_invariant(A: Tensor) -> bool:
    return A.shape[-2] == 1 or (A.stride(-2) == 0 and A.shape[-2] > 1)


def _is_shared(A: Tensor) -> bool:
    """Whether ``A (*, T, N)`` has one batch row, broadcast to every signal: each
    batch dim has size 1. (A view expanded with stride 0 has a gradient per
    logical row, which a leaf made from it must get: it takes the general path.)"""
    return all(s == 1 for s in A.shape[:-2])


class _FirstAlong(torch.autograd.Function):
    """The first entry of ``A`` along the (negative) ``dims`` it is expanded along,
    kept as dims of size 1, with a gradient expanded back.

    A slice would hand the expanded view a gradient of zeros everywhere but at
    the first entry, a dense tensor of the view's size that the expansion's
    backward then sums. Any gradient that sums over those dims to the entry's
    gradient serves the tensor that was expanded; spread evenly it is a stride-0
    view.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A, dims):
        return A[_first_index(A.dim(), dims)].clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        A, ctx.dims = inputs
        ctx.shape = A.shape

    @staticmethod
    def backward(ctx, grad):
        count = math.prod(ctx.shape[d] for d in ctx.dims)
        return (grad / count).expand(ctx.shape), None

    @staticmethod
    def jvp(ctx, tangent, _):
        return tangent[_first_index(len(ctx.shape), ctx.dims)]


def _first_index(dim: int, dims: tuple[int, ...]) -> tuple:
    return (Ellipsis, *(slice(0, 1) if d in dims else slice(None) for d in range(-dim, 0)))


def _first_along(A: Tensor, dims: tuple[int, ...]) -> Tensor:
    if torch.compiler.is_compiling():
        # Dynamo cannot trace a Function with a jvp; the compiled backward fuses
        # the slice's zero gradient into the expansion's sum instead.
        return A[_first_index(A.dim(), dims)]
    return _FirstAlong.apply(A, dims)


def _time_invariant_row(A: Tensor) -> Tensor:
    """The one coefficient row of time-invariant ``A``: ``(*, 1, N)``, never ``(*, T, N)``."""
    if A.shape[-2] == 1:
        return A
    return _first_along(A, (-2,))


def _shared_row(A: Tensor) -> Tensor:
    """The one batch row of ``A (*, T, N)`` that :func:`_is_shared`: ``(1, T, N)``,
    a view where no batch dim is expanded."""
    expanded = tuple(d for d in range(-A.dim(), -2) if A.shape[d] > 1)
    if expanded:
        A = _first_along(A, expanded)
    return A.reshape(1, *A.shape[-2:])


def _flat(t: Tensor, batch: tuple, B: int) -> Tensor:
    """``t (*, K)`` broadcast to ``(*batch, K)`` and flattened to ``(B, K)``."""
    if t.shape[:-1] != batch:
        t = t.expand(*batch, t.shape[-1])
    return t if t.dim() == 2 else t.reshape(B, t.shape[-1])


def _filter(x: Tensor, A: Tensor, zi: Tensor | None, batch: tuple) -> Tensor:
    """Broadcast, flatten the batch, upcast half precision, run the op, restore both.

    Coefficients shared by every row go to the op as one row, ``(1, T, N)``, which
    the kernels index for every row: no copy of them per row. A time-invariant
    ``(B, 1, N)`` is small enough to copy; a partial broadcast (some batch dims
    shared, others not) is copied to the full batch.
    """
    T, N = x.shape[-1], A.shape[-1]
    B = math.prod(batch)
    dtype = x.dtype
    # Before the upcast, which would copy an expanded view into a dense tensor.
    rows = B
    if _is_time_invariant(A):
        A = _time_invariant_row(A)
        if A.shape[:-2] != batch:
            A = A.expand(*batch, 1, N)
    elif B > 1 and _is_shared(A):
        A, rows = _shared_row(A), 1
    elif A.shape[:-2] != batch:
        A = A.expand(*batch, T, N)
    if zi is None:
        zi = x.new_zeros(*batch, N)
    if dtype in _COMPUTED_IN_FLOAT32:
        x, A, zi = x.float(), A.float(), zi.float()
    x = _flat(x, batch, B)
    if A.dim() != 3:
        A = A.reshape(rows, A.shape[-2], N)
    zi = _flat(zi, batch, B)
    y = _ops.filter_op(x, A, zi)
    if len(batch) != 1:
        y = y.reshape(*batch, T)
    return y if y.dtype == dtype else y.to(dtype)


def sample_wise_lpc(
    x: Tensor, a: Tensor, zi: Tensor | None = None, return_zf: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Filter ``x`` with a time-varying all-pole (LPC) filter.

    .. math::
        y[t] = x[t] - \sum_{i=1}^{N} a[t, i-1]\, y[t-i]

    The filter is run independently over every leading (batch) index. Values
    before the start come from ``zi``, most recent first: ``y[-1-k] = zi[k]``.
    The leading dimensions of ``x``, ``a`` and ``zi`` broadcast against each other
    by PyTorch's rules: one filter ``a`` of batch size 1 (or with no batch
    dimensions) serves every row of ``x``, without a copy per row, and gets the
    sum of their gradients. The signature and argument names are torchlpc 0.7's.

    Args:
        x: input signal.
        a: filter coefficients, one row of N per sample; a time dimension of size 1,
            or an expanded view with stride 0 along time, gives a time-invariant
            filter, which runs on a cheaper path and gets its gradient summed
            over time. Batch dimensions of size 1 broadcast against x's: that
            one row is read for every signal, and its gradient is summed.
        zi: initial conditions, ``zi[..., k] = y[..., -1-k]``. Default: zeros.
        return_zf: also return the final conditions ``zf[..., k] = y[..., T-1-k]``
            (which reach back into ``zi`` when ``T < N``). Default: ``False``.

    Shape:
        - x: ``(*, T)``
        - a: ``(*, T, N)`` or ``(*, 1, N)``
        - zi: ``(*, N)``
        - output: ``(*, T)``, and zf: ``(*, N)``, with ``*`` the broadcast batch shape

    Returns:
        ``y``, or ``(y, zf)`` when ``return_zf`` is true. ``y`` has the dtype of
        ``x``; float16 and bfloat16 inputs are computed in float32.

    Raises:
        TypeError: a non-tensor argument, an integer or boolean dtype, or dtypes
            that differ between x, a and zi.
        ValueError: shapes that do not fit together (batch dimensions that do not
            broadcast included), N = 0, or tensors on different devices.

    Example:
        >>> import torch
        >>> from torchlpc import sample_wise_lpc
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> a = torch.full((1, 4, 1), -0.5)  # y[t] = x[t] + 0.5 y[t-1]
        >>> sample_wise_lpc(x, a)
        tensor([[1.0000, 0.5000, 0.2500, 0.1250]])
        >>> y, zf = sample_wise_lpc(x, a, zi=torch.tensor([[2.0]]), return_zf=True)
        >>> y, zf
        (tensor([[2.0000, 1.0000, 0.5000, 0.2500]]), tensor([[0.2500]]))
        >>> sample_wise_lpc(torch.ones(3, 4), a).shape  # one filter, three signals
        torch.Size([3, 4])
    """
    return _sample_wise_lpc("sample_wise_lpc", x, a, zi, return_zf)


def _sample_wise_lpc(name: str, x, a, zi, return_zf: bool, a_name: str = "a"):
    """sample_wise_lpc, its errors naming the function ``name`` and the coefficients
    ``a_name`` (the 0.7 entry points share it)."""
    _check_tensor(name, "x", x)
    _check_tensor(name, a_name, a)
    _check_flag(name, "return_zf", return_zf)
    if x.dim() < 1:
        raise ValueError(f"{name}: x must have shape (*, T), got a 0-dimensional tensor.")
    if a.dim() < 2:
        raise ValueError(
            f"{name}: {a_name} must have shape (*, T, N) or (*, 1, N), at least 2 dimensions; "
            f"got x {_shape(x)} and {a_name} {_shape(a)}."
        )
    T, N = x.shape[-1], a.shape[-1]
    # (Not `in (T, 1)`: Dynamo cannot trace that with a symbolic T.)
    if a.shape[-2] != T and a.shape[-2] != 1:
        raise ValueError(
            f"{name}: {a_name} {_shape(a)} does not fit x {_shape(x)}: its time dimension "
            f"(second to last) must be {T} (time-varying) or 1 (time-invariant)."
        )
    if N == 0:
        raise ValueError(f"{name}: {a_name} {_shape(a)} has filter order N = 0; N must be at least 1.")
    named = {"x": x, a_name: a}
    batches = {"x": x.shape[:-1], a_name: a.shape[:-2]}
    if zi is not None:
        _check_tensor(name, "zi", zi)
        if zi.dim() < 1 or zi.shape[-1] != N:
            raise ValueError(
                f"{name}: zi must have shape (*, N) with N = {N} to fit {a_name} {_shape(a)}; "
                f"got {_shape(zi)}."
            )
        named["zi"] = zi
        batches["zi"] = zi.shape[:-1]
    _check_same_dtype_and_device(name, named)
    batch = _broadcast_batch(name, batches)

    y = _filter(x, a, zi, batch)
    if not return_zf:
        return y
    past = y.new_zeros(*batch, N) if zi is None else zi.expand(*batch, N)
    zf = torch.cat([y[..., -N:].flip(-1), past], dim=-1)[..., :N]
    return y, zf


def linear_recurrence(a: Tensor, x: Tensor, zi: Tensor | None = None) -> Tensor:
    r"""First-order linear recurrence (a one-pole filter with time-varying pole).

    .. math::
        y[t] = a[t]\, y[t-1] + x[t]

    This is :func:`sample_wise_lpc` with ``N = 1`` and ``a`` negated, and shares
    its kernels, its gradients and its broadcasting of the leading dimensions: a
    pole of batch size 1 serves every row of ``x`` without a copy per row.

    Args:
        a: the pole (decay) at each sample; a time dimension of size 1 gives a
            time-invariant recurrence.
        x: input signal.
        zi: the value of ``y[-1]``. Default: zeros.

    Shape:
        - a: ``(*, T)`` or ``(*, 1)``
        - x: ``(*, T)``
        - zi: ``(*)``
        - output: ``(*, T)`` with ``*`` the broadcast batch shape

    Returns:
        ``y`` with the dtype of ``x``.

    Raises:
        TypeError: a non-tensor argument, an integer or boolean dtype, or dtypes
            that differ between a, x and zi.
        ValueError: shapes that do not fit together (batch dimensions that do not
            broadcast included), or tensors on different devices.

    Example:
        >>> import torch
        >>> from torchlpc import linear_recurrence
        >>> linear_recurrence(torch.full((1, 4), 0.5), torch.ones(1, 4))
        tensor([[1.0000, 1.5000, 1.7500, 1.8750]])
    """
    return _linear_recurrence("linear_recurrence", a, x, zi)


def _linear_recurrence(name: str, a, x, zi, names: tuple[str, str, str] = ("a", "x", "zi")):
    """linear_recurrence, its errors naming the function ``name`` and the arguments
    ``names`` (the 0.7 entry points share it)."""
    an, xn, zn = names
    _check_tensor(name, an, a)
    _check_tensor(name, xn, x)
    if x.dim() < 1:
        raise ValueError(f"{name}: {xn} must have shape (*, T), got a 0-dimensional tensor.")
    T = x.shape[-1]
    # (Not `in (T, 1)`: Dynamo cannot trace that with a symbolic T.)
    if a.dim() < 1 or (a.shape[-1] != T and a.shape[-1] != 1):
        raise ValueError(
            f"{name}: {an} must have shape (*, T) with T = {T} as in {xn}, or (*, 1) for a "
            f"time-invariant recurrence; got {an} {_shape(a)} and {xn} {_shape(x)}."
        )
    named = {xn: x, an: a}
    batches = {an: a.shape[:-1], xn: x.shape[:-1]}
    if zi is not None:
        _check_tensor(name, zn, zi)
        named[zn] = zi
        batches[zn] = zi.shape
    _check_same_dtype_and_device(name, named)
    batch = _broadcast_batch(name, batches)
    A = a[..., None]
    state = None if zi is None else zi[..., None]
    if _is_time_invariant(A):
        # Before the negation, which would copy an expanded view into a dense tensor.
        A = _time_invariant_row(A)
    elif T > 1 and a.shape[:-1] == batch and x.dtype in _SUPPORTED:
        # One pole row per signal row: the pole as it is, where the kernels take it so.
        B = math.prod(batch)
        x = _flat(x, batch, B)
        if zi is None:
            zi = x.new_zeros(B)
        else:
            zi = (zi if zi.shape == batch else zi.expand(batch)).reshape(B)
        y = _ops.linear_recurrence_op(a.reshape(B, T), x, zi)
        return y.reshape(*batch, T)
    elif _is_shared(A):
        A = _shared_row(A)
    return _filter(x, -A, state, batch)


def empty_cpu_cache() -> int:
    """Release the memory that torchlpc's CPU kernels keep for their outputs.

    The numba kernels cut every output of 1 MiB or more (``y``, ``grad_x``,
    ``grad_A``) from memory that they keep once the tensor is freed, so that the
    next call of a training loop writes to memory that is already mapped rather
    than taking a page fault per 4 KiB on it (on the benchmark machine up to 40%
    of a forward+backward pass). At most ``TORCHLPC_CPU_CACHE_MB`` MiB are kept
    (read when the CPU kernels are first used; 1024 by default, 0 turns the
    cache off), the least recently used dropped first.

    No tensor torchlpc returns ever changes after it is returned, whatever is
    done with it: the memory comes back to the cache only when its storage is
    destroyed (nothing in this process refers to it any more: no tensor, view,
    storage object, saved tensor, NumPy array, ``memoryview`` or DLPack capsule;
    a weak reference to the storage dies with it) or when the storage moves its
    data elsewhere (``share_memory_``, which ``torch.multiprocessing`` queues and
    pipes and DataLoader workers use, copies it into a new shared segment).
    Other processes never see the kept memory, and a forked child writes to its
    own copy. A raw address (``data_ptr()``) holds nothing, as with
    ``torch.empty``. Such an output's storage cannot grow: ``resize_`` to a
    larger size raises, as for a tensor made by ``torch.from_numpy``.

    Like ``torch.cuda.empty_cache`` for CUDA memory, this gives back everything
    no tensor uses, e.g. after training and before other work that needs it.

    Returns:
        The number of bytes released.

    Example:
        >>> x, A = torch.randn(4, 1 << 17), torch.full((4, 1 << 17, 2), 0.1)
        >>> y = sample_wise_lpc(x, A)
        >>> del y  # its 2 MiB are kept for the next call...
        >>> empty_cpu_cache() >= 2 << 20  # ...until released
        True
    """
    from .kernels import _buffers

    return _buffers.release_free()
