"""Every example in the toolkit's docstrings runs and prints what it says."""

from __future__ import annotations

import doctest

import pytest

import torchlpc.analysis
import torchlpc.coefficients
import torchlpc.filters
import torchlpc.nn


@pytest.mark.parametrize(
    "module",
    [torchlpc.filters, torchlpc.coefficients, torchlpc.analysis, torchlpc.nn],
    ids=lambda module: module.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed in {module.__name__}"
    )
