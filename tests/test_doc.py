"""The examples in the core modules' docstrings run and print what they say."""

from __future__ import annotations

import doctest

import pytest

import torchlpc.functional


@pytest.mark.parametrize("module", [torchlpc.functional], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module.__name__}"
