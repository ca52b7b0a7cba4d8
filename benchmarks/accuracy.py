"""The accuracy suite: every path of torchlpc on real filters, against the plain recursion.

A cell is one (filter, path, dtype). Its input (signal, state and output
gradient, standard normal, seeded by the cell) and the filter's coefficients
are rounded to the dtype; the ground truth is the filter and its adjoint run on
those same values in double-double arithmetic (:mod:`benchmarks.accuracy_loops`).
For each of ``y``, ``zf``, ``grad_x``, ``grad_A`` and ``grad_zi`` the cell
records three errors:

* the path's (the library's result),
* the plain sequential recursion's in the same dtype (``accuracy_loops.sequential``;
  for the core paths the larger of its two roundings, one per operation and one
  per fused multiply-add as the kernels compile it),
* ``scipy.signal.lfilter``'s in the same dtype (outputs; ``grad_x`` through
  lfilter on the reversed signal; time-invariant filters only).

**Error**: for each sequence of the batch, ``max |got - truth| / max |truth|``
over that sequence's values of the quantity; the cell's error is the largest
over the batch. NaN or infinity in a result is an infinite error.

**The contract**: on every cell and quantity, the path's error is at most
``FACTOR`` times the sequential recursion's, with a floor of ``FLOOR_ULPS``
units of the dtype's epsilon for cells where the sequential error is about zero:
``error <= FACTOR * max(sequential, FLOOR_ULPS * eps)``. The ratio reported is
``error / max(sequential, FLOOR_ULPS * eps)``; a cell passes when it is at most
``FACTOR``. ``zf`` and ``grad_zi`` are only N numbers each, so the sequential
error on them alone is a lucky or unlucky draw; theirs is at least the
sequential error over the region they come from, carried to them: the error of
the last ``WINDOW`` samples of ``y`` relative to ``max |zf|`` (zf is N of those
samples), and the error of the first ``WINDOW`` samples of ``grad_x`` times
``max_k sum_t |A[t, t+k]| max |grad_x| / max |grad_zi|``, how much the sum that
makes ``grad_zi`` from them can amplify it where it cancels.

Only stable filters count: a design whose coefficients, rounded to float32, put
a pole on or outside the unit circle has no float32 cells (they are listed as
skipped).

Run ``python -m benchmarks.accuracy`` for the whole panel (writes ACCURACY.md,
benchmarks/results/accuracy.json and benchmarks/results/accuracy.png), or pick
cells: ``python -m benchmarks.accuracy --filter cheby1 --path numba-split
--dtype float32`` prints them and writes nothing. ``--list`` lists filters and
paths.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal
import torch

if not torch.cuda.is_available():
    # Triton reads this when torchlpc's Triton kernels are first imported; it
    # runs them on CPU tensors. Nothing else reads it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Each cell measures the path it names: the numba kernels, not the chunked path
# that serves calls while they compile in the background.
os.environ.setdefault("TORCHLPC_CPU_COMPILE", "wait")

import torchlpc  # noqa: E402
from torchlpc import lfilter, linear_recurrence, sample_wise_lpc  # noqa: E402
from torchlpc.analysis import lpc_analysis, upsample_coefficients  # noqa: E402
from torchlpc.nn import AllPoleSynthesis, OnePoleSmoother  # noqa: E402

from . import accuracy_loops as loops  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FACTOR = 4.0
FLOOR_ULPS = 4.0
DTYPES = {"float32": torch.float32, "float64": torch.float64}
QUANTITIES = ("y", "zf", "grad_x", "grad_A", "grad_zi")
WINDOW = 256
EPS = {name: float(torch.finfo(dtype).eps) for name, dtype in DTYPES.items()}


# ---------------------------------------------------------------------------
# Filters.


def step_up(k: np.ndarray) -> np.ndarray:
    """LPC rows ``A (..., N)`` (``1 + sum A[i-1] z^-i``) from reflection coefficients."""
    N = k.shape[-1]
    a = np.zeros_like(k)
    for m in range(N):
        previous = a[..., :m].copy()
        a[..., :m] = previous + k[..., m : m + 1] * previous[..., ::-1]
        a[..., m] = k[..., m]
    return a


def step_down(a: np.ndarray) -> np.ndarray:
    """Reflection coefficients of LPC rows ``a (..., N)``; ``|k| < 1`` everywhere iff stable."""
    a = np.array(a, dtype=np.float64)
    N = a.shape[-1]
    k = np.zeros_like(a)
    for m in range(N - 1, -1, -1):
        km = a[..., m].copy()
        k[..., m] = km
        if m == 0:
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            denominator = (1 - km * km)[..., None]
            a = (a[..., :m] - km[..., None] * a[..., :m][..., ::-1]) / denominator
    return k


def is_stable(A: np.ndarray) -> bool:
    """Whether every row of ``A (..., N)`` has its poles strictly inside the unit circle."""
    k = step_down(A.reshape(-1, A.shape[-1]))
    return bool(np.all(np.abs(k) < 1))


def pole_radius(A: np.ndarray) -> float:
    rows = A.reshape(-1, A.shape[-1])
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), 16)).astype(int)]
    return float(max(np.abs(np.roots(np.concatenate([[1.0], r]))).max() for r in rows))


def speech_like(T: int, seed: int = 0, fs: float = 16000.0) -> np.ndarray:
    """A glottal pulse train (pitch gliding around 120 Hz) through five formant
    resonators whose frequencies drift slowly, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / fs
    pitch = 120 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t))
    phase = np.cumsum(pitch / fs)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    # A glottal flow derivative: each pulse shaped by a short decaying kernel.
    shape = np.exp(-np.arange(40) / 6.0) * np.sin(np.pi * np.arange(40) / 40)
    source = np.convolve(pulses, shape)[:T] + 0.01 * rng.standard_normal(T)
    formants = [(700, 80), (1220, 90), (2600, 120), (3300, 150), (3750, 200)]
    y = source
    for number, (frequency, bandwidth) in enumerate(formants):
        drift = frequency * (1 + 0.1 * np.sin(2 * np.pi * (0.3 + 0.1 * number) * t))
        radius = np.exp(-np.pi * bandwidth / fs)
        A = np.stack([-2 * radius * np.cos(2 * np.pi * drift / fs), np.full(T, radius**2)], -1)
        y = loops.sequential(y, A, np.zeros(2), np.zeros(T))[0]
    return y / np.abs(y).max()


