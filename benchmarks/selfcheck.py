"""Smoke test of the benchmark suite: a quick run without peers, then the report.

    python -m benchmarks.selfcheck [--keep DIR] [--gpu-cases]

Runs ``python -m benchmarks.run --quick --no-peers --out DIR`` and
``python -m benchmarks.report`` into DIR (a temporary directory unless --keep),
then checks that torchlpc passed the correctness check and was timed forward and
forward+backward on every quick case. Exit status 0 on success. Takes well under a
minute; nothing outside DIR is written.

With ``--gpu-cases``, the GPU protocol instead (``benchmarks.run --device cpu
--gpu-cases``: the GPU cases' code path on tiny shapes and CPU tensors), and its
section of the report. Under ``TRITON_INTERPRET=1 TORCHLPC_BACKEND=triton`` it runs
torchlpc's Triton kernels in Triton's interpreter (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    print("$ python", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def check(out: Path) -> list[str]:
    """Problems found in a quick run's output; empty when it is sound."""
    problems = []
    data = json.loads((out / "latest.json").read_text())
    if not data["cases"]:
        problems.append("no case was run")
    for case in data["cases"]:
        ours = case["results"].get("torchlpc", {})
        if not ours.get("check", {}).get("ok"):
            problems.append(f"{case['name']}: torchlpc did not pass the check ({ours})")
        for mode in ("forward", "backward"):
            if "median_ms" not in ours.get(mode, {}):
                problems.append(f"{case['name']}: torchlpc has no {mode} time ({ours.get(mode)})")
        # The cases with a thread count of their own (the order sweep) have no memory pass.
        if not case.get("threads") and "peak_bytes" not in ours.get("memory", {}):
            problems.append(f"{case['name']}: torchlpc has no peak memory ({ours.get('memory')})")
    if "1" not in data["bandwidth"].get("by_threads", {}):
        problems.append("no copy bandwidth of one thread beside the one-thread case")
    runs = data.get("first_calls", {}).get("runs", [])
    if not runs or any("forward_s" not in run for run in runs):
        problems.append(f"first calls not measured in fresh processes: {runs}")
    markdown = (out / "BENCHMARKS.md").read_text()
    for heading in ("| case | torchlpc ms (median) |", "## One sequence, one thread", "## First calls"):
        if heading not in markdown:
            problems.append(f"BENCHMARKS.md has no {heading!r}")
    return problems


def check_gpu_cases(out: Path) -> list[str]:
    """Problems found in a quick run of the GPU protocol on CPU tensors."""
    problems = []
    data = json.loads((out / "latest-gpu-cases.json").read_text())
    if not data["cases"]:
        problems.append("no GPU case was run")
    if data.get("device", {}).get("type") != "cpu":
        problems.append(f"the results do not name the device: {data.get('device')}")
    for case in data["cases"]:
        ours = case["results"].get("torchlpc", {})
        if not ours.get("check", {}).get("ok"):
            problems.append(f"{case['name']}: torchlpc did not pass the check ({ours})")
        if "backward" not in ours.get("first_call_s", {}):
            problems.append(f"{case['name']}: no untimed full-size first call ({ours})")
        for mode in ("forward", "backward"):
            if "median_ms" not in ours.get(mode, {}):
                problems.append(f"{case['name']}: torchlpc has no {mode} time ({ours.get(mode)})")
    markdown = (out / "BENCHMARKS.md").read_text()
    if "\n## GPU: " not in markdown or "| case | torchlpc ms (median) |" not in markdown:
        problems.append("BENCHMARKS.md has no GPU section with a timing table")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selfcheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--keep", type=Path, help="write into this directory and keep it")
    parser.add_argument(
        "--gpu-cases", action="store_true", help="the GPU protocol, on CPU tensors"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="torchlpc-bench-selfcheck-") as scratch:
        out = args.keep or Path(scratch)
        if args.gpu_cases:
            run = ("benchmarks.run", "--device", "cpu", "--gpu-cases", "--quick", "--no-peers")
            _run(*run, "--out", str(out))
            _run(
                "benchmarks.report",
                "--input",
                str(ROOT / "benchmarks" / "results" / "latest.json"),
                "--gpu-input",
                str(out / "latest-gpu-cases.json"),
                "--markdown",
                str(out / "BENCHMARKS.md"),
                "--plot",
                str(out / "throughput.png"),
            )
            problems = check_gpu_cases(out)
            for problem in problems:
                print("selfcheck:", problem, file=sys.stderr)
            print("selfcheck:", "FAILED" if problems else "ok")
            return 1 if problems else 0
        _run("benchmarks.run", "--quick", "--no-peers", "--out", str(out))
        _run(
            "benchmarks.report",
            "--input",
            str(out / "latest.json"),
            "--markdown",
            str(out / "BENCHMARKS.md"),
        )
        problems = check(out)
    for problem in problems:
        print("selfcheck:", problem, file=sys.stderr)
    print("selfcheck:", "FAILED" if problems else "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
