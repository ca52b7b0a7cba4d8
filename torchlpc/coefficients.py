r"""Conversions between representations of an all-pole filter.

Every function here uses the LPC convention of :func:`torchlpc.sample_wise_lpc`:
a coefficient vector ``A`` of length N stands for the denominator polynomial

.. math::
    A(z) = 1 + \sum_{i=1}^{N} A[i-1]\, z^{-i},

so that ``scipy.signal``'s denominator is ``a = [1, *A]``. All functions act on
the last dimension, treat every leading dimension as batch (a ``(*, T, N)``
tensor of sample-wise coefficients converts sample by sample), and are
differentiable.

Reflection coefficients follow the step-up recursion

.. math::
    A_m[i] = A_{m-1}[i] + k_m\, \overline{A_{m-1}[m-i]}, \qquad A_m[m] = k_m,

that is, ``k_m`` is the last coefficient of the order-m polynomial (the
convention of MATLAB's ``rc2poly``/``poly2rc``; ``k_m`` is minus the partial
correlation of lag m). A polynomial has all its roots strictly inside the unit
circle, so the all-pole filter is stable, exactly when every ``|k_m| < 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import _COMPUTED_IN_FLOAT32, _check_flag, _check_tensor, _shape

__all__ = [
    "reflection_to_lpc",
    "lpc_to_reflection",
    "is_stable",
    "roots_to_lpc",
    "lpc_to_roots",
    "sos_to_lpc",
]


def _abs2(z: Tensor) -> Tensor:
    """``|z|^2`` without the kink of ``abs`` at zero."""
    if z.is_complex():
        return z.real.square() + z.imag.square()
    return z.square()


def _check_vector(function: str, name: str, value, shape: str = "(*, N)") -> None:
    _check_tensor(function, name, value)
    if value.dim() < 1:
        raise ValueError(f"{function}: {name} must have shape {shape}, got a 0-dimensional tensor.")


def reflection_to_lpc(k: Tensor) -> Tensor:
    r"""Convert reflection coefficients to LPC coefficients (the step-up recursion).

    .. math::
        A_m[i] = A_{m-1}[i] + k_m\, \overline{A_{m-1}[m-i]}, \qquad A_m[m] = k_m

    Any ``k`` gives a polynomial; it is stable exactly when every ``|k| < 1``
    (``tanh`` of unconstrained values is a common stable parametrisation).

    Args:
        k: reflection coefficients ``k_1 .. k_N``, in the sign convention of
            :mod:`torchlpc.coefficients` (``k_m`` is the last coefficient of the
            order-m polynomial).

    Shape:
        - k: ``(*, N)``
        - output: ``(*, N)``

    Returns:
        The LPC coefficients ``A`` with ``A(z) = 1 + sum_i A[i-1] z^-i``.

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import reflection_to_lpc
        >>> reflection_to_lpc(torch.tensor([0.5, 0.25]))
        tensor([0.6250, 0.2500])
    """
    _check_vector("reflection_to_lpc", "k", k)
    A = k[..., :1]
    for m in range(1, k.shape[-1]):
        k_m = k[..., m : m + 1]
        A = torch.cat([A + k_m * A.flip(-1).conj(), k_m], dim=-1)
    return A


def _step_down(A: Tensor, safe: bool) -> tuple[Tensor, Tensor]:
    """Reflection coefficients and a stability mask.

    With ``safe``, a step with ``|k_m| >= 1`` divides by 1 instead of ``1 - |k_m|^2``, so
    that the mask stays meaningful (the coefficients after it do not).
    """
    reflections = []
    stable = torch.ones(A.shape[:-1], dtype=torch.bool, device=A.device)
    for m in range(A.shape[-1], 0, -1):
        k_m = A[..., -1:]
        reflections.append(k_m)
        k2 = _abs2(k_m)
        inside = k2 < 1
        stable = stable & inside[..., 0]
        if m > 1:
            rest = A[..., :-1]
            denominator = 1 - k2
            if safe:
                denominator = torch.where(inside, denominator, torch.ones_like(denominator))
            A = (rest - k_m * rest.flip(-1).conj()) / denominator
    if not reflections:
        return A, stable
    return torch.cat(reflections[::-1], dim=-1), stable


def lpc_to_reflection(A: Tensor, check: bool = True) -> Tensor:
    r"""Convert LPC coefficients to reflection coefficients (the step-down recursion).

    .. math::
        k_m = A_m[m], \qquad
        A_{m-1}[i] = \frac{A_m[i] - k_m\, \overline{A_m[m-i]}}{1 - |k_m|^2}

    The recursion divides by ``1 - |k_m|^2``, so it is only meaningful for stable
    filters. With ``check=True`` (the default) an unstable filter raises; this
    reads the values, so it synchronises with the device and cannot run under
    ``torch.vmap``. With ``check=False`` the recursion runs regardless: an
    unstable filter shows as some ``|k| >= 1``, and where ``|k_m| = 1`` exactly the
    lower-order coefficients are not finite. :func:`is_stable` tests without
    raising.

    Args:
        A: LPC coefficients, ``A(z) = 1 + sum_i A[i-1] z^-i``.
        check: raise a ``ValueError`` if any filter is not strictly stable.
            Default: ``True``.

    Shape:
        - A: ``(*, N)``
        - output: ``(*, N)``

    Returns:
        The reflection coefficients ``k_1 .. k_N`` (convention of
        :mod:`torchlpc.coefficients`).

    Raises:
        ValueError: ``check`` is true and a filter has a reflection coefficient with
            ``|k| >= 1`` (or NaN).

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import lpc_to_reflection
        >>> lpc_to_reflection(torch.tensor([0.625, 0.25]))
        tensor([0.5000, 0.2500])
    """
    _check_vector("lpc_to_reflection", "A", A)
    _check_flag("lpc_to_reflection", "check", check)
    k, stable = _step_down(A, safe=False)
    if check and not bool(stable.all()):
        unstable = int((~stable).sum())
        raise ValueError(
            f"lpc_to_reflection: {unstable} of {stable.numel()} filters in A {_shape(A)} are "
            "not stable (a reflection coefficient has |k| >= 1 or is NaN); check with "
            "is_stable(A), or pass check=False to convert anyway."
        )
    return k


def is_stable(A: Tensor) -> Tensor:
    r"""Whether each all-pole filter ``1 / A(z)`` is strictly stable.

    The Schur-Cohn test: the filter is stable when every reflection coefficient
    from the step-down recursion has ``|k_m| < 1``, that is, every root of
    ``A(z)`` lies strictly inside the unit circle. No roots are computed.

    Args:
        A: LPC coefficients, ``A(z) = 1 + sum_i A[i-1] z^-i``.

    Shape:
        - A: ``(*, N)``
        - output: ``(*)``

    Returns:
        A boolean tensor, ``False`` for unstable, marginally stable or NaN filters.

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import is_stable
        >>> is_stable(torch.tensor([[-0.9], [-1.0], [0.5]]))
        tensor([ True, False,  True])
    """
    _check_vector("is_stable", "A", A)
    with torch.no_grad():
        return _step_down(A, safe=True)[1]


def roots_to_lpc(roots: Tensor) -> Tensor:
    r"""The LPC coefficients of the polynomial with the given roots.

    .. math::
        1 + \sum_{i=1}^{N} A[i-1]\, z^{-i} = \prod_{n=1}^{N} (1 - r_n z^{-1})

    Args:
        roots: the roots (the poles of the all-pole filter), real or complex.

    Shape:
        - roots: ``(*, N)``
        - output: ``(*, N)``

    Returns:
        ``A`` in the dtype of ``roots``. Complex roots give complex coefficients; when
        they come in conjugate pairs the imaginary part is zero up to rounding, and
        ``.real`` gives the real filter.

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import roots_to_lpc
        >>> roots_to_lpc(torch.tensor([0.5, -0.25]))
        tensor([-0.2500, -0.1250])
    """
    _check_vector("roots_to_lpc", "roots", roots)
    poly = torch.ones_like(roots[..., :1])
    zero = torch.zeros_like(poly)
    for n in range(roots.shape[-1]):
        r = roots[..., n : n + 1]
        poly = torch.cat([poly, zero], dim=-1) - r * torch.cat([zero, poly], dim=-1)
    return poly[..., 1:]


def lpc_to_roots(A: Tensor) -> Tensor:
    r"""The roots of ``A(z)`` (the poles of ``1 / A(z)``), by companion-matrix eigenvalues.

    .. math::
        z^N + \sum_{i=1}^{N} A[i-1]\, z^{N-i} = \prod_{n=1}^{N} (z - r_n)

    Differentiable where the roots are distinct (``torch.linalg.eigvals``).

    Args:
        A: LPC coefficients, ``A(z) = 1 + sum_i A[i-1] z^-i``.

    Shape:
        - A: ``(*, N)``
        - output: ``(*, N)``, complex, in no particular order

    Returns:
        The roots, in the complex dtype matching ``A``; float16 and bfloat16 have no
        eigenvalue solver, so they are computed in float32 and returned as complex64.

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import lpc_to_roots
        >>> roots = lpc_to_roots(torch.tensor([0.0, 0.25]))
        >>> torch.allclose(roots.abs(), torch.tensor(0.5))
        True
    """
    _check_vector("lpc_to_roots", "A", A)
    if A.dtype in _COMPUTED_IN_FLOAT32:
        A = A.float()
    N = A.shape[-1]
    if N == 0:
        return torch.empty_like(A, dtype=(A[..., :0] * 1j).dtype)
    companion = torch.diag_embed(A.new_ones(*A.shape[:-1], N - 1), offset=-1)
    companion = torch.cat([-A[..., None, :], companion[..., 1:, :]], dim=-2)
    return torch.linalg.eigvals(companion)


def sos_to_lpc(sos: Tensor) -> Tensor:
    r"""The LPC coefficients of the product of second-order sections' denominators.

    .. math::
        A(z) = \prod_{s=1}^{S} \frac{a_{s,0} + a_{s,1} z^{-1} + a_{s,2} z^{-2}}{a_{s,0}}

    Each section is normalised by its leading coefficient ``a_{s,0}``. A section
    with ``a_{s,2} = 0`` is first order; the result keeps its trailing zero.
    Multiplied out, the poles of many sections are far more sensitive to rounding
    of the coefficients than the sections were (a stable float64 design can turn
    unstable in float32); check with :func:`is_stable` after converting.

    Args:
        sos: second-order sections, either rows ``[b0, b1, b2, a0, a1, a2]`` as in
            ``scipy.signal`` (only the denominators are used) or denominator rows
            ``[a0, a1, a2]``.

    Shape:
        - sos: ``(*, S, 6)`` or ``(*, S, 3)``
        - output: ``(*, 2S)`` (``(*, 0)`` for ``S = 0``, the filter ``A(z) = 1``)

    Returns:
        ``A`` with ``A(z) = 1 + sum_i A[i-1] z^-i``.

    Example:
        >>> import torch
        >>> from torchlpc.coefficients import sos_to_lpc
        >>> sos_to_lpc(torch.tensor([[1.0, -0.5, 0.0], [2.0, 0.0, 0.5]]))
        tensor([-0.5000,  0.2500, -0.1250,  0.0000])
    """
    name = "sos_to_lpc"
    _check_tensor(name, "sos", sos)
    if sos.dim() < 2 or sos.shape[-1] not in (3, 6):
        raise ValueError(
            f"{name}: sos must have shape (*, S, 6) (scipy's [b0, b1, b2, a0, a1, a2] rows) "
            f"or (*, S, 3) (denominator rows [a0, a1, a2]); got {_shape(sos)}."
        )
    denominators = sos[..., -3:]
    sections = denominators[..., 1:] / denominators[..., :1]
    batch = sections.shape[:-2]
    poly = sections.new_ones(*batch, 1)
    zeros = sections.new_zeros(*batch, 2)
    for s in range(sos.shape[-2]):
        c1, c2 = sections[..., s, 0:1], sections[..., s, 1:2]
        poly = (
            torch.cat([poly, zeros], dim=-1)
            + c1 * torch.cat([zeros[..., :1], poly, zeros[..., :1]], dim=-1)
            + c2 * torch.cat([zeros, poly], dim=-1)
        )
    return poly[..., 1:]
