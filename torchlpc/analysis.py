r"""LPC analysis of a signal, and frame-wise to sample-wise coefficients.

Framing convention, shared by :func:`lpc_analysis` and
:func:`upsample_coefficients`: frame ``f`` belongs to sample ``f * hop_length``.
Analysis centres frame ``f`` on that sample (the signal is padded by
``frame_length // 2`` on the left and as much as needed on the right), and a
signal of ``T`` samples has ``F = ceil(T / hop_length)`` frames, one for every
multiple of ``hop_length`` below ``T``. Upsampling places frame ``f`` at sample
``f * hop_length``, interpolates between neighbouring frames and holds the last
frame to the end, so ``upsample_coefficients(A, hop_length, length=T)`` gives one
coefficient row per sample of the analysed signal: analysis, upsampling, inverse
filtering and :func:`torchlpc.sample_wise_lpc` round-trip.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .coefficients import _abs2, _step_down, lpc_to_reflection, reflection_to_lpc
from .functional import _COMPUTED_IN_FLOAT32, _check_tensor, _shape

__all__ = ["levinson_durbin", "lpc_analysis", "upsample_coefficients"]

_WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
}
_PAD_MODES = ("constant", "reflect", "replicate")
_UPSAMPLE_MODES = ("linear", "reflection", "hold")


def _check_positive_int(function: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{function}: {name} must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{function}: {name} must be at least 1, got {value}.")


def _check_eps(function: str, eps) -> None:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{function}: eps must be a real number, got {type(eps).__name__}.")
    if not eps >= 0:
        raise ValueError(f"{function}: eps must be non-negative, got {eps}.")


def levinson_durbin(r: Tensor, order: int | None = None, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    r"""Solve the autocorrelation normal equations for the LPC coefficients.

    .. math::
        \sum_{i=1}^{N} r[j-i]\, A[i-1] = -r[j], \quad j = 1..N, \qquad r[-k] = \overline{r[k]}

    by the Levinson-Durbin recursion, which also yields the prediction-error power
    ``E = r[0] + sum_i A[i-1] conj(r[i])``. Each step computes the reflection
    coefficient ``k_m = -(r[m] + sum_{i<m} A_{m-1}[i-1] r[m-i]) / E_{m-1}`` and
    steps up as in :func:`torchlpc.coefficients.reflection_to_lpc`.

    Args:
        r: autocorrelation ``r[0] .. r[order]``, ``r[k] = sum_n x[n+k] conj(x[n])``.
        order: the filter order N. Default: ``r.shape[-1] - 1``.
        eps: added to ``r[0]`` (white noise of power ``eps``); with ``eps > 0`` every
            frame, a silent one included, gives finite coefficients, and the
            error power is kept at or above ``eps`` against rounding. Default: ``0.0``.

    Shape:
        - r: ``(*, L)`` with ``L >= order + 1``
        - output: ``A`` ``(*, N)`` and the error power ``(*)``

    Returns:
        ``(A, error)``: the LPC coefficients (``A(z) = 1 + sum_i A[i-1] z^-i``) and
        the prediction-error power, real.

    Example:
        >>> import torch
        >>> from torchlpc.analysis import levinson_durbin
        >>> A, error = levinson_durbin(torch.tensor([1.0, 0.5, 0.5]))
        >>> A, error
        (tensor([-0.3333, -0.3333]), tensor(0.6667))
    """
    name = "levinson_durbin"
    _check_tensor(name, "r", r)
    if r.dim() < 1 or r.shape[-1] < 1:
        raise ValueError(f"{name}: r must have shape (*, L) with L >= 1, got {_shape(r)}.")
    if order is None:
        order = r.shape[-1] - 1
    elif isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"{name}: order must be a non-negative int, got {order!r}.")
    if r.shape[-1] < order + 1:
        raise ValueError(
            f"{name}: order {order} needs r[0] .. r[{order}], but r {_shape(r)} has "
            f"{r.shape[-1]} lags."
        )
    _check_eps(name, eps)
    error = r[..., 0].real + eps
    A = r[..., :0]
    for m in range(1, order + 1):
        acc = r[..., m] + (A * r[..., 1:m].flip(-1)).sum(-1)
        k = (-acc / error)[..., None]
        A = torch.cat([A + k * A.flip(-1).conj(), k], dim=-1)
        error = error * (1 - _abs2(k[..., 0]))
        if eps > 0:
            error = error.clamp_min(eps)
    return A, error


def _rounded_stable(A: Tensor, dtype: torch.dtype) -> Tensor:
    """``A`` in ``dtype``, every finite row strictly stable as rounded.

    Near-singular autocorrelations (a loud sinusoid, a sharp resonance) give
    poles so close together and to the unit circle that rounding the
    coefficients, to float32 or within the recursion itself, can push one
    outside. Such rows get their poles pulled inward, ``A[i-1] * g**i`` (all
    poles scaled by ``g``), with ``g = 1 - 4 eps, 1 - 8 eps, ...`` (``eps`` of
    ``dtype``) until the rounded row is stable: the least bandwidth expansion
    that makes it so, in steps of a factor 2. Stability is judged by the
    reflection coefficients of the rounded row, computed in the wider of its
    dtype and ``A``'s. NaN rows (silence with ``eps = 0``) are left as they are.
    """
    rounded = A.to(dtype)
    with torch.no_grad():
        def unstable(rows: Tensor) -> Tensor:
            stable = _step_down(rows, safe=True)[1]
            if A.element_size() > rows.element_size():
                stable = stable & _step_down(rows.to(A.dtype), safe=True)[1]
            return ~stable & rows.isfinite().all(-1)

        bad = unstable(rounded.detach())
        if not bool(bad.any()):
            return rounded
        real = A.real.dtype if A.is_complex() else A.dtype
        powers = torch.arange(1, A.shape[-1] + 1, dtype=real, device=A.device)
        radius = torch.ones(A.shape[:-1], dtype=real, device=A.device)
        step = 4 * torch.finfo(rounded.real.dtype if rounded.is_complex() else dtype).eps
        while bool(bad.any()) and step < 1:
            radius = torch.where(bad, torch.full_like(radius, 1 - step), radius)
            factors = radius[..., None] ** powers
            candidate = (A.detach() * factors).to(dtype)
            bad = bad & unstable(candidate)
            step *= 2
    return (A * factors).to(dtype)


def _window(name: str, window, frame_length: int, x: Tensor) -> Tensor:
    real = x.real.dtype if x.is_complex() else x.dtype
    if window is None or window == "rectangular":
        return torch.ones(frame_length, dtype=real, device=x.device)
    if isinstance(window, str):
        if window not in _WINDOWS:
            raise ValueError(
                f"{name}: unknown window {window!r}; expected one of "
                f"{', '.join([*_WINDOWS, 'rectangular'])}, None or a tensor of shape "
                f"({frame_length},)."
            )
        return _WINDOWS[window](frame_length, periodic=True, dtype=real, device=x.device)
    if not isinstance(window, Tensor):
        raise TypeError(
            f"{name}: window must be a str, a tensor or None, got {type(window).__name__}."
        )
    if window.shape != (frame_length,):
        raise ValueError(
            f"{name}: window must have shape (frame_length,) = ({frame_length},), got "
            f"{_shape(window)}."
        )
    if window.is_complex() or not window.is_floating_point():
        raise TypeError(f"{name}: window must be real floating point, got {window.dtype}.")
    if window.device != x.device:
        raise ValueError(f"{name}: window is on {window.device} but x is on {x.device}.")
    # Every frame would weigh nothing and the autocorrelations divide by that.
    if not bool(window.ne(0).any()):
        raise ValueError(f"{name}: window is all zeros; no frame would have any weight.")
    return window.to(real)


def lpc_analysis(
    x: Tensor,
    order: int,
    frame_length: int,
    hop_length: int,
    window: str | Tensor | None = "hann",
    eps: float = 1e-9,
    pad_mode: str = "constant",
) -> tuple[Tensor, Tensor]:
    r"""Frame-wise LPC coefficients and gain by the autocorrelation method.

    .. math::
        r_f[k] = \frac{\sum_n w[n+k] x_f[n+k]\, \overline{w[n] x_f[n]}}{\sum_n w[n]^2},
        \qquad (A_f, E_f) = \mathrm{LevinsonDurbin}(r_f + \epsilon\,\delta_k),
        \qquad g_f = \sqrt{E_f}

    Frame ``f`` is the ``frame_length`` samples centred on sample ``f * hop_length``
    (``frame_length // 2`` before it), for ``F = ceil(T / hop_length)`` frames; the
    signal is padded at both ends as ``pad_mode`` says. Normalising by the window's
    energy makes ``r_f[0]`` the frame's mean power, so the gain ``g_f`` is the RMS
    of the prediction error per sample: exciting ``1 / A_f(z)`` with white noise of
    standard deviation ``g_f`` reproduces the frame's spectral envelope and level.
    ``eps`` acts as white noise of power ``eps`` added to every frame: a silent
    frame gives ``A = 0`` and gain ``sqrt(eps)`` instead of NaN. It is absolute, so
    a signal whose power is near ``eps`` gets flatter envelopes; scale it with the
    signal. Differentiable with respect to ``x`` (and a tensor ``window``).
    Single and half precision inputs are analysed in double precision (single on
    MPS) and the results returned in the input's precision: the normal equations of
    sharp resonances are too ill-conditioned for float32.

    With ``eps > 0`` every filter returned is strictly stable as returned, in its
    dtype, at any signal level (:func:`torchlpc.is_stable` holds, and so does
    ``max |root| < 1`` computed from the rounded coefficients). Near-singular
    frames (a loud pure tone, say) have poles so close to the unit circle and to
    each other that rounding the coefficients, to float32 or within the
    recursion, can push one outside; such a frame's poles are pulled inward,
    ``A[i-1] * g**i`` with ``g`` the nearest to 1 of ``1 - 4 eps, 1 - 8 eps, ...``
    (``eps`` the dtype's machine epsilon) that makes the rounded filter stable.
    Its gain is left as computed.

    Args:
        x: signal, real or complex.
        order: the filter order N.
        frame_length: samples per analysis frame; at least ``order + 1``.
        hop_length: samples between frame centres.
        window: ``"hann"``, ``"hamming"``, ``"blackman"`` (periodic, as
            ``scipy.signal.get_window``), ``"rectangular"`` or ``None`` for none, or a
            real tensor of shape ``(frame_length,)``. Default: ``"hann"``.
        eps: white-noise power added to ``r[0]``; must be non-negative. Default: ``1e-9``.
        pad_mode: how the ends are padded, ``"constant"`` (zeros), ``"reflect"`` or
            ``"replicate"``. Default: ``"constant"``.

    Shape:
        - x: ``(*, T)``
        - output: ``A`` ``(*, F, N)`` and gain ``(*, F)``, ``F = ceil(T / hop_length)``

    Returns:
        ``(A, gain)``: LPC coefficients (``A(z) = 1 + sum_i A[i-1] z^-i``, ready for
        :func:`upsample_coefficients`) and the real, non-negative gain.

    Example:
        >>> import torch
        >>> from torchlpc.analysis import lpc_analysis
        >>> x = torch.randn(2, 1000)
        >>> A, gain = lpc_analysis(x, order=4, frame_length=256, hop_length=128)
        >>> A.shape, gain.shape
        (torch.Size([2, 8, 4]), torch.Size([2, 8]))
    """
    name = "lpc_analysis"
    _check_tensor(name, "x", x)
    _check_positive_int(name, "order", order)
    _check_positive_int(name, "frame_length", frame_length)
    _check_positive_int(name, "hop_length", hop_length)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name}: x must have shape (*, T) with T >= 1, got {_shape(x)}.")
    if frame_length < order + 1:
        raise ValueError(
            f"{name}: frame_length {frame_length} is too short for order {order}; it must be "
            "at least order + 1."
        )
    _check_eps(name, eps)
    if pad_mode not in _PAD_MODES:
        raise ValueError(
            f"{name}: pad_mode must be one of {', '.join(_PAD_MODES)}; got {pad_mode!r}."
        )

    dtype = x.dtype
    real_dtype = torch.empty(0, dtype=dtype).real.dtype
    # Autocorrelations of sharp resonances are ill-conditioned: in float32 the
    # recursion can lose the sign of the error power and give NaN or unstable
    # filters, so single and half precision are analysed in double precision
    # (where the device has it).
    if x.device.type != "mps" and dtype not in (torch.float64, torch.complex128):
        x = x.to(torch.complex128 if x.is_complex() else torch.float64)
    elif dtype in _COMPUTED_IN_FLOAT32:
        x = x.float()
    w = _window(name, window, frame_length, x)
    T = x.shape[-1]
    F = math.ceil(T / hop_length)
    left = frame_length // 2
    right = max(0, (F - 1) * hop_length + frame_length - left - T)
    if pad_mode == "reflect" and max(left, right) >= T:
        raise ValueError(
            f"{name}: pad_mode='reflect' needs more than {max(left, right)} samples for "
            f"frame_length {frame_length}; x has T = {T}. Use pad_mode='constant' or "
            "'replicate'."
        )
    batch = x.shape[:-1]
    flat = x.reshape(-1, T)
    if pad_mode == "constant":
        padded = torch.nn.functional.pad(flat, (left, right))
    elif x.is_complex():
        padded = torch.complex(
            torch.nn.functional.pad(flat.real, (left, right), mode=pad_mode),
            torch.nn.functional.pad(flat.imag, (left, right), mode=pad_mode),
        )
    else:
        padded = torch.nn.functional.pad(flat, (left, right), mode=pad_mode)
    frames = padded.unfold(-1, frame_length, hop_length)[:, :F] * w
    frames = frames.reshape(*batch, F, frame_length)

    lags = [
        (frames[..., k:] * frames[..., : frame_length - k].conj()).sum(-1)
        for k in range(order + 1)
    ]
    r = torch.stack(lags, dim=-1) / w.square().sum()
    A, error = levinson_durbin(r, order, eps=eps)
    gain = error.clamp_min(0).sqrt()
    return _rounded_stable(A, dtype), gain.to(real_dtype)


def upsample_coefficients(
    A: Tensor, hop_length: int, mode: str = "linear", length: int | None = None
) -> Tensor:
    r"""Turn frame-wise LPC coefficients into sample-wise ones.

    .. math::
        A[t] = (1 - \alpha_t)\, A_f + \alpha_t\, A_{f+1},
        \qquad f = \lfloor t / h \rfloor, \quad \alpha_t = t / h - f

    Frame ``f`` sits at sample ``f * hop_length`` (the centre of analysis frame
    ``f`` in :func:`lpc_analysis`); samples at or past the last frame hold it.

    Args:
        A: frame-wise LPC coefficients, ``A(z) = 1 + sum_i A[i-1] z^-i``.
        hop_length: samples between frames, ``h``.
        mode: ``"linear"`` interpolates the LPC coefficients; ``"reflection"``
            interpolates the reflection coefficients (see
            :mod:`torchlpc.coefficients`), so that every filter between two stable
            frames is stable, too (the frames are not checked; an unstable frame
            gives ``|k| >= 1`` and its neighbours no such guarantee); ``"hold"``
            keeps frame ``f`` for samples ``f * h .. (f + 1) * h - 1``.
            Default: ``"linear"``.
        length: the number of samples T. Default: ``F * hop_length``; pass the signal
            length when it is not a multiple of ``hop_length``. With no frames
            (``F = 0``) it must be 0.

    Shape:
        - A: ``(*, F, N)``
        - output: ``(*, T, N)``, ready for :func:`torchlpc.sample_wise_lpc`

    Returns:
        The sample-wise coefficients, in the dtype of ``A``.

    Example:
        >>> import torch
        >>> from torchlpc.analysis import upsample_coefficients
        >>> A = torch.tensor([[[0.0], [-0.8]]])   # two frames, N = 1
        >>> upsample_coefficients(A, hop_length=4)[0, :, 0]
        tensor([ 0.0000, -0.2000, -0.4000, -0.6000, -0.8000, -0.8000, -0.8000, -0.8000])
    """
    name = "upsample_coefficients"
    _check_tensor(name, "A", A)
    _check_positive_int(name, "hop_length", hop_length)
    if A.dim() < 2:
        raise ValueError(f"{name}: A must have shape (*, F, N), got {_shape(A)}.")
    if mode not in _UPSAMPLE_MODES:
        raise ValueError(f"{name}: mode must be one of {', '.join(_UPSAMPLE_MODES)}; got {mode!r}.")
    F = A.shape[-2]
    if length is None:
        length = F * hop_length
    elif isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"{name}: length must be a non-negative int or None, got {length!r}.")
    if F == 0:
        # No frames describe no samples (an empty signal has no analysis frames).
        if length > 0:
            raise ValueError(
                f"{name}: A {_shape(A)} has no frames, so it cannot give length {length}; "
                "it needs at least one frame."
            )
        return A.clone()

    t = torch.arange(length, device=A.device)
    first = torch.clamp(t // hop_length, max=F - 1)
    if mode == "hold":
        return A.index_select(-2, first)
    second = torch.clamp(first + 1, max=F - 1)
    real = A.real.dtype if A.is_complex() else A.dtype
    alpha = ((t - first * hop_length).to(real) / hop_length).clamp(max=1.0)
    alpha = torch.where(second > first, alpha, torch.zeros_like(alpha))[:, None]
    coefficients = lpc_to_reflection(A, check=False) if mode == "reflection" else A
    upsampled = (1 - alpha) * coefficients.index_select(-2, first) + alpha * (
        coefficients.index_select(-2, second)
    )
    return reflection_to_lpc(upsampled) if mode == "reflection" else upsampled
