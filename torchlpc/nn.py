"""``torch.nn`` modules built on the filters of :mod:`torchlpc`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .analysis import _UPSAMPLE_MODES, _check_positive_int, upsample_coefficients
from .functional import _check_flag
from .functional import (
    _COMPUTED_IN_FLOAT32,
    _check_same_dtype_and_device,
    _check_tensor,
    _shape,
    linear_recurrence,
    sample_wise_lpc,
)

__all__ = ["AllPoleSynthesis", "OnePoleSmoother"]


class AllPoleSynthesis(nn.Module):
    r"""Time-varying all-pole synthesis from frame-wise LPC coefficients.

    .. math::
        y[t] = e[t] - \sum_{i=1}^{N} A[t, i-1]\, y[t-i],
        \qquad A[t] = \mathrm{upsample}(A_{\text{frames}})[t]

    The frame-wise coefficients are brought to the sample rate by
    :func:`torchlpc.analysis.upsample_coefficients` (frame ``f`` at sample
    ``f * hop_length``) and the excitation is filtered by
    :func:`torchlpc.sample_wise_lpc`. An excitation of ``T`` samples takes
    ``F = ceil(T / hop_length)`` frames, which is what
    :func:`torchlpc.analysis.lpc_analysis` gives for a signal of ``T`` samples. The
    module has no parameters; to keep a learned filter stable, predict
    reflection coefficients through ``tanh`` and convert them with
    :func:`torchlpc.coefficients.reflection_to_lpc`.

    Args:
        hop_length: samples between frames.
        mode: interpolation between frames, ``"linear"``, ``"reflection"`` (keeps
            interpolated filters stable) or ``"hold"``; see
            :func:`torchlpc.analysis.upsample_coefficients`. Default: ``"linear"``.

    Shape:
        - excitation: ``(*, T)``
        - frame_coefficients: ``(*, F, N)`` with ``F = ceil(T / hop_length)``
        - zi: ``(*, N)``, ``zi[..., k] = y[-1-k]``
        - output: ``(*, T)``, and zf: ``(*, N)``

    Example:
        >>> import torch
        >>> from torchlpc.nn import AllPoleSynthesis
        >>> synth = AllPoleSynthesis(hop_length=4)
        >>> excitation = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]])
        >>> frames = torch.tensor([[[-0.5], [-0.5]]])   # y[t] = e[t] + 0.5 y[t-1]
        >>> synth(excitation, frames)
        tensor([[1.0000, 0.5000, 0.2500, 0.1250, 0.0625, 0.0312, 0.0156, 0.0078]])
    """

    def __init__(self, hop_length: int, mode: str = "linear") -> None:
        super().__init__()
        _check_positive_int("AllPoleSynthesis", "hop_length", hop_length)
        if mode not in _UPSAMPLE_MODES:
            raise ValueError(
                f"AllPoleSynthesis: mode must be one of {', '.join(_UPSAMPLE_MODES)}; got {mode!r}."
            )
        self.hop_length = hop_length
        self.mode = mode

    def forward(
        self,
        excitation: Tensor,
        frame_coefficients: Tensor,
        zi: Tensor | None = None,
        return_zf: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Filter ``excitation``; with ``return_zf`` also return the final state ``(*, N)``."""
        name = "AllPoleSynthesis"
        _check_tensor(name, "excitation", excitation)
        _check_tensor(name, "frame_coefficients", frame_coefficients)
        _check_flag(name, "return_zf", return_zf)
        if excitation.dim() < 1:
            raise ValueError(
                f"{name}: excitation must have shape (*, T), got a 0-dimensional tensor."
            )
        T = excitation.shape[-1]
        F = math.ceil(T / self.hop_length)
        if (
            frame_coefficients.dim() != excitation.dim() + 1
            or frame_coefficients.shape[:-2] != excitation.shape[:-1]
            or frame_coefficients.shape[-2] != F
        ):
            expected = ", ".join([*(str(size) for size in excitation.shape[:-1]), str(F), "N"])
            raise ValueError(
                f"{name}: frame_coefficients must have shape (*, F, N) = ({expected}) for "
                f"excitation {_shape(excitation)} and "
                f"hop_length {self.hop_length} (F = ceil(T / hop_length)); got "
                f"{_shape(frame_coefficients)}."
            )
        A = upsample_coefficients(frame_coefficients, self.hop_length, self.mode, length=T)
        return sample_wise_lpc(excitation, A, zi, return_zf=return_zf)

    def extra_repr(self) -> str:
        return f"hop_length={self.hop_length}, mode={self.mode!r}"