def lpc_fit(signal: np.ndarray, order: int) -> np.ndarray:
    """LPC coefficients of the whole signal (autocorrelation method, Hann window)."""
    w = signal * np.hanning(len(signal))
    r = np.array([np.dot(w[k:], w[: len(w) - k]) for k in range(order + 1)])
    r[0] *= 1 + 1e-9
    return step_up(_levinson_reflection(r))


def _levinson_reflection(r: np.ndarray) -> np.ndarray:
    order = len(r) - 1
    a = np.zeros(0)
    error = r[0]
    k = np.zeros(order)
    for m in range(order):
        acc = r[m + 1] + np.dot(a, r[1 : m + 1][::-1])
        k[m] = -acc / error
        a = np.concatenate([a + k[m] * a[::-1], [k[m]]])
        error *= 1 - k[m] ** 2
    return k


@dataclass
class Filter:
    """A filter of the panel: a design, or a slow sweep between two designs."""

    name: str
    family: str
    a0: np.ndarray  # A of the design (A = scipy's a[1:] / a[0])
    a1: np.ndarray | None = None  # the other end of a sweep
    b: np.ndarray | None = None  # numerator, for lfilter cells
    frames: np.ndarray | None = None  # frame-wise LPC, for the analysis sweep
    hop: int = 0
    tags: tuple = ()
    _made: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def order(self) -> int:
        return len(self.a0)

    def __getstate__(self) -> dict:
        # Worker processes make their own coefficients: not tens of MB per cell.
        return {**self.__dict__, "_made": {}}

    @property
    def sweep(self) -> bool:
        return self.a1 is not None or self.frames is not None

    def coefficients(self, T: int) -> np.ndarray:
        """``(1, N)`` for a design, ``(T, N)`` for a sweep, float64 (kept, read-only)."""
        if T not in self._made:
            self._made[T] = self._coefficients(T)
            self._made[T].flags.writeable = False
        return self._made[T]

    def _coefficients(self, T: int) -> np.ndarray:
        if self.frames is not None:
            frames = torch.from_numpy(self.frames)
            return upsample_coefficients(frames, self.hop, "reflection", length=T).numpy()
        if self.a1 is None:
            return self.a0[None, :]
        # Reflection coefficients interpolated along a raised cosine: every row
        # stable, the sweep slow at both ends.
        k0, k1 = step_down(self.a0), step_down(self.a1)
        alpha = (0.5 - 0.5 * np.cos(np.pi * np.arange(T) / max(T - 1, 1)))[:, None]
        return step_up((1 - alpha) * k0 + alpha * k1)


def _design(kind: str, *args) -> tuple[np.ndarray, np.ndarray]:
    b, a = getattr(scipy.signal, kind)(*args)
    return b / a[0], a[1:] / a[0]


def _resonator(radius: float, angle: float) -> np.ndarray:
    return np.array([-2 * radius * math.cos(angle), radius * radius])


def _named(name, family, design, **kwargs):
    b, a = design
    return Filter(name=name, family=family, a0=a, b=b, **kwargs)


def panel() -> list[Filter]:
    """Every filter of the full panel, designs first, then sweeps."""
    filters = []
    for order, cutoff in [(2, 0.01), (4, 0.05), (6, 0.05), (8, 0.1), (4, 0.01), (10, 0.4)]:
        filters.append(
            _named(f"butter({order},{cutoff})", "butter", _design("butter", order, cutoff))
        )
    for order, ripple, cutoff in [(6, 1, 0.1), (4, 1, 0.02), (8, 0.5, 0.3), (2, 3, 0.05)]:
        filters.append(
            _named(
                f"cheby1({order},{ripple},{cutoff})", "cheby1",
                _design("cheby1", order, ripple, cutoff),
            )
        )
    for order, stop, cutoff in [(8, 40, 0.1), (4, 60, 0.02), (10, 40, 0.3), (6, 50, 0.2)]:
        filters.append(
            _named(
                f"cheby2({order},{stop},{cutoff})", "cheby2",
                _design("cheby2", order, stop, cutoff),
            )
        )
    for order, ripple, stop, cutoff in [(4, 1, 60, 0.05), (6, 0.5, 40, 0.1), (8, 1, 80, 0.3)]:
        filters.append(
            _named(
                f"ellip({order},{ripple},{stop},{cutoff})", "ellip",
                _design("ellip", order, ripple, stop, cutoff),
            )
        )
    for frequency, q, fs in [(100, 30, 44100), (1000, 5, 16000)]:
        filters.append(
            _named(f"iirpeak({frequency},{q},{fs})", "peak", _design("iirpeak", frequency, q, fs))
        )
    for frequency, q, fs in [(60, 30, 8000), (5000, 10, 44100)]:
        filters.append(
            _named(
                f"iirnotch({frequency},{q},{fs})", "notch", _design("iirnotch", frequency, q, fs)
            )
        )
    for radius in (0.99, 0.999, 0.9995, 0.9999):
        filters.append(
            Filter(f"resonator({radius})", "resonator", _resonator(radius, 0.05 * math.pi))
        )
    pairs = np.polymul(
        np.concatenate([[1], _resonator(0.9995, 0.02 * math.pi)]),
        np.concatenate([[1], _resonator(0.999, 0.03 * math.pi)]),
    )[1:]
    filters.append(Filter("resonator4(0.9995,0.999)", "resonator", pairs))
    speech = speech_like(16000)
    for order in (16, 24, 32):
        filters.append(Filter(f"lpc({order})", "lpc", lpc_fit(speech[4000:8000], order)))
    for pole in (0.99, 0.999, 0.9999, 0.99999):
        filters.append(
            Filter(f"smoother({pole})", "smoother", np.array([-pole]), b=np.array([1 - pole]))
        )

    sweeps = [
        ("butter(6,0.05->0.1)", "butter", _design("butter", 6, 0.05), _design("butter", 6, 0.1)),
        ("cheby1(6,1,0.1->0.05)", "cheby1", _design("cheby1", 6, 1, 0.1),
         _design("cheby1", 6, 1, 0.05)),
        ("cheby2(8,40,0.1->0.2)", "cheby2", _design("cheby2", 8, 40, 0.1),
         _design("cheby2", 8, 40, 0.2)),
        ("ellip(6,0.5,40,0.1->0.15)", "ellip", _design("ellip", 6, 0.5, 40, 0.1),
         _design("ellip", 6, 0.5, 40, 0.15)),
        ("iirpeak(100->400,30,44100)", "peak", _design("iirpeak", 100, 30, 44100),
         _design("iirpeak", 400, 30, 44100)),
    ]
    for name, family, (b, a0), (_, a1) in sweeps:
        filters.append(Filter(name, family, a0, a1=a1, b=b, tags=("sweep",)))
    filters.append(
        Filter(
            "resonator(0.99->0.9995)", "resonator",
            _resonator(0.99, 0.02 * math.pi), a1=_resonator(0.9995, 0.1 * math.pi),
            tags=("sweep",),
        )
    )
    filters.append(
        Filter("smoother(0.99->0.9999)", "smoother", np.array([-0.99]), a1=np.array([-0.9999]),
               tags=("sweep",))
    )
    for order in (16, 32):
        frames, _ = lpc_analysis(
            torch.from_numpy(speech), order, frame_length=512, hop_length=128
        )
        frames = frames.numpy()
        filters.append(
            Filter(f"lpc_frames({order})", "lpc", frames[0], frames=frames, hop=128,
                   tags=("sweep",))
        )
    return filters


