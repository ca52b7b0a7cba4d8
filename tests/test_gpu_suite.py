"""benchmarks/gpu_run.sh end to end on CPU tensors, so that the GPU suite cannot rot.

The script as a GPU machine runs it (machine facts, peers, the runner with its
pre-timing correctness check, the report), with ``RUN_ARGS="--device cpu
--gpu-cases --tiny"``: the GPU protocol on two tiny cases, torchlpc's Triton
kernels in Triton's interpreter (``TRITON_INTERPRET=1 TORCHLPC_BACKEND=triton``).
No peer can be built without their sdists, so only torchlpc is measured. Every
file goes to a temporary directory; the checkout is not written. About a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import selfcheck

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.extended,
    pytest.mark.skipif(shutil.which("bash") is None, reason="benchmarks/gpu_run.sh needs bash"),
]


def test_gpu_run_script_on_cpu_tensors(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "out"
    env = dict(
        os.environ,
        OUT=str(out),
        GPU_RUN_RESULTS=str(tmp_path / "results"),
        GPU_PEERS_VENV=str(tmp_path / "venv"),
        CARRY=str(tmp_path / "carry"),
        RUN_ARGS="--device cpu --gpu-cases --tiny",
        GPU_RUN_BUDGET="240",
        PYTHON=sys.executable,
        TRITON_INTERPRET="1",
        TORCHLPC_BACKEND="triton",
    )
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-4000:]
    assert selfcheck.check_gpu_cases(out) == [], log[-4000:]
    data = json.loads((out / "latest-gpu-cases.json").read_text())
    assert [case["name"] for case in data["cases"]] == ["tv-f32-1x32x2", "ti-f32-1x16x2"]
    for case in data["cases"]:
        ours = case["results"]["torchlpc"]
        assert ours["check"]["ok"], ours
        assert ours["forward"]["median_ms"] > 0 and ours["backward"]["median_ms"] > 0
    markdown = (out / "BENCHMARKS.md").read_text()
    assert "### Targets" in markdown and "Forward vs torchlpc 0.7.2 CUDA" in markdown
    assert (out / "gpu_run.log").read_text().strip()
    assert "== done in" in log
