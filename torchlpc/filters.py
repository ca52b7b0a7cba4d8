"""General IIR filtering (poles and zeros) built on the all-pole core."""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import _check_flag
from .functional import (
    _COMPUTED_IN_FLOAT32,
    _check_same_dtype_and_device,
    _check_tensor,
    _shape,
    sample_wise_lpc,
)

__all__ = ["lfilter"]


def _as_coefficients(name: str, c: Tensor) -> Tensor:
    """A 1-D ``(K,)`` coefficient vector is one time-invariant filter ``(1, K)``."""
    if c.dim() == 0:
        raise ValueError(
            f"lfilter: {name} must have shape (*, T, K), (*, 1, K) or (K,); got a "
            "0-dimensional tensor."
        )
    return c[None] if c.dim() == 1 else c


def _one_row_if_expanded(c: Tensor) -> Tensor:
    """A view expanded along time (stride 0) is time-invariant: keep one row."""
    return c[..., :1, :] if c.shape[-2] > 1 and c.stride(-2) == 0 else c


def _check_state(name: str, value, size: int, what: str) -> None:
    _check_tensor("lfilter", name, value)
    if value.dim() < 1 or value.shape[-1] != size:
        raise ValueError(
            f"lfilter: {name} must have shape (*, {size}), holding {what}; got {_shape(value)}."
        )


