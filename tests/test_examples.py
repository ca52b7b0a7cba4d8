"""Every script in examples/ runs with --quick, writes what it says it writes and
gets the result it is about (resynthesis close to the input, a learned filter close
to the true one, DDP ranks in step), and every Python code block in the
documentation pages runs. Under CI=true nothing here is skipped.

Each example runs in a subprocess, as a user would start it, from the repository
root with the repository on PYTHONPATH and its output directory in tmp_path. The
DDP example runs under ``python -m torch.distributed.run`` with two processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch.distributed

# Each example is a Python process of its own: CI's extended step.
pytestmark = pytest.mark.extended

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# CI sets CI=true; there a missing prerequisite is a failure, never a skip.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _gloo_missing() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_gloo_available())


def _check_analysis_resynthesis(stdout: str, out: Path) -> None:
    snr = float(re.search(r"reconstruction from the residual: .* SNR ([\d.]+) dB", stdout)[1])
    assert snr > 60, f"resynthesis from the residual is only {snr} dB from the input"
    assert "all stable: True" in stdout


def _check_learning(stdout: str, out: Path) -> None:
    summary = json.loads((out / "learn_time_varying_filter.json").read_text())
    losses = summary["losses"]
    assert losses[-1] < 1e-3 * losses[0], f"the loss only went from {losses[0]} to {losses[-1]}"
    assert summary["max_coefficient_error"] < 0.1, summary["max_coefficient_error"]


def _check_envelope(stdout: str, out: Path) -> None:
    summary = json.loads((out / "envelope_follower.json").read_text())
    for name, model in summary["models"].items():
        assert model["losses"][-1] < model["losses"][0], f"{name} did not learn"


def _check_compile(stdout: str, out: Path) -> None:
    summary = json.loads((out / "compile_training.json").read_text())
    assert summary["compiled_step_ms"] > 0 and summary["eager_step_ms"] > 0
    assert len(summary["eager_losses"]) == len(summary["compiled_losses"]) == summary["steps"] + 1


def _check_ddp(stdout: str, out: Path) -> None:
    assert "not started by torchrun" not in stdout, "the DDP example did not run under torchrun"
    summary = json.loads((out / "ddp_training.json").read_text())
    assert (summary["world_size"], summary["backend"]) == (2, "gloo"), summary
    assert summary["gradient_spread"] == 0 and summary["parameter_spread"] == 0


def _torchrun(script: str) -> list[str]:
    # --standalone picks a free port, so parallel runs on one machine do not collide.
    return ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script]


# script, how to start it, files it must write to --out (None: it takes no --out and
# writes nothing), seconds allowed (torch.compile's first compilation on a cold cache
# takes most of its time), and a check of what it printed and wrote.
CASES = [
    pytest.param(
        "analysis_resynthesis.py",
        None,
        ("input.wav", "resynthesis.wav", "whisper.wav", "analysis_resynthesis.png"),
        120,
        _check_analysis_resynthesis,
        id="analysis_resynthesis",
    ),
    pytest.param(
        "learn_time_varying_filter.py",
        None,
        ("learn_time_varying_filter.png", "learn_time_varying_filter.json"),
        120,
        _check_learning,
        id="learn_time_varying_filter",
    ),
    pytest.param(
        "envelope_follower.py",
        None,
        ("envelope_follower.png", "envelope_follower.json"),
        120,
        _check_envelope,
        id="envelope_follower",
    ),
    pytest.param(
        "compile_training.py",
        None,
        ("compile_training.json",),
        300,
        _check_compile,
        id="compile_training",
    ),
    pytest.param(
        "ddp_training.py",
        _torchrun,
        ("ddp_training.json",),
        180,
        _check_ddp,
        id="ddp_training",
        marks=pytest.mark.skipif(
            _gloo_missing() and not IN_CI, reason="torch.distributed has no gloo backend here"
        ),
    ),
    pytest.param("demo.py", None, None, 120, None, id="demo"),
]


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check_file(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} was not written"
    if path.suffix == ".png":
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    elif path.suffix == ".wav":
        with wave.open(str(path)) as f:
            assert (f.getnchannels(), f.getsampwidth()) == (1, 2), f"{path.name}: not 16-bit mono"
            assert f.getnframes() > 0, f"{path.name} has no samples"
    elif path.suffix == ".json":
        json.loads(path.read_text())


@pytest.mark.parametrize("script, launcher, files, timeout, check", CASES)
def test_example_runs_quick(script, launcher, files, timeout, check, tmp_path):
    path = EXAMPLES / script
    assert path.is_file(), f"examples/{script} is listed in CASES but does not exist"
    relative = str(path.relative_to(ROOT))
    args = [*(launcher(relative) if launcher else [relative]), "--quick"]
    if files is not None:
        args += ["--out", str(tmp_path)]
    result = _run(args, timeout)
    assert result.returncode == 0, (
        f"examples/{script} --quick exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )
    assert result.stdout.strip(), f"examples/{script} printed nothing"
    for name in files or ():
        _check_file(tmp_path / name)
    if check is not None:
        check(result.stdout, tmp_path)


def test_every_example_is_run():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    listed = {case.values[0] for case in CASES}
    assert scripts <= listed, f"add {sorted(scripts - listed)} to CASES in tests/test_examples.py"
    assert listed <= scripts, f"CASES lists {sorted(listed - scripts)}, which examples/ lacks"


# Fenced ```python blocks at the start of a line; indented ones (the example sources
# that the gallery includes) are not page code.
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DOC_PAGES = sorted(
    p.relative_to(DOCS).as_posix()
    for p in DOCS.rglob("*.md")
    if _PYTHON_BLOCK.search(p.read_text())
)


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_code_blocks_run(page):
    namespace = {"__name__": f"docs.{page}"}
    for i, block in enumerate(_PYTHON_BLOCK.findall((DOCS / page).read_text())):
        exec(compile(block, f"docs/{page} (python block {i + 1})", "exec"), namespace)  # noqa: S102


def test_readme_code_blocks_run():
    """The README's quick start (every ```python block) runs as written."""
    blocks = _PYTHON_BLOCK.findall((ROOT / "README.md").read_text())
    assert blocks, "README.md has no python block"
    namespace = {"__name__": "README"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md (python block {i + 1})", "exec"), namespace)  # noqa: S102


def _readme_setup_commands() -> list[str]:
    """The commands of the README's first bash block, comments stripped."""
    block = re.search(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)
    assert block, "README.md has no bash block"
    lines = (line.split("#", 1)[0].strip() for line in block.group(1).splitlines())
    return [line for line in lines if line]


def test_ci_runs_the_readme_test_command():
    """.ci/run installs torch 2.13.0 first and runs the README's test command; the README's
    main job is a script that exists (and that test_example_runs_quick runs)."""
    commands = _readme_setup_commands()
    tests = [c for c in commands if "pytest" in c]
    assert len(tests) == 1, commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests[0] in ci, f"{tests[0]!r} is not a line of .ci/run"
    installs = [line for line in ci if "pip install" in line]
    assert installs and installs[0].endswith(" torch==2.13.0"), installs[:1]
    demos = [c for c in commands if c.startswith("python examples/")]
    assert demos and all((ROOT / c.split()[1]).is_file() for c in demos), commands
    assert any(case.values[0] == Path(c.split()[1]).name for c in demos for case in CASES)
