"""The benchmark cases: what is measured, apart from how it is timed.

A case is a plain record (it travels to the worker processes as JSON). Shapes
follow the library: a signal ``x (B, T)``, coefficients ``A (B, T, N)``, or
``A (B, 1, N)`` for a time-invariant filter, and a state ``zi (B, N)``; the
``linear_recurrence`` cases use ``a (B, T)``, ``x (B, T)`` and ``zi (B,)``.

The byte counts here are the least memory traffic any implementation needs:
every input read once and every result written once (the model of the
"fraction of the bandwidth limit" column in the report).
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import asdict, dataclass

__all__ = [
    "Case",
    "FULL_CASES",
    "QUICK_CASES",
    "GPU_CASES",
    "GPU_QUICK_CASES",
    "GPU_TINY_CASES",
    "select_cases",
]

_ITEMSIZE = {"float32": 4, "float64": 8}

ALLPOLE = "allpole"
LINEAR_RECURRENCE = "linear_recurrence"


@dataclass(frozen=True)
class Case:
    """One problem size: an op, a shape, a dtype."""

    group: str
    op: str
    B: int
    T: int
    N: int
    dtype: str = "float32"
    time_invariant: bool = False
    # Threads of the workers that run the case; None: the run's --threads.
    threads: int | None = None

    @property
    def name(self) -> str:
        kind = {ALLPOLE: "ti" if self.time_invariant else "tv", LINEAR_RECURRENCE: "lr"}[self.op]
        shape = (
            f"{self.B}x{self.T}" if self.op == LINEAR_RECURRENCE else f"{self.B}x{self.T}x{self.N}"
        )
        threads = f"-{self.threads}thread" if self.threads else ""
        return f"{kind}-{self.dtype.replace('float', 'f')}-{shape}{threads}"

    @property
    def seed(self) -> int:
        """A seed derived from the name, so every worker builds the same inputs."""
        return zlib.crc32(self.name.encode())

    @property
    def samples(self) -> int:
        return self.B * self.T

    def _sizes(self) -> dict[str, int]:
        """Element counts of every tensor an implementation must read or write."""
        B, T, N = self.B, self.T, self.N
        if self.op == LINEAR_RECURRENCE:
            coefficients, state = B * T, B
        else:
            coefficients, state = B * (1 if self.time_invariant else T) * N, B * N
        return {"x": B * T, "A": coefficients, "zi": state, "y": B * T}

    def min_bytes(self, mode: str) -> int:
        """Least bytes moved: ``forward`` reads x, A, zi and writes y; ``backward``
        (forward and backward together) adds reading grad_y, A, y and writing
        grad_x, grad_A, grad_zi."""
        n = self._sizes()
        forward = n["x"] + n["A"] + n["zi"] + n["y"]
        backward = (n["y"] + n["A"] + n["y"]) + (n["x"] + n["A"] + n["zi"])
        total = forward if mode == "forward" else forward + backward
        return total * _ITEMSIZE[self.dtype]

    def necessary_bytes(self) -> int:
        """Bytes of everything that must exist at the end of forward+backward:
        inputs x, A, zi and the incoming grad_y, the output y and the gradients
        grad_x, grad_A, grad_zi."""
        n = self._sizes()
        return 2 * (n["x"] + n["A"] + n["zi"] + n["y"]) * _ITEMSIZE[self.dtype]

    def to_json(self) -> dict:
        return {**asdict(self), "name": self.name, "seed": self.seed, "samples": self.samples}


def _allpole(group, shapes, dtype="float32", time_invariant=False, threads=None):
    return [Case(group, ALLPOLE, B, T, N, dtype, time_invariant, threads) for B, T, N in shapes]


_TIME_VARYING = [
    (1, 16384, 2),
    (8, 16384, 2),
    (64, 16384, 2),
    (8, 16384, 16),
    (64, 4096, 16),
    (16, 44100, 32),
    (256, 2048, 8),
    (32, 65536, 16),
]

# One sequence on one thread, against the order: the cost per sample of the
# recursion itself, with no batch to spread over threads (BENCHMARKS.md's
# "One sequence, one thread" section and its figure).
ORDER_SWEEP_ORDERS = (1, 2, 4, 8, 16, 32, 64)
ONE_THREAD = "one thread"

FULL_CASES: list[Case] = [
    *_allpole("time-varying", _TIME_VARYING),
    *_allpole("time-invariant", [(1, 2**20, 2), (64, 16384, 8)], time_invariant=True),
    *[Case("linear recurrence", LINEAR_RECURRENCE, B, T, 1) for B, T in [(64, 16384), (1, 2**20)]],
    *_allpole("time-varying float64", _TIME_VARYING, dtype="float64"),
    *_allpole(ONE_THREAD, [(1, 2**20, N) for N in ORDER_SWEEP_ORDERS], threads=1),
]

# Small enough to run in seconds; one case of every kind, awkward sizes included.
QUICK_CASES: list[Case] = [
    *_allpole("time-varying", [(2, 300, 2), (3, 257, 5)]),
    *_allpole("time-invariant", [(2, 513, 3)], time_invariant=True),
    Case("linear recurrence", LINEAR_RECURRENCE, 2, 301, 1),
    *_allpole("time-varying float64", [(2, 300, 2)], dtype="float64"),
    *_allpole(ONE_THREAD, [(1, 4099, 8)], threads=1),
]


# The GPU cases (python -m benchmarks.run --device cuda), float32. The first three
# shapes carry the speed targets against torchlpc 0.7.2's CUDA kernels, the fourth the
# memory-bandwidth target; the time-invariant case is the one torchaudio's lfilter
# can run. Ordered by importance: a run that reaches its time limit drops the last.
GPU_TARGET_SHAPES = [(16, 44100, 32), (8, 16384, 16), (1, 2**20, 16)]
GPU_BANDWIDTH_SHAPE = (1024, 16384, 16)

GPU_CASES: list[Case] = [
    *_allpole("time-varying", [*GPU_TARGET_SHAPES, GPU_BANDWIDTH_SHAPE]),
    *_allpole("time-invariant", [(16, 44100, 32)], time_invariant=True),
    Case("linear recurrence", LINEAR_RECURRENCE, 1, 2**20, 1),
]

# The GPU protocol on tiny shapes, for smoke tests (also on CPU tensors, see
# benchmarks/run.py --gpu-cases): a row long enough for the chunked Triton variant
# (B = 1, T >= 1024), a short one, a time-invariant one and a linear recurrence.
GPU_QUICK_CASES: list[Case] = [
    *_allpole("time-varying", [(1, 1100, 3), (2, 300, 4)]),
    *_allpole("time-invariant", [(2, 513, 3)], time_invariant=True),
    Case("linear recurrence", LINEAR_RECURRENCE, 1, 1100, 1),
]


# Smaller still, for the GPU protocol under Triton's interpreter, which runs a few
# hundred time steps a second (tests/test_gpu_suite.py runs benchmarks/gpu_run.sh so).
GPU_TINY_CASES: list[Case] = [
    *_allpole("time-varying", [(1, 32, 2)]),
    *_allpole("time-invariant", [(1, 16, 2)], time_invariant=True),
]


def select_cases(
    patterns: list[str] | None, quick: bool = False, gpu: bool = False, tiny: bool = False
) -> list[Case]:
    """The registry (the GPU one with ``gpu``, its tiny one with ``tiny`` too), or the
    cases whose name matches one of the shell-style patterns."""
    if gpu:
        cases = GPU_TINY_CASES if tiny else GPU_QUICK_CASES if quick else GPU_CASES
    else:
        cases = QUICK_CASES if quick else FULL_CASES
    if not patterns:
        return list(cases)
    chosen = [case for case in cases if any(fnmatch.fnmatchcase(case.name, p) for p in patterns)]
    if not chosen:
        names = ", ".join(case.name for case in cases)
        raise ValueError(f"no case matches {' '.join(patterns)}; the cases are: {names}.")
    return chosen
