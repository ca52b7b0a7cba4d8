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


def _is_time_invariant(A: Tensor) -> bool:
    return A.shape[-2] == 1 or (A.stride(-2) == 0 and A.shape[-2] > 1)


class _FirstRow(torch.autograd.Function):
    """``A[..., :1, :]`` of ``A`` expanded along time, with a gradient expanded too.

    A slice would hand the expanded view a gradient of zeros in every row but
    the first, a dense ``(*, T, N)`` tensor that the expand's backward then sums
    over time. Any gradient that sums over time to the row's gradient serves the
    tensor that was expanded; spread evenly over the T rows it is a stride-0 view.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A):
        return A[..., :1, :].clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.T = inputs[0].shape[-2]

    @staticmethod
    def backward(ctx, grad):
        return (grad / ctx.T).expand(*grad.shape[:-2], ctx.T, grad.shape[-1])

    @staticmethod
    def jvp(ctx, tangent):
        return tangent[..., :1, :]


def _time_invariant_row(A: Tensor) -> Tensor:
    """The one coefficient row of time-invariant ``A``: ``(*, 1, N)``, never ``(*, T, N)``."""
    if A.shape[-2] == 1:
        return A
    if torch.compiler.is_compiling():
        # Dynamo cannot trace a Function with a jvp; the compiled backward fuses
        # the slice's zero gradient into the expand's sum instead.
        return A[..., :1, :]
    return _FirstRow.apply(A)


def _filter(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """Flatten leading dims, upcast half precision, run the op, restore both."""
    batch, T, N = x.shape[:-1], x.shape[-1], A.shape[-1]
    B = math.prod(batch)
    dtype = x.dtype
    if _is_time_invariant(A):
        # Before the upcast, which would copy an expanded view into a dense tensor.
        A = _time_invariant_row(A)
    if dtype in _COMPUTED_IN_FLOAT32:
        x, A, zi = x.float(), A.float(), zi.float()
    if x.dim() != 2:
        x, A, zi = x.reshape(B, T), A.reshape(B, A.shape[-2], N), zi.reshape(B, N)
    y = _ops.filter_op(x, A, zi)
    if len(batch) != 1:
        y = y.reshape(*batch, T)
    return y if y.dtype == dtype else y.to(dtype)


def sample_wise_lpc(
    x: Tensor, A: Tensor, zi: Tensor | None = None, return_zf: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Filter ``x`` with a time-varying all-pole (LPC) filter.

    .. math::
        y[t] = x[t] - \sum_{i=1}^{N} A[t, i-1]\, y[t-i]

    The filter is run independently over every leading (batch) index. Values
    before the start come from ``zi``, most recent first: ``y[-1-k] = zi[k]``.

    Args:
        x: input signal.
        A: filter coefficients, one row of N per sample; a time dimension of size 1,
            or an expanded view with stride 0 along time, gives a time-invariant
            filter, which runs on a cheaper path and gets its gradient summed
            over time.
        zi: initial conditions, ``zi[..., k] = y[..., -1-k]``. Default: zeros.
        return_zf: also return the final conditions ``zf[..., k] = y[..., T-1-k]``
            (which reach back into ``zi`` when ``T < N``). Default: ``False``.

    Shape:
        - x: ``(*, T)``
        - A: ``(*, T, N)`` or ``(*, 1, N)``
        - zi: ``(*, N)``
        - output: ``(*, T)``, and zf: ``(*, N)``

    Returns:
        ``y``, or ``(y, zf)`` when ``return_zf`` is true. ``y`` has the dtype of
        ``x``; float16 and bfloat16 inputs are computed in float32.

    Raises:
        TypeError: a non-tensor argument, an integer or boolean dtype, or dtypes
            that differ between x, A and zi.
        ValueError: shapes that do not fit together, N = 0, or tensors on
            different devices.

    Example:
        >>> import torch
        >>> from torchlpc import sample_wise_lpc
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> A = torch.full((1, 4, 1), -0.5)  # y[t] = x[t] + 0.5 y[t-1]
        >>> sample_wise_lpc(x, A)
        tensor([[1.0000, 0.5000, 0.2500, 0.1250]])
        >>> y, zf = sample_wise_lpc(x, A, zi=torch.tensor([[2.0]]), return_zf=True)
        >>> y, zf
        (tensor([[2.0000, 1.0000, 0.5000, 0.2500]]), tensor([[0.2500]]))
    """
    name = "sample_wise_lpc"
    _check_tensor(name, "x", x)
    _check_tensor(name, "A", A)
    if x.dim() < 1:
        raise ValueError(f"{name}: x must have shape (*, T), got a 0-dimensional tensor.")
    if A.dim() != x.dim() + 1:
        raise ValueError(
            f"{name}: A must have shape (*, T, N) or (*, 1, N), one more dimension than "
            f"x (*, T); got x {_shape(x)} and A {_shape(A)}."
        )
    T, N = x.shape[-1], A.shape[-1]
    # (Not `in (T, 1)`: Dynamo cannot trace that with a symbolic T.)
    if A.shape[:-2] != x.shape[:-1] or (A.shape[-2] != T and A.shape[-2] != 1):
        raise ValueError(
            f"{name}: A {_shape(A)} does not fit x {_shape(x)}: expected "
            f"{_shape(x)[:-1]}, N) with a time dimension of {T} (time-varying) or 1 "
            "(time-invariant)."
        )
    if N == 0:
        raise ValueError(f"{name}: A {_shape(A)} has filter order N = 0; N must be at least 1.")
    named = {"x": x, "A": A}
    if zi is not None:
        _check_tensor(name, "zi", zi)
        if zi.shape != (*x.shape[:-1], N):
            raise ValueError(
                f"{name}: zi must have shape (*, N) = {(*x.shape[:-1], N)} to fit x "
                f"{_shape(x)} and A {_shape(A)}; got {_shape(zi)}."
            )
        named["zi"] = zi
    _check_same_dtype_and_device(name, named)
    if zi is None:
        zi = x.new_zeros(*x.shape[:-1], N)

    y = _filter(x, A, zi)
    if not return_zf:
        return y
    zf = torch.cat([y[..., -N:].flip(-1), zi], dim=-1)[..., :N]
    return y, zf