# ---------------------------------------------------------------------------
# Paths: each runs the library on a cell's inputs and returns float64 arrays
# y (B, T), grad_x (B, T), grad_A (B, TA, N) and grad_zi (B, N).


@contextlib.contextmanager
def _environment(**variables):
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update({k: v for k, v in variables.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _autograd(function, x, A, zi, g):
    x, A, zi = (t.detach().clone().requires_grad_() for t in (x, A, zi))
    y = function(x, A, zi)
    grads = torch.autograd.grad(y, (x, A, zi), g)
    return (y.detach(), *grads)


def _public(x, A, zi, g):
    return _autograd(sample_wise_lpc, x, A, zi, g)


def _numba_batched(x, A, zi, g):
    # No more threads than sequences: one thread a sequence, never split over time.
    with _environment(TORCHLPC_BACKEND="numba"), _threads(min(torch.get_num_threads(), len(x))):
        return _public(x, A, zi, g)


def _numba_split(x, A, zi, g):
    # More threads than sequences, and a long time-invariant one: the case the
    # numba backend splits over time (unless it judges the filter unfit for it).
    with _environment(TORCHLPC_BACKEND="numba"), _threads(max(torch.get_num_threads(), 2)):
        return _public(x, A, zi, g)


def _chunked(x, A, zi, g):
    with _environment(TORCHLPC_BACKEND="chunked"):
        return _public(x, A, zi, g)


def _linear_recurrence(x, A, zi, g):
    a = (-A[..., 0]).expand(x.shape).contiguous()
    with _environment(TORCHLPC_BACKEND="numba"):
        y, grad_x, grad_a, grad_zi = _autograd(
            lambda x_, a_, zi_: linear_recurrence(a_, x_, zi_), x, a, zi[:, 0], g
        )
    return y, grad_x, -grad_a[..., None], grad_zi[:, None]


def _triton(variant):
    def run(x, A, zi, g):
        from torchlpc.kernels import cuda_triton

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        x, A, zi, g = (t.to(device) for t in (x, A, zi, g))
        y = cuda_triton.allpole(x, A, zi, variant=variant)
        grads = cuda_triton.allpole_vjp(g, A, y, zi, True, variant=variant)
        return (y.cpu(), *(t.cpu() for t in grads))

    return run


@dataclass(frozen=True)
class Path_:
    """How a path runs: the batch and length (full panel, CI panel), which
    filters it takes, and whether A is handed over dense ``(B, T, N)``."""

    run: object
    B: int
    T: int
    ci_T: int
    dense: bool = False
    invariant_only: bool = False
    sweep_only: bool = False
    order1_only: bool = False
    module: str = ""
    doc: str = ""


PATHS = {
    "numba-batched": Path_(
        _numba_batched, 4, 1 << 16, 1 << 12,
        doc="numba, 4 sequences, one thread each (time-invariant A as (B, 1, N))",
    ),
    "numba-split": Path_(
        _numba_split, 1, 1 << 20, 1 << 15, invariant_only=True,
        doc="numba, one long time-invariant sequence on 2+ threads: split over time",
    ),
    "numba-dense": Path_(
        _numba_batched, 4, 1 << 16, 1 << 12, dense=True, invariant_only=True,
        doc="numba time-varying kernels on the design expanded to a dense (B, T, N) A",
    ),
    "numba-single": Path_(
        _numba_batched, 1, 1 << 17, 1 << 13, sweep_only=True,
        doc="numba, one time-varying sequence",
    ),
    "numba-short": Path_(
        _numba_batched, 16, 50, 50,
        doc="numba, 50 samples (shorter than the blocked scans' 4 blocks of 16)",
    ),
    "linear-recurrence": Path_(
        _linear_recurrence, 1, 1 << 20, 1 << 15, dense=True, order1_only=True,
        doc="linear_recurrence with a (B, T) pole, one sequence",
    ),
    "linear-recurrence-batched": Path_(
        _linear_recurrence, 4, 1 << 17, 1 << 12, dense=True, order1_only=True,
        doc="linear_recurrence with a (B, T) pole, 4 sequences",
    ),
    "chunked": Path_(
        _chunked, 2, 1 << 16, 1 << 12,
        doc="TORCHLPC_BACKEND=chunked (pure PyTorch, parallel in time)",
    ),
    "triton-sequential": Path_(
        _triton("sequential"), 2, 256, 128, doc="Triton sequential kernel (interpreted on CPU)"
    ),
    "triton-chunked": Path_(
        _triton("chunked"), 2, 256, 128, doc="Triton chunked kernel (interpreted on CPU)"
    ),
    "lfilter": Path_(
        None, 1, 1 << 16, 1 << 15, invariant_only=True, module="lfilter",
        doc="torchlpc.lfilter(b, a, x) on one sequence: y and grad_x",
    ),
    "AllPoleSynthesis": Path_(
        None, 2, 1 << 15, 1 << 13, sweep_only=True, module="synthesis",
        doc="torchlpc.nn.AllPoleSynthesis(hop, 'reflection') on frames from lpc_analysis",
    ),
    "OnePoleSmoother": Path_(
        None, 4, 1 << 17, 1 << 12, order1_only=True, invariant_only=True, module="smoother",
        doc="torchlpc.nn.OnePoleSmoother(pole, learnable=False): y and grad_x",
    ),
}


def applies(path: str, flt: Filter) -> bool:
    spec = PATHS[path]
    if spec.invariant_only and flt.sweep:
        return False
    if spec.sweep_only and not flt.sweep:
        return False
    if spec.order1_only and flt.order != 1:
        return False
    if spec.module == "lfilter" and flt.b is None:
        return False
    if spec.module == "synthesis" and flt.frames is None:
        return False
    if path == "numba-split" and flt.order > 32:
        return False
    return True


def triton_available() -> bool:
    try:
        from torchlpc.kernels import cuda_triton
    except ImportError:
        return False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return cuda_triton.why_unusable(device) is None


# ---------------------------------------------------------------------------
# Cells.


def relative_error(got: np.ndarray, truth: np.ndarray, truth_low: np.ndarray | None = None):
    """Largest over the batch of ``max |got - truth| / max |truth|``, per sequence
    (the leading axis); NaN or infinity anywhere is an infinite error."""
    got = np.asarray(got, dtype=np.float64).reshape(len(truth), -1)
    truth = np.asarray(truth, dtype=np.float64).reshape(len(got), -1)
    if not np.all(np.isfinite(got)):
        return math.inf
    difference = got - truth
    if truth_low is not None:
        difference = difference - np.asarray(truth_low).reshape(difference.shape)
    worst = 0.0
    for d, t in zip(np.abs(difference), np.abs(truth), strict=True):
        if d.size == 0:
            continue
        scale = t.max()
        worst = max(worst, float(d.max() / scale) if scale > 0 else float(d.max()))
    return worst


def _seed(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


@dataclass
class Cell:
    filter: Filter
    path: str
    dtype: str
    B: int
    T: int
    errors: dict = field(default_factory=dict)  # quantity -> {path, sequential, scipy}
    skipped: str = ""
    seconds: float = 0.0
    radius: float = 0.0  # the largest pole radius of the filter (over a sweep)

    @property
    def floor(self) -> float:
        return FLOOR_ULPS * EPS[self.dtype]

    def ratio(self, quantity: str) -> float:
        e = self.errors[quantity]
        if math.isinf(e["path"]) or math.isnan(e["path"]):
            return math.inf
        return e["path"] / max(e.get("baseline", e["sequential"]), self.floor)

    @property
    def worst(self) -> tuple[float, str]:
        if not self.errors:
            return 0.0, ""
        return max((self.ratio(q), q) for q in self.errors)

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or self.worst[0] <= FACTOR

    def as_dict(self) -> dict:
        return {
            "filter": self.filter.name, "family": self.filter.family, "path": self.path,
            "dtype": self.dtype, "B": self.B, "T": self.T, "N": self.filter.order,
            "radius": self.radius, "errors": self.errors, "skipped": self.skipped,
            "worst_ratio": None if self.skipped else self.worst[0],
            "worst_quantity": self.worst[1], "seconds": round(self.seconds, 3),
        }

    def describe(self) -> str:
        head = (
            f"{self.filter.name:28s} {self.path:26s} {self.dtype:8s} B={self.B} T={self.T} "
            f"{self.seconds:5.1f}s"
        )
        if self.skipped:
            return f"{head}  skipped: {self.skipped}"
        ratio, quantity = self.worst
        parts = " ".join(
            f"{q}={e['path']:.2e}/{e['sequential']:.2e}" for q, e in self.errors.items()
        )
        verdict = "ok  " if ratio <= FACTOR else "FAIL"
        return f"{head}  {verdict} ratio {ratio:.3g} ({quantity})  [path/sequential: {parts}]"


def _inputs(flt: Filter, B: int, T: int, dtype: torch.dtype, dense: bool):
    rng = np.random.default_rng(_seed(flt.name, B, T))
    N = flt.order
    x = rng.standard_normal((B, T))
    zi = rng.standard_normal((B, N))
    g = rng.standard_normal((B, T))
    A = flt.coefficients(T)
    if dense and A.shape[0] == 1:
        A = np.repeat(A, T, axis=0)
    A = np.broadcast_to(A, (B, *A.shape))
    cast = [torch.from_numpy(np.array(v)).to(dtype) for v in (x, A, zi, g)]
    return cast


def _truth_and_sequential(x, A, zi, g, x_low=None):
    """Per sequence: double-double truth and the plain recursion in the inputs' dtype."""
    truth, plain = [], []
    for b in range(len(x)):
        row = [t[b].numpy() for t in (x, A, zi, g)]
        low = None if x_low is None else x_low[b]
        truth.append(loops.reference(*(np.float64(r) if r.ndim == 0 else r.astype(np.float64)
                                       for r in row), x_lo=low))
        plain.append(loops.sequential(*row))
    return truth, plain


def _scipy(x, A, zi, g):
    """scipy.signal.lfilter in the dtype: y, and grad_x on the reversed signal."""
    if A.shape[1] != 1:
        return None
    ys, gxs = [], []
    for b in range(len(x)):
        dtype = x.numpy().dtype
        a = np.concatenate([[1.0], A[b, 0].numpy().astype(np.float64)]).astype(dtype)
        one = np.ones(1, dtype)
        state = scipy.signal.lfiltic(one, a, zi[b].numpy()).astype(dtype)
        ys.append(scipy.signal.lfilter(one, a, x[b].numpy(), zi=state)[0])
        gxs.append(scipy.signal.lfilter(one, a, g[b].numpy()[::-1])[::-1])
    return np.stack(ys), np.stack(gxs)


def _errors(
    results, truth, plain, scipy_results, N, quantities=QUANTITIES, plain_fused=None, A=None
):
    y, gx, gA, gzi = (np.asarray(r, dtype=np.float64) for r in results)
    y_hi = np.stack([t[0][0] for t in truth])
    y_lo = np.stack([t[0][1] for t in truth])
    gx_hi = np.stack([t[1][0] for t in truth])
    gx_lo = np.stack([t[1][1] for t in truth])
    gA_hi = np.stack([t[2][0] for t in truth])
    gA_lo = np.stack([t[2][1] for t in truth])
    gzi_t = np.stack([t[3] for t in truth])
    seq = [np.stack([p[i] for p in plain]) for i in range(4)]
    # The plain recursion rounds once per operation, or once per fused multiply-add
    # as the kernels do: both are the plain recursion, and the error of either is
    # a draw (on a single value such as grad_zi one came out 6x below the other),
    # so the baseline is the larger of the two where both are run.
    fused = None if plain_fused is None else [
        np.stack([p[i] for p in plain_fused]) for i in range(4)
    ]

    def sequential_error(index, cut, hi, lo):
        errors = [relative_error(cut(seq[index]), hi, lo)]
        if fused is not None:
            errors.append(relative_error(cut(fused[index]), hi, lo))
        return max(errors)

    def triple(got, hi, lo, index, cut=lambda v: v, scipy_value=None):
        return {
            "path": relative_error(got, hi, lo),
            "sequential": sequential_error(index, cut, hi, lo),
            "scipy": None if scipy_value is None else relative_error(scipy_value, hi, lo),
        }

    sy = sgx = None
    if scipy_results is not None:
        sy, sgx = scipy_results
    table = {
        "y": triple(y, y_hi, y_lo, 0, scipy_value=sy),
        "zf": triple(
            y[:, -N:], y_hi[:, -N:], y_lo[:, -N:], 0, lambda v: v[:, -N:],
            None if sy is None else sy[:, -N:],
        ),
        "grad_x": triple(gx, gx_hi, gx_lo, 1, scipy_value=sgx),
        "grad_A": triple(gA.reshape(gA_hi.shape), gA_hi, gA_lo, 2, lambda v: v.reshape(gA_hi.shape)),
        "grad_zi": triple(gzi, gzi_t, None, 3),
    }
    # zf and grad_zi are N numbers each, too few for the sequential error on them to
    # be more than a draw (it comes out ten times below its usual level by luck);
    # their baseline is at least the sequential error where they come from, the
    # last WINDOW samples of y and the first WINDOW samples of grad_x, carried to
    # them: zf is N of those samples, whose error, relative to the window's
    # largest value, is larger relative to zf's own where zf is smaller; grad_zi
    # sums the first samples of grad_x times coefficients, cancelling where the
    # sum is small next to its terms (a low-cutoff Butterworth: 30x), so their
    # errors weigh sum |A| max |grad_x| / max |grad_zi| times more there.
    W = max(WINDOW, N)
    rows = range(len(y_hi))

    def carried(index, cut, hi, lo, weights):
        return max(
            sequential_error(index, lambda v, b=b: cut(v)[b : b + 1], hi[b : b + 1], lo[b : b + 1])
            * weights[b]
            for b in rows
        ) if len(y_hi) else 0.0

    def largest(values):
        return np.abs(np.asarray(values, dtype=np.float64)).reshape(len(y_hi), -1).max(axis=1, initial=0)

    zf_weights = largest(y_hi[:, -W:]) / np.maximum(largest(y_hi[:, -N:]), np.finfo(float).tiny)
    table["zf"]["baseline"] = max(
        table["zf"]["sequential"],
        carried(0, lambda v: v[:, -W:], y_hi[:, -W:], y_lo[:, -W:], np.maximum(zf_weights, 1)),
    )
    zi_weights = np.ones(len(y_hi))
    if A is not None:
        lags = np.abs(np.asarray(A)).reshape(len(y_hi), -1, N)
        # sum_t |A[t, t+k]| over the steps that reach zi[k], the largest over k.
        reach = np.array([
            max(sum(lags[b, min(t, lags.shape[1] - 1), t + k] for t in range(N - k)) for k in range(N))
            for b in rows
        ])
        zi_weights = reach * largest(gx_hi[:, :W]) / np.maximum(largest(gzi_t), np.finfo(float).tiny)
    table["grad_zi"]["baseline"] = max(
        table["grad_zi"]["sequential"],
        carried(1, lambda v: v[:, :W], gx_hi[:, :W], gx_lo[:, :W], np.maximum(zi_weights, 1)),
    )
    return {q: table[q] for q in quantities}


def _module_cell(cell: Cell, dtype: torch.dtype, B: int, T: int):
    """lfilter, AllPoleSynthesis and OnePoleSmoother cells: the library call, and
    the truth and plain recursion on the all-pole input and coefficients it uses."""
    flt = cell.filter
    spec = PATHS[cell.path]
    rng = np.random.default_rng(_seed(flt.name, cell.path, B, T))
    x = torch.from_numpy(rng.standard_normal((B, T))).to(dtype)
    g = torch.from_numpy(rng.standard_normal((B, T))).to(dtype)
    N = flt.order
    zi = torch.zeros(B, N, dtype=dtype)
    if spec.module == "lfilter":
        b = torch.from_numpy(flt.b).to(dtype)
        a = torch.cat([torch.ones(1, dtype=dtype), torch.from_numpy(flt.a0).to(dtype)])
        A = a[1:].expand(B, 1, N)
        xr = x.detach().clone().requires_grad_()
        y = lfilter(b, a, xr)
        (grad_x,) = torch.autograd.grad(y, xr, g)
        # The all-pole part's input, in double-double and in the dtype.
        fir = [loops.fir(b.numpy(), x[i].numpy()) for i in range(B)]
        u_hi = torch.from_numpy(np.stack([f[0] for f in fir]))
        u_lo = np.stack([f[1] for f in fir])
        u_plain = torch.from_numpy(np.stack([loops.fir_plain(b.numpy(), x[i].numpy())
                                             for i in range(B)]))
        truth, _ = _truth_and_sequential(u_hi, A.to(torch.float64), zi.double(), g.double(), u_lo)
        _, plain = _truth_and_sequential(u_plain, A, zi, g)
        # grad_x = FIR adjoint of the all-pole grad_x: b correlated with it.
        truth_gx = []
        for i in range(B):
            hi, lo = truth[i][1]
            rev = loops.fir(b.numpy(), hi[::-1].copy())
            rev_lo = loops.fir(b.numpy(), lo[::-1].copy())
            truth_gx.append((rev[0][::-1] + rev_lo[0][::-1], rev[1][::-1].copy()))
            truth[i] = (truth[i][0], truth_gx[-1], truth[i][2], truth[i][3])
        plain = [
            (p[0], loops.fir_plain(b.numpy(), p[1][::-1].copy())[::-1], p[2], p[3])
            for p in plain
        ]
        scipy_y = np.stack(
            [scipy.signal.lfilter(b.numpy(), a.numpy(), x[i].numpy()) for i in range(B)]
        )
        scipy_gx = np.stack(
            [scipy.signal.lfilter(b.numpy(), a.numpy(), g[i].numpy()[::-1])[::-1]
             for i in range(B)]
        )
        results = (y.detach(), grad_x, torch.zeros(B, 1, N), torch.zeros(B, N))
        return _errors(results, truth, plain, (scipy_y, scipy_gx), N, ("y", "zf", "grad_x"))
    if spec.module == "smoother":
        pole = -float(flt.a0[0])
        smoother = OnePoleSmoother(pole, learnable=False)
        p = smoother.pole.to(dtype)
        scale = (1 - p) * torch.ones((), dtype=dtype)
        xr = x.detach().clone().requires_grad_()
        y = smoother(xr)
        (grad_x,) = torch.autograd.grad(y, xr, g)
        u = (scale * x).double()  # the rounding of (1 - p) x is the module's input
        A = (-p).expand(B, 1, 1).contiguous()
        truth, _ = _truth_and_sequential(u, A.double(), zi.double(), g.double())
        _, plain = _truth_and_sequential(scale * x, A, zi, g)
        for i in range(B):
            hi, lo = truth[i][1]
            truth[i] = (truth[i][0], (hi * float(scale), lo * float(scale)), truth[i][2],
                        truth[i][3])
            plain[i] = (plain[i][0], plain[i][1] * scale.numpy(), plain[i][2], plain[i][3])
        results = (y.detach(), grad_x, torch.zeros(B, 1, 1), torch.zeros(B, 1))
        return _errors(results, truth, plain, None, 1, ("y", "zf", "grad_x"))
    # AllPoleSynthesis on frames from lpc_analysis, in the dtype.
    speech = torch.from_numpy(speech_like(T, seed=1)).to(dtype)
    frames, _ = lpc_analysis(speech, N, frame_length=512, hop_length=flt.hop)
    frames = frames.expand(B, *frames.shape).contiguous()
    synthesis = AllPoleSynthesis(flt.hop, mode="reflection")
    xr, zr = x.detach().clone().requires_grad_(), torch.randn(
        B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(_seed(flt.name))
    ).to(dtype).requires_grad_()
    y = synthesis(xr, frames, zr)
    grad_x, grad_zi = torch.autograd.grad(y, (xr, zr), g)
    A = upsample_coefficients(frames, flt.hop, "reflection", length=T)
    truth, plain = _truth_and_sequential(x, A, zr.detach(), g)
    results = (y.detach(), grad_x, torch.zeros(B, T, N), grad_zi)
    return _errors(results, truth, plain, None, N, ("y", "zf", "grad_x", "grad_zi"))


def stable_in(flt: Filter, dtype: str, T: int) -> bool:
    """Whether every row of the filter, rounded to ``dtype``, is strictly stable."""
    key = ("stable", dtype, T if flt.sweep else 1)
    if key not in flt._made:
        A = flt.coefficients(T if flt.sweep else 1)
        rounded = torch.from_numpy(A.copy()).to(DTYPES[dtype]).double().numpy()
        flt._made[key] = is_stable(rounded)
    return flt._made[key]


def run_cell(cell: Cell) -> Cell:
    start = time.perf_counter()
    flt, spec = cell.filter, PATHS[cell.path]
    dtype = DTYPES[cell.dtype]
    cell.radius = pole_radius(flt.coefficients(cell.T) if flt.sweep else flt.a0[None])
    if cell.skipped:
        return cell
    if spec.module:
        cell.errors = _module_cell(cell, dtype, cell.B, cell.T)
    else:
        x, A, zi, g = _inputs(flt, cell.B, cell.T, dtype, spec.dense)
        results = spec.run(x, A, zi, g)
        truth, plain = _truth_and_sequential(x, A, zi, g)
        rows = [[t[b].numpy() for t in (x, A, zi, g)] for b in range(len(x))]
        cell.errors = _errors(
            [r.numpy() if isinstance(r, torch.Tensor) else r for r in results],
            truth, plain, _scipy(x, A, zi, g), flt.order,
            plain_fused=[loops.sequential(*row, fused=True) for row in rows], A=A.numpy(),
        )
    cell.seconds = time.perf_counter() - start
    return cell


# ---------------------------------------------------------------------------
# Panels.

# The CI panel: the worst-conditioned filter of each kind, every path once.
CI_FILTERS = (
    "butter(6,0.05)", "cheby1(6,1,0.1)", "cheby2(8,40,0.1)", "ellip(6,0.5,40,0.1)",
    "iirpeak(100,30,44100)", "resonator(0.9995)", "resonator(0.9999)", "lpc(32)",
    "smoother(0.9999)", "smoother(0.99999)", "cheby1(6,1,0.1->0.05)", "resonator(0.99->0.9995)",
    "smoother(0.99->0.9999)", "lpc_frames(16)",
)
# The Triton interpreter runs a few hundred steps a second: a few filters only.
CI_TRITON_FILTERS = ("cheby1(6,1,0.1)",)
TRITON_FILTERS = (
    "cheby1(6,1,0.1)", "resonator(0.9995)", "smoother(0.9999)", "resonator(0.99->0.9995)",
)


def cells(
    filters=None,
    paths=None,
    dtypes=None,
    ci: bool = False,
    length: int | None = None,
    include_unavailable: bool = False,
) -> list[Cell]:
    """The cells of the full panel (or the CI panel), narrowed by substrings; the
    Triton paths only where their kernels can run, unless ``include_unavailable``."""
    triton = include_unavailable or triton_available()
    chosen = []
    for flt in panel():
        if ci and flt.name not in CI_FILTERS:
            continue
        if filters and not any(f in flt.name or f == flt.family for f in filters):
            continue
        for path, spec in PATHS.items():
            if paths and path not in paths:
                continue
            if path.startswith("triton") and flt.name not in (
                CI_TRITON_FILTERS if ci else TRITON_FILTERS
            ):
                continue
            if not applies(path, flt) or (path.startswith("triton") and not triton):
                continue
            for dtype in DTYPES:
                if dtypes and dtype not in dtypes:
                    continue
                T = length or (spec.ci_T if ci else spec.T)
                if path.startswith("triton") and torch.cuda.is_available() and not length:
                    T = 1 << 16
                cell = Cell(flt, path, dtype, spec.B, T)
                if not stable_in(flt, dtype, T):
                    # The contract is for stable filters only.
                    cell.skipped = f"unstable once its coefficients are rounded to {dtype}"
                chosen.append(cell)
    return chosen


def _slow_first(cell: Cell) -> float:
    """A rough cost, to hand the slowest cells out first."""
    if cell.path.startswith("triton") and not torch.cuda.is_available():
        return 1e12
    return cell.B * cell.T * (cell.filter.order + 4)


def run_cells(selected: list[Cell], jobs: int = 1) -> list[Cell]:
    """Run the cells, in worker processes when ``jobs > 1``, printing each as it ends;
    the results come back in the order given."""
    if jobs <= 1 or len(selected) <= 1:
        for cell in selected:
            run_cell(cell)
            print(cell.describe(), flush=True)
        return selected
    import concurrent.futures
    import multiprocessing

    order = sorted(range(len(selected)), key=lambda i: -_slow_first(selected[i]))
    results: list[Cell | None] = [None] * len(selected)
    # Spawned, not forked: the parent has already run torch's thread pools.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(run_cell, selected[i]): i for i in order}
        for future in concurrent.futures.as_completed(futures):
            cell = future.result()
            results[futures[future]] = cell
            print(cell.describe(), flush=True)
    return results


# ---------------------------------------------------------------------------
# Report.


def _fmt(value) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return "NaN/inf"
    return f"{value:.1e}"


def run_facts(seconds: float, jobs: int) -> dict:
    """Where and when the panel ran, for the report's header."""
    from .run import machine_facts

    facts = machine_facts(torch.get_num_threads())
    facts["generated"] = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    facts["seconds"] = seconds
    facts["jobs"] = jobs
    return facts


def write_report(results: list[Cell], facts: dict, path: Path) -> None:
    seconds = facts["seconds"]
    done = [c for c in results if not c.skipped]
    failed = [c for c in done if not c.passed]
    lines = [
        "# Accuracy",
        "",
        "<!-- Generated by `python -m benchmarks.accuracy`; do not edit by hand. -->",
        "",
        f"Generated {facts['generated']} at revision {facts['revision']}, torch "
        f"{facts['torch']}, {facts['cpu']}, {facts['logical_cpus']} CPUs, "
        f"{facts['jobs']} worker processes, in {seconds:.0f} s.",
        "",
        "**The contract.** For every path, dtype, filter of the panel and quantity (`y`, "
        "`zf`, `grad_x`, `grad_A`, `grad_zi`), the error against the truth is at most "
        f"{FACTOR:g} times the error of the plain sequential recursion in the same dtype on "
        f"the same input, or {FACTOR:g} x {FLOOR_ULPS:g} units of the dtype's epsilon "
        "where that is larger.",
        "",
        "**Error**: per sequence, `max |got - truth| / max |truth|`; the largest over the "
        "batch. **Truth**: the recursion and its adjoint in double-double arithmetic on the "
        "same dtype-rounded coefficients and inputs. **Ratio**: path error / max(sequential "
        f"error, {FLOOR_ULPS:g} eps), worst over the quantities; a cell passes at <= "
        f"{FACTOR:g}. `zf` and `grad_zi` are N numbers each, so the sequential error on "
        "them alone is a draw: their baseline is at least the sequential error where they "
        f"come from (the last {WINDOW} samples of `y`, the first {WINDOW} of `grad_x`), "
        "carried to them (see `benchmarks/accuracy.py`, which also has the panel and the "
        "paths).",
        "",
        f"**{len(done) - len(failed)} of {len(done)} cells pass**"
        + (f"; {len(failed)} fail (listed first)." if failed else "."),
        "",
    ]
    if failed:
        lines += ["## Failing cells", "", _table(failed), ""]
    lines += ["## Paths", "", "| path | B | T | what runs |", "|---|---|---|---|"]
    for name, spec in PATHS.items():
        lines.append(f"| {name} | {spec.B} | {spec.T} | {spec.doc} |")
    lines += ["", "## Every cell", "", _table(done), ""]
    skipped = [c for c in results if c.skipped]
    if skipped:
        lines += ["## Skipped", ""]
        for name in sorted({(c.filter.name, c.dtype, c.skipped) for c in skipped}):
            lines.append(f"- {name[0]} in {name[1]}: {name[2]}")
        lines.append("")
    lines += [
        "![error against pole radius](benchmarks/results/accuracy.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _table(results: list[Cell]) -> str:
    rows = [
        "| filter | radius | path | dtype | ratio | worst | y | zf | grad_x | grad_A | grad_zi "
        "| y seq. | grad_x seq. | y scipy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        ratio, quantity = c.worst
        e = c.errors
        verdict = f"{ratio:.3g}" if math.isfinite(ratio) else "NaN/inf"
        if ratio > FACTOR:
            verdict = f"**{verdict}**"

        def get(q, k="path"):
            return _fmt(e[q][k]) if q in e else "-"

        rows.append(
            f"| {c.filter.name} | {c.radius:.5f} | {c.path} | {c.dtype} | {verdict} | {quantity} "
            f"| {get('y')} | {get('zf')} | {get('grad_x')} | {get('grad_A')} | {get('grad_zi')} "
            f"| {get('y', 'sequential')} | {get('grad_x', 'sequential')} | {get('y', 'scipy')} |"
        )
    return "\n".join(rows)


def plot(results: list[Cell], path: Path) -> None:
    """Error (top) and ratio to the sequential error (bottom) against 1 - pole radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex="col")
    paths = list(PATHS)
    markers = "osD^v<>pP*Xhd"
    seen = set()
    for column, dtype in enumerate(DTYPES):
        top, bottom = axes[0, column], axes[1, column]
        for c in results:
            if c.skipped or c.dtype != dtype:
                continue
            error = max(c.errors[q]["path"] for q in c.errors)
            ratio = c.worst[0]
            k = paths.index(c.path)
            label = c.path if c.path not in seen else None
            seen.add(c.path)
            style = dict(s=14, marker=markers[k % len(markers)], color=f"C{k % 10}", alpha=0.75)
            distance = max(1 - c.radius, 1e-6)
            top.scatter(distance, min(max(error, 1e-17), 10.0), label=label, **style)
            bottom.scatter(distance, min(max(ratio, 1e-2), 1e5), **style)
            if c.path == "numba-batched":
                sequential = max(c.errors[q]["sequential"] for q in c.errors)
                top.scatter(
                    distance, max(sequential, 1e-17), s=40, facecolors="none", edgecolors="k",
                    label="sequential recursion" if "seq" not in seen else None,
                )
                seen.add("seq")
        bottom.axhline(FACTOR, color="k", lw=1, ls="--")
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.grid(alpha=0.3, which="both")
        bottom.invert_xaxis()
        top.set_title(dtype)
        top.set_ylabel("worst relative error over y, zf, gradients")
        bottom.set_ylabel(f"ratio to the sequential error (contract: <= {FACTOR:g})")
        bottom.set_xlabel("1 - largest pole radius")
    fig.legend(loc="upper center", ncol=5, fontsize=7, bbox_to_anchor=(0.5, 0.96))
    fig.suptitle("torchlpc accuracy against pole radius (NaN and infinity drawn at the top)")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cell_from_dict(entry: dict) -> Cell:
    flt = Filter(entry["filter"], entry["family"], np.zeros(entry["N"]))
    return Cell(
        flt, entry["path"], entry["dtype"], entry["B"], entry["T"], errors=entry["errors"],
        skipped=entry["skipped"], seconds=entry["seconds"], radius=entry["radius"],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", action="append", help="filter name substring or family")
    parser.add_argument("--path", action="append", choices=list(PATHS))
    parser.add_argument("--dtype", action="append", choices=list(DTYPES))
    parser.add_argument("--length", type=int, help="override every cell's T")
    parser.add_argument(
        "--ci", action="store_true", help="the reduced panel of tests/test_accuracy.py"
    )
    parser.add_argument("--list", action="store_true", help="list filters and paths, and exit")
    parser.add_argument(
        "--report-only", action="store_true",
        help="rewrite ACCURACY.md and the figure from benchmarks/results/accuracy.json",
    )
    parser.add_argument(
        "--jobs", type=int, default=min(os.cpu_count() or 1, 4),
        help="worker processes (default: the CPUs, at most 4); 1 runs in this process",
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "ACCURACY.md",
        help="where the full panel's report goes (default ACCURACY.md)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for flt in panel():
            print(f"{flt.name:30s} {flt.family:10s} N={flt.order}")
        for name, spec in PATHS.items():
            print(f"{name:26s} B={spec.B} T={spec.T}: {spec.doc}")
        return 0
    results_dir = ROOT / "benchmarks" / "results"
    if args.report_only:
        saved = json.loads((results_dir / "accuracy.json").read_text())
        results = [_cell_from_dict(entry) for entry in saved["cells"]]
        plot(results, results_dir / "accuracy.png")
        write_report(results, saved["facts"], args.output)
        return 0
    selected = cells(args.filter, args.path, args.dtype, ci=args.ci, length=args.length)
    partial = bool(args.filter or args.path or args.dtype or args.ci or args.length)
    start = time.perf_counter()
    results = run_cells(selected, args.jobs)
    seconds = time.perf_counter() - start
    failed = [c for c in results if not c.passed]
    ran = [c for c in results if not c.skipped]
    print(
        f"{len(ran) - len(failed)} of {len(ran)} cells pass, {len(results) - len(ran)} skipped "
        f"(unstable in their dtype) ({seconds:.0f} s)"
    )
    if not partial:
        facts = run_facts(seconds, args.jobs)
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "accuracy.json").write_text(
            json.dumps(
                {"facts": facts, "cells": [c.as_dict() for c in results]}, indent=1, default=float
            )
        )
        plot(results, results_dir / "accuracy.png")
        write_report(results, facts, args.output)
        print(f"wrote {args.output} and {results_dir / 'accuracy.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
