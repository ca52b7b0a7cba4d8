"""The wheel and the sdist as an installer and a package index see them: the license in
both, ``py.typed`` in the wheel, the metadata's URLs and license expression, a
description whose links resolve off the repository, and an sdist that holds every file
of the checkout (its test suite reads the examples, the docs, README.md and .ci/run).

The distributions are built once per module with hatchling, as ``.ci/run`` builds them
(no build isolation, so no build step can fetch another torch): an sdist from this tree,
a wheel from this tree and a wheel from the unpacked sdist. About a second in all.
Under CI=true nothing here is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if importlib.util.find_spec("hatchling") is None and not IN_CI:
    pytest.skip("hatchling, which builds the distributions, is not installed", allow_module_level=True)

# A Markdown link or image: [text](target).
_LINK_TARGET = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _build(source: Path, out: Path, *targets: str) -> None:
    target_args = [arg for target in targets for arg in ("-t", target)]
    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", *target_args, "-d", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"hatchling build failed in {source}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """Paths of the sdist, the wheel built from this tree and the wheel built from the sdist."""
    base = tmp_path_factory.mktemp("dists")
    _build(ROOT, base / "tree", "sdist", "wheel")
    (sdist,) = (base / "tree").glob("*.tar.gz")
    (wheel,) = (base / "tree").glob("*.whl")
    with tarfile.open(sdist) as archive:
        # filter="data" where this Python has it (3.11.4 on), as pip unpacks sdists.
        archive.extractall(base / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (base / "unpacked").iterdir()
    _build(unpacked, base / "from_sdist", "wheel")
    (wheel_from_sdist,) = (base / "from_sdist").glob("*.whl")
    return {"sdist": sdist, "wheel": wheel, "wheel_from_sdist": wheel_from_sdist}


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _wheel_file(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode("utf-8")


def _sdist_names(sdist: Path) -> set[str]:
    """The sdist's files, relative to its top folder."""
    with tarfile.open(sdist) as archive:
        return {m.name.split("/", 1)[1] for m in archive.getmembers() if m.isfile()}


def _metadata(wheel: Path):
    return HeaderParser().parsestr(_wheel_file(wheel, ".dist-info/METADATA"))


@pytest.mark.parametrize("which", ["wheel", "wheel_from_sdist"])
def test_wheel_holds_the_package_the_license_and_py_typed(dists, which):
    names = _wheel_names(dists[which])
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "torchlpc").rglob("*.py")}
    assert sources <= names, f"the wheel lacks {sorted(sources - names)}"
    assert "torchlpc/py.typed" in names
    assert _wheel_file(dists[which], ".dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_text()
    assert not any(n.startswith(("tests/", "examples/", "docs/")) for n in names), sorted(names)


def test_metadata_license_and_urls(dists):
    metadata = _metadata(dists["wheel"])
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues"}, urls
    assert all(url.startswith("https://") for url in urls.values()), urls


def test_description_is_the_readme_with_absolute_links(dists):
    metadata = _metadata(dists["wheel"])
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    relative = [t for t in _LINK_TARGET.findall(description) if not t.startswith(("https://", "#"))]
    assert not relative, f"links an index page cannot follow: {relative}"
    assert _LINK_TARGET.findall(readme), "README.md has no link left to check"
    # Only the link targets differ: the commands and the quick start are the README's.
    assert _LINK_TARGET.sub("", description).strip() == _LINK_TARGET.sub("", readme).strip()


def test_wheel_from_the_sdist_has_the_same_metadata(dists):
    assert _wheel_file(dists["wheel_from_sdist"], ".dist-info/METADATA") == _wheel_file(
        dists["wheel"], ".dist-info/METADATA"
    )


def test_sdist_holds_what_its_tests_read(dists):
    names = _sdist_names(dists["sdist"])
    needed = {"LICENSE", "PKG-INFO", "pyproject.toml", "hatch_build.py", "README.md", ".ci/run", "mkdocs.yml"}
    for folder in ("torchlpc", "tests", "examples", "docs"):
        needed |= {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*") if p.is_file()
                   and "__pycache__" not in p.parts and p.suffix not in (".nbi", ".nbc")}
    assert needed <= names, f"the sdist lacks {sorted(needed - names)}"


@pytest.mark.skipif(
    not (ROOT / ".git").exists() or shutil.which("git") is None,
    reason="not a git checkout (an unpacked sdist, say): no list of tracked files to compare with",
)
def test_sdist_holds_every_tracked_file(dists):
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    tracked = {name for name in tracked if name and (ROOT / name).is_file()}
    missing = tracked - _sdist_names(dists["sdist"])
    assert not missing, f"the sdist lacks tracked files: {sorted(missing)}"


def _hatch_build():
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = "https://github.com/owner/repo"


@pytest.mark.parametrize(
    "markdown, expected",
    [
        pytest.param("[B](BENCHMARKS.md)", f"[B]({SOURCE}/blob/main/BENCHMARKS.md)", id="file"),
        pytest.param("[e](./examples/README.md)", f"[e]({SOURCE}/blob/main/examples/README.md)", id="dot-slash"),
        pytest.param("see [docs/](docs/):", f"see [docs/]({SOURCE}/tree/main/docs/):", id="folder"),
        pytest.param("![p](benchmarks/results/a.png)", f"![p]({SOURCE}/raw/main/benchmarks/results/a.png)", id="image"),
        pytest.param("[x](https://pytorch.org/docs)", "[x](https://pytorch.org/docs)", id="absolute"),
        pytest.param("[m](mailto:a@b.c)", "[m](mailto:a@b.c)", id="other-scheme"),
        pytest.param("[t](#quick-start)", "[t](#quick-start)", id="fragment"),
        pytest.param("`x[t](i)` and [B](B.md)", f"`x[t](i)` and [B]({SOURCE}/blob/main/B.md)", id="code-span"),
        pytest.param("```python\nf[0](x)\n```\n[B](B.md)", f"```python\nf[0](x)\n```\n[B]({SOURCE}/blob/main/B.md)",
                     id="code-block"),
        pytest.param("no link: y[t] = x[t]", "no link: y[t] = x[t]", id="brackets-alone"),
    ],
)
def test_absolute_links(markdown, expected):
    assert _hatch_build().absolute_links(markdown, SOURCE + "/") == expected