def linear_recurrence(a: Tensor, x: Tensor, zi: Tensor | None = None) -> Tensor:
    r"""First-order linear recurrence (a one-pole filter with time-varying pole).

    .. math::
        y[t] = a[t]\, y[t-1] + x[t]

    This is :func:`sample_wise_lpc` with ``N = 1`` and ``A = -a``, and shares its
    kernels and gradients.

    Args:
        a: the pole (decay) at each sample; a time dimension of size 1 gives a
            time-invariant recurrence.
        x: input signal.
        zi: the value of ``y[-1]``. Default: zeros.

    Shape:
        - a: ``(*, T)`` or ``(*, 1)``
        - x: ``(*, T)``
        - zi: ``(*)``
        - output: ``(*, T)``

    Returns:
        ``y`` with the dtype of ``x``.

    Raises:
        TypeError: a non-tensor argument, an integer or boolean dtype, or dtypes
            that differ between a, x and zi.
        ValueError: shapes that do not fit together, or tensors on different devices.

    Example:
        >>> import torch
        >>> from torchlpc import linear_recurrence
        >>> linear_recurrence(torch.full((1, 4), 0.5), torch.ones(1, 4))
        tensor([[1.0000, 1.5000, 1.7500, 1.8750]])
    """
    name = "linear_recurrence"
    _check_tensor(name, "a", a)
    _check_tensor(name, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{name}: x must have shape (*, T), got a 0-dimensional tensor.")
    T = x.shape[-1]
    # (Not `in (T, 1)`: Dynamo cannot trace that with a symbolic T.)
    if (
        a.shape[:-1] != x.shape[:-1]
        or a.dim() != x.dim()
        or (a.shape[-1] != T and a.shape[-1] != 1)
    ):
        raise ValueError(
            f"{name}: a must have shape (*, T) = {_shape(x)} or (*, 1) for a time-invariant "
            f"recurrence; got a {_shape(a)} and x {_shape(x)}."
        )
    named = {"x": x, "a": a}
    if zi is not None:
        _check_tensor(name, "zi", zi)
        if zi.shape != x.shape[:-1]:
            raise ValueError(
                f"{name}: zi must have shape (*) = {tuple(x.shape[:-1])} to fit x {_shape(x)}; "
                f"got {_shape(zi)}."
            )
        named["zi"] = zi
    _check_same_dtype_and_device(name, named)
    if zi is None:
        zi = x.new_zeros(x.shape[:-1])
    if a.shape[-1] > 1 and a.stride(-1) == 0:
        # Expanded along time: negating the view would make it dense.
        a = _time_invariant_row(a[..., None])[..., 0]
    elif a.shape[-1] > 1 and x.dtype in _SUPPORTED:
        # Time-varying: the pole as it is, where the kernels take it so.
        B = math.prod(x.shape[:-1])
        y = _ops.linear_recurrence_op(a.reshape(B, T), x.reshape(B, T), zi.reshape(B))
        return y.reshape(x.shape)
    return _filter(x, -a[..., None], zi[..., None])


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
