"""OnePoleSmoother with poles that round to 0 or 1 in the module's dtype.

The pole is checked as passed (docs/errors.md has the messages); a valid pole
that rounds to 1 in float32 runs as an integrator of (1 - p) x with the gain
intact, one that rounds to 0 passes x through, as the class docstring says.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchlpc.nn import OnePoleSmoother


@pytest.mark.parametrize("pole", [1 - 1e-9, 1 - 1e-12], ids=["1-1e-9", "1-1e-12"])
def test_pole_that_rounds_to_one(pole):
    smoother = OnePoleSmoother(pole, learnable=False)
    assert smoother.logit.dtype == torch.float32
    torch.testing.assert_close(smoother.logit.double(), torch.tensor(math.log(pole / (1 - pole)), dtype=torch.float64), rtol=1e-6, atol=0)
    assert smoother.pole.item() == 1.0  # as float32 holds it
    T = 1000
    y = smoother(torch.ones(1, T))
    # The exact smoother's step response, 1 - p^(t+1), is (t+1)(1-p) to within
    # T(1-p) relative, far below float32's precision here.
    expected = (torch.arange(1, T + 1, dtype=torch.float64) * (1 - pole))[None]
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=0)


def test_pole_that_rounds_to_zero():
    smoother = OnePoleSmoother(1e-50, learnable=False)
    assert smoother.pole.item() == 0.0
    x = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(smoother(x), x, rtol=1e-7, atol=0)


def test_float64_module_keeps_the_pole():
    smoother = OnePoleSmoother(torch.tensor(1 - 1e-9, dtype=torch.float64), learnable=False)
    assert smoother.logit.dtype == torch.float64
    assert abs(smoother.pole.item() - (1 - 1e-9)) < 1e-15


@pytest.mark.parametrize("pole", [1.0, 0.0, 1 + 1e-12, -1e-50], ids=str)
def test_poles_outside_the_interval_as_passed(pole):
    with pytest.raises(ValueError, match=f"got {pole!r}"):
        OnePoleSmoother(pole)