class OnePoleSmoother(nn.Module):
    r"""A one-pole lowpass with unit DC gain and a fixed or learnable pole.

    .. math::
        y[t] = p\, y[t-1] + (1 - p)\, x[t], \qquad p = \sigma(\theta) \in (0, 1)

    The pole is stored as its logit ``theta``, so gradient steps can never make
    the filter unstable; the recurrence runs on :func:`torchlpc.linear_recurrence`.
    The time constant is ``-1 / log(p)`` samples.

    Args:
        pole: initial pole ``p``, strictly between 0 and 1: a float, or a tensor
            of poles that broadcasts to the batch shape of the input, e.g. ``(C,)``,
            one pole per channel, for input ``(B, C, T)``. Default: ``0.9``.
            The value is checked as passed (a float in double precision), and
            the module keeps ``theta`` (in the default dtype, or the tensor's),
            which holds poles much closer to 0 and 1 than the pole itself can be
            held in that dtype. A pole that rounds to 1 there (``1 - 1e-9`` in
            float32) runs as a pole of exactly 1 with its input gain
            ``1 - p = sigmoid(-theta)`` (``1e-9``) intact: an integrator of
            ``(1 - p) x``, which is what the smoother is to that precision over
            any length much shorter than ``1 / (1 - p)`` samples. A pole that
            rounds to 0 (``1e-50``) gives ``y = x``, likewise.
        learnable: make ``theta`` an ``nn.Parameter``; otherwise it is a buffer.
            Default: ``True``.

    Shape:
        - x: ``(*, T)``
        - zi: ``(*)``, the value of ``y[-1]``
        - output: ``(*, T)``, in the dtype of ``x``; float16 and bfloat16 inputs are
          smoothed in float32 (with the pole in float32, not rounded to half)

    Example:
        >>> import torch
        >>> from torchlpc.nn import OnePoleSmoother
        >>> smoother = OnePoleSmoother(pole=0.5, learnable=False)
        >>> smoother(torch.ones(1, 4))
        tensor([[0.5000, 0.7500, 0.8750, 0.9375]])
    """

    def __init__(self, pole: float | Tensor = 0.9, learnable: bool = True) -> None:
        super().__init__()
        name = "OnePoleSmoother"
        _check_flag(name, "learnable", learnable)
        if isinstance(pole, Tensor):
            if pole.is_complex() or not pole.is_floating_point():
                raise TypeError(
                    f"{name}: pole must be a real floating point tensor, got {pole.dtype}."
                )
            dtype, shown = pole.dtype, None
            exact = pole.detach().to(torch.float64)
        elif isinstance(pole, (float, int)) and not isinstance(pole, bool):
            dtype, shown = torch.get_default_dtype(), repr(float(pole))
            exact = torch.tensor(float(pole), dtype=torch.float64)
        else:
            raise TypeError(f"{name}: pole must be a float or a tensor, got {type(pole).__name__}.")
        # Checked as passed, before any rounding to the module's dtype.
        if not bool(((exact > 0) & (exact < 1)).all()):
            shown = shown if shown is not None else str(pole.tolist())
            raise ValueError(f"{name}: pole must lie strictly between 0 and 1, got {shown}.")
        # The logit, taken in double precision, holds poles far closer to 0 and 1
        # than the pole itself can in the dtype (see the class docstring).
        logit = torch.logit(exact).to(dtype).to(exact.device)
        if learnable:
            self.logit = nn.Parameter(logit)
        else:
            self.register_buffer("logit", logit)

    @property
    def pole(self) -> Tensor:
        """The pole ``p = sigmoid(logit)``."""
        return torch.sigmoid(self.logit)

    def forward(self, x: Tensor, zi: Tensor | None = None) -> Tensor:
        """Smooth ``x`` along its last dimension, starting from ``y[-1] = zi`` (default 0)."""
        name = "OnePoleSmoother"
        _check_tensor(name, "x", x)
        if x.dim() < 1:
            raise ValueError(f"{name}: x must have shape (*, T), got a 0-dimensional tensor.")
        if zi is not None:
            _check_tensor(name, "zi", zi)
            _check_same_dtype_and_device(name, {"x": x, "zi": zi})
        dtype = x.dtype
        if dtype in _COMPUTED_IN_FLOAT32:
            # Cast to half, a pole near 1 would lose most of the digits of 1 - p (its
            # DC gain): the smoother runs in float32, as the core filters do.
            x = x.float()
            zi = None if zi is None else zi.float()
        batch = x.shape[:-1]
        p = self.pole.to(x.dtype)
        try:
            shape = torch.broadcast_shapes(p.shape, batch)
        except RuntimeError:
            shape = None
        if shape != batch:
            raise ValueError(
                f"{name}: the pole {_shape(p)} does not broadcast to the batch shape "
                f"{tuple(batch)} of x {_shape(x)}."
            )
        # Unit DC gain for the pole as rounded, 1 - p (exact), except where p
        # rounded to 1: there 1 - p = sigmoid(-logit) is all the input has.
        real = x.real.dtype if x.is_complex() else x.dtype
        pole = self.pole.to(real)
        gain = torch.where(pole < 1, 1 - pole, torch.sigmoid(-self.logit).to(real)).to(x.dtype)
        p, gain = p.expand(batch)[..., None], gain.expand(batch)[..., None]
        return linear_recurrence(p, gain * x, zi).to(dtype)

    def extra_repr(self) -> str:
        shape = tuple(self.logit.shape)
        return f"pole shape={shape}, learnable={isinstance(self.logit, nn.Parameter)}"
