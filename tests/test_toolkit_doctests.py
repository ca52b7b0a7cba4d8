"""Every public function and class of the toolkit has a docstring example, and it runs.

One test per public name (each toolkit module's ``__all__``), so a new public
function without an example fails here by name rather than hiding behind its
module's other examples; and one test per module, which also runs the examples of
anything else in it.
"""

from __future__ import annotations

import doctest

import pytest

import torchlpc
import torchlpc.analysis
import torchlpc.coefficients
import torchlpc.filters
import torchlpc.nn

MODULES = [torchlpc.filters, torchlpc.coefficients, torchlpc.analysis, torchlpc.nn]
PUBLIC = [
    pytest.param(module, name, id=f"{module.__name__}.{name}")
    for module in MODULES
    for name in module.__all__
]


def _run(tests: list[doctest.DocTest]) -> tuple[int, int]:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    return result.attempted, result.failed


@pytest.mark.parametrize("module, name", PUBLIC)
def test_public_object_has_a_working_example(module, name):
    obj = getattr(module, name)
    assert obj.__module__ == module.__name__, f"{name} is defined in {obj.__module__}"
    # The object's own docstring (methods of a class have theirs too).
    tests = [
        t
        for t in doctest.DocTestFinder().find(obj, name, module=module, globs={})
        if t.name == name and t.examples
    ]
    assert tests, f"{module.__name__}.{name} has no example in its docstring"
    # Imports alone show nothing: some line must print a result that is checked.
    assert any(example.want for test in tests for example in test.examples), (
        f"the example of {module.__name__}.{name} checks no output"
    )
    attempted, failed = _run(tests)
    assert attempted > 0 and failed == 0, f"{failed} of {attempted} examples of {name} failed"


def test_toolkit_names_are_exported_from_the_package():
    exported = set(torchlpc.__all__)
    for module in MODULES[:-1]:
        assert set(module.__all__) <= exported, module.__name__
    assert "nn" in exported


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed in {module.__name__}"
    )
