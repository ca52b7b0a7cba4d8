"""Run torchlpc 0.7.2's own tests/test_grad.py and tests/test_vmap.py, unmodified,
against this checkout's torchlpc: the proof that code written for 0.7.2 runs.

The tests come from 0.7.2's sdist, fetched now with pip (pip prepares the sdist's
metadata, and 0.7.2's setup.py imports torch and setuptools: so no build
isolation, which would fetch another torch). Only its tests/ directory is
unpacked, so that no copy of 0.7.2's torchlpc package is anywhere on the path;
this checkout's torchlpc is imported before pytest starts, and checked to be the
one the tests see. Their CUDA cases skip themselves where CUDA is unavailable.

Usage: python .ci/torchlpc072_tests.py   (from the repository root)
Exit status 0 when every collected test passed or skipped itself, and at least
the 18 CPU cases passed.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "torchlpc==0.7.2"
FILES = ("tests/__init__.py", "tests/test_grad.py", "tests/test_vmap.py")
# test_grad.py: 8 test_low_order and 8 test_parallel_scan cases on the CPU; test_vmap.py: 2.
CPU_CASES = 18


class Outcomes:
    """A pytest plugin that counts the outcome of every test."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    import torchlpc

    if Path(torchlpc.__file__).resolve().parent != root / "torchlpc":
        print(f"expected this checkout's torchlpc, got {torchlpc.__file__}")
        return 1

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
             "--no-deps", "--no-binary", ":all:", "--no-build-isolation", SDIST,
             "-d", str(scratch / "sdist")],
            check=True,
        )
        (archive,) = (scratch / "sdist").glob("torchlpc-0.7.2.tar.gz")
        suite = scratch / "suite"
        with tarfile.open(archive) as tar:
            for name in FILES:
                member = tar.getmember(f"torchlpc-0.7.2/{name}")
                member.name = name
                tar.extract(member, suite, filter="data")
        (suite / "pytest.ini").write_text("[pytest]\n")

        import pytest

        outcomes = Outcomes()
        status = pytest.main(
            ["-q", "-p", "no:cacheprovider", "--rootdir", str(suite), "-c", str(suite / "pytest.ini"),
             *(str(suite / name) for name in FILES[1:])],
            plugins=[outcomes],
        )
    seen = sys.modules["torchlpc"].__file__
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.counts.items()))
    print(f"torchlpc 0.7.2's test_grad.py and test_vmap.py against {seen}: {counts}")
    if status != 0 or outcomes.counts.get("passed", 0) < CPU_CASES:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