def lfilter(
    b: Tensor,
    a: Tensor,
    x: Tensor,
    zi: tuple[Tensor | None, Tensor | None] | None = None,
    return_zf: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    r"""Filter ``x`` with a (time-varying) IIR filter given by numerator and denominator.

    .. math::
        a[t, 0]\, y[t] = \sum_{j=0}^{M} b[t, j]\, x[t-j] - \sum_{i=1}^{N} a[t, i]\, y[t-i]

    Both coefficient sets are divided by the leading denominator coefficient
    ``a[..., 0]``, which must be non-zero (it is not checked, to avoid a device
    synchronisation). With time-invariant coefficients this is
    ``scipy.signal.lfilter(b, a, x)``. The zeros are applied as a sum of ``M + 1``
    shifted copies of ``x`` and the poles by :func:`torchlpc.sample_wise_lpc`, so
    there is no Python loop over time, and the result is differentiable with
    respect to ``b``, ``a``, ``x`` and both initial conditions.

    Leading (batch) dimensions of ``b``, ``a``, ``x`` and the initial conditions
    broadcast against each other.

    The denominator is one polynomial (direct form), so, as with scipy, a
    high-order filter with clustered poles is sensitive to its coefficients'
    precision: an order-8 Butterworth lowpass at 0.05 of the Nyquist frequency
    becomes unstable when its denominator is rounded to float32. Use float64 for
    such filters, or run their sections one after another.

    Args:
        b: numerator coefficients, ``M + 1`` per sample. A time dimension of size 1
            gives time-invariant zeros; a 1-D tensor ``(M + 1,)`` is one time-invariant
            numerator shared by the whole batch.
        a: denominator coefficients, ``N + 1`` per sample, laid out like ``b``.
            ``N = 0`` (``a`` of size 1 along the last dimension) gives an FIR filter.
        x: input signal.
        zi: initial conditions as a pair ``(x_past, y_past)`` of past inputs
            ``x_past[..., k] = x[-1-k]`` and past outputs ``y_past[..., k] = y[-1-k]``,
            most recent first; either may be ``None`` for zeros. Default: zeros.
            (``scipy.signal.lfiltic(b, a, y_past, x_past)`` turns such a pair into
            scipy's state vector; the reverse is not unique.)
        return_zf: also return the final conditions, the pair
            ``(x[..., T-1-k], y[..., T-1-k])`` in the same layout as ``zi``, which
            continue the filter on the next block. Default: ``False``.

    Shape:
        - b: ``(*, T, M + 1)``, ``(*, 1, M + 1)`` (or a stride-0 expansion of it
          along time) or ``(M + 1,)``
        - a: ``(*, T, N + 1)``, ``(*, 1, N + 1)`` or ``(N + 1,)``
        - x: ``(*, T)``
        - zi: ``((*, M), (*, N))``
        - output: ``(*, T)`` with ``*`` the broadcast batch shape, and
          zf: ``((*, M), (*, N))``

    Returns:
        ``y``, or ``(y, (x_final, y_final))`` when ``return_zf`` is true. float16
        and bfloat16 inputs are computed in float32 and returned in their dtype.

    Raises:
        TypeError: a non-tensor argument, an integer or boolean dtype, dtypes that
            differ, or a ``zi`` that is not a pair.
        ValueError: shapes that do not fit together, or tensors on different devices.

    Example:
        >>> import torch
        >>> from torchlpc.filters import lfilter
        >>> b = torch.tensor([1.0, 1.0])        # y[t] = x[t] + x[t-1] + 0.5 y[t-1]
        >>> a = torch.tensor([1.0, -0.5])
        >>> x = torch.tensor([1.0, 0.0, 0.0, 0.0])
        >>> lfilter(b, a, x)
        tensor([1.0000, 1.5000, 0.7500, 0.3750])
        >>> y, zf = lfilter(b, a, x[:2], return_zf=True)
        >>> torch.cat([y, lfilter(b, a, x[2:], zi=zf)])
        tensor([1.0000, 1.5000, 0.7500, 0.3750])
    """
    name = "lfilter"
    for arg, value in (("b", b), ("a", a), ("x", x)):
        _check_tensor(name, arg, value)
    _check_flag(name, "return_zf", return_zf)
    if x.dim() < 1:
        raise ValueError(f"{name}: x must have shape (*, T), got a 0-dimensional tensor.")
    b, a = _as_coefficients("b", b), _as_coefficients("a", a)
    T = x.shape[-1]
    for arg, c in (("b", b), ("a", a)):
        if c.shape[-1] == 0:
            raise ValueError(
                f"{name}: {arg} {_shape(c)} has no coefficients; K must be at least 1."
            )
        if c.shape[-2] not in (T, 1):
            raise ValueError(
                f"{name}: {arg} {_shape(c)} does not fit x {_shape(x)}: its time dimension "
                f"(second to last) must be {T} (time-varying) or 1 (time-invariant)."
            )
    b, a = _one_row_if_expanded(b), _one_row_if_expanded(a)
    M, N = b.shape[-1] - 1, a.shape[-1] - 1

    named = {"x": x, "b": b, "a": a}
    x_past = y_past = None
    if zi is not None:
        if not isinstance(zi, (tuple, list)) or len(zi) != 2:
            raise TypeError(
                f"{name}: zi must be a pair (x_past, y_past) of tensors (or None), got "
                f"{type(zi).__name__}."
            )
        x_past, y_past = zi
        if x_past is not None:
            _check_state("zi[0] (x_past)", x_past, M, "the past inputs x[-1-k]")
            named["zi[0] (x_past)"] = x_past
        if y_past is not None:
            _check_state("zi[1] (y_past)", y_past, N, "the past outputs y[-1-k]")
            named["zi[1] (y_past)"] = y_past
    _check_same_dtype_and_device(name, named)

    batch_shapes = {"x": x.shape[:-1], "b": b.shape[:-2], "a": a.shape[:-2]}
    if x_past is not None:
        batch_shapes["zi[0] (x_past)"] = x_past.shape[:-1]
    if y_past is not None:
        batch_shapes["zi[1] (y_past)"] = y_past.shape[:-1]
    try:
        batch = torch.broadcast_shapes(*batch_shapes.values())
    except RuntimeError:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in batch_shapes.items())
        raise ValueError(
            f"{name}: the batch (leading) dimensions do not broadcast: {listed}."
        ) from None

    dtype = x.dtype
    if dtype in _COMPUTED_IN_FLOAT32:
        b, a, x = b.float(), a.float(), x.float()
        x_past = None if x_past is None else x_past.float()
        y_past = None if y_past is None else y_past.float()

    a0 = a[..., :1]
    b = b / a0
    x = x.expand(*batch, T)
    if x_past is None:
        x_past = x.new_zeros(*batch, M)
    else:
        x_past = x_past.expand(*batch, M)

    # The zeros: v[t] = sum_j b[t, j] x[t - j], reading x[-1-k] from x_past.
    padded = torch.cat([x_past.flip(-1), x], dim=-1)
    v = b[..., 0] * x
    for j in range(1, M + 1):
        v = v + b[..., j] * padded[..., M - j : M - j + T]

    if N == 0:
        y = v.expand(*batch, T)
        y_final = v.new_zeros(*batch, 0)
    else:
        A = a[..., 1:] / a0
        A = A.expand(*batch, A.shape[-2], N)
        if y_past is not None:
            y_past = y_past.expand(*batch, N)
        y, y_final = sample_wise_lpc(v, A, y_past, return_zf=True)

    y = y.to(dtype)
    if not return_zf:
        return y
    x_final = torch.cat([x.flip(-1), x_past], dim=-1)[..., :M]
    return y, (x_final.to(dtype), y_final.to(dtype))
