"""Every path of torchlpc within a small multiple of the plain recursion's error.

The reduced panel of the accuracy suite (``python -m benchmarks.accuracy --ci``):
the worst-conditioned filter of each kind (low-cutoff Butterworth and Chebyshev
designs, an elliptic one, a narrow peak, resonators at 0.9995 and 0.9999, an
order-32 LPC fit of speech, one-pole smoothers at 0.9999 and 0.99999, and slow
sweeps), on every path once, float32 and float64. Each cell asserts the contract
of ``benchmarks/accuracy.py``: for y, zf, grad_x, grad_A and grad_zi, the error
against a double-double truth is at most ``FACTOR`` times the error of the plain
sequential recursion in the same dtype (with a floor of a few ulps). ACCURACY.md
has the full panel.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction

import numpy as np
import pytest

from benchmarks import accuracy


@functools.lru_cache(maxsize=None)
def _cells():
    # Cells whose filter is unstable once rounded to the dtype are outside the contract.
    return {
        f"{c.filter.name}-{c.path}-{c.dtype}": c
        for c in accuracy.cells(ci=True, include_unavailable=True)
        if not c.skipped
    }


CELLS = [pytest.param(name, id=name) for name in _cells()]


@pytest.mark.parametrize("name", CELLS)
def test_within_the_sequential_error(name):
    cell = _cells()[name]
    if cell.path.startswith("triton") and not accuracy.triton_available():
        # CI installs Triton, so there the Triton paths must run.
        if os.environ.get("CI"):
            pytest.fail("the Triton kernels cannot run here, and CI must run them")
        pytest.skip("the Triton kernels cannot run here")
    accuracy.run_cell(cell)
    ratio, _ = cell.worst
    assert ratio <= accuracy.FACTOR, cell.describe()


def test_panel_covers_every_path_and_dtype():
    covered = {(c.path, c.dtype) for c in _cells().values()}
    assert covered == {(p, d) for p in accuracy.PATHS for d in accuracy.DTYPES}


@pytest.mark.parametrize(
    "got, truth, expected",
    [
        pytest.param([[1.0, 2.0], [0.0, 4.0]], [[1.0, 1.0], [0.0, 2.0]], 1.0, id="worst-row"),
        pytest.param([[float("nan"), 0.0]], [[1.0, 0.0]], float("inf"), id="nan"),
        pytest.param([[1e-20]], [[0.0]], 1e-20, id="zero-truth-absolute"),
    ],
)
def test_relative_error_definition(got, truth, expected):
    assert accuracy.relative_error(np.array(got), np.array(truth)) == expected


def test_double_double_truth_is_exact_enough():
    # A resonance at 0.99999, against the recursion in exact rational arithmetic.
    from benchmarks import accuracy_loops

    rng = np.random.default_rng(0)
    T = 512
    A = accuracy._resonator(0.99999, 0.01)[None]
    x = rng.standard_normal(T)
    (hi, lo), *_ = accuracy_loops.reference(x, A, np.zeros(2), np.zeros(T))
    a1, a2 = Fraction(A[0, 0]), Fraction(A[0, 1])
    y1 = y2 = Fraction(0)
    worst = Fraction(0)
    for t in range(T):
        y = Fraction(x[t]) - a1 * y1 - a2 * y2
        worst = max(worst, abs(Fraction(hi[t]) + Fraction(lo[t]) - y))
        y1, y2 = y, y1
    scale = max(abs(v) for v in hi)
    assert float(worst) / scale < 1e-28
