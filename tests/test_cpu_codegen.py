"""The machine code numba makes of the CPU kernels, for CPUs other than this one.

The kernels' inner loops call the vector primitives of ``kernels/_simd.py`` once
per time step. Where LLVM's inliner is left to decide, it inlines them for an
AVX2 target (this machine) but, for AVX-512 targets (``znver4``,
``skylake-avx512``), emitted a call per time step, with every register-held
output spilled around it: the forward at N >= 8 on a 2-core AVX-512 EPYC ran
10.9 ns a sample where this machine runs 3.5. The primitives are inlined by
numba itself now (``inline="always"``); these tests compile every entry kernel
for those targets, in a fresh process with its own numba cache, and look for
calls to the primitives in the assembly. (The code cannot run here: this
machine has no AVX-512.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_LIST_CALLS = textwrap.dedent(
    """
    import re
    import numba
    from numba import types
    from torchlpc.kernels import cpu_numba

    def array(dtype, ndim):
        return types.Array(dtype, ndim, "C")

    def calls(kernel, signature):
        kernel.compile(signature)
        assembly = kernel.inspect_asm(signature)
        return sorted(set(re.findall(r"\\$(_ZN8torchlpc7kernels5_simd\\w*)", assembly)))

    found = []
    for dtype in (types.float32, types.float64):
        two, three = array(dtype, 2), array(dtype, 3)
        for family, kernel in cpu_numba.FWD_KERNELS.items():
            found += [("forward", family, str(dtype), c) for c in calls(kernel, (two, three, two, two))]
        for (family, invariant), kernel in cpu_numba.VJP_KERNELS.items():
            grad_A = array(types.float64, 2) if invariant else three
            signature = (two, three, two, two, two, grad_A, two, types.boolean)
            found += [("vjp", family, invariant, str(dtype), c) for c in calls(kernel, signature)]
    for entry in found:
        print(*entry)
    print("checked", numba.config.CPU_NAME)
    """
)


@pytest.mark.extended
@pytest.mark.parametrize("cpu", ["znver4", "skylake-avx512"])
def test_vector_primitives_are_inlined_for_avx512_targets(cpu, tmp_path):
    env = {
        **os.environ,
        "NUMBA_CPU_NAME": cpu,
        "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", _LIST_CALLS],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"checked {cpu}", result.stdout[-2000:]
    assert lines[:-1] == [], "calls left to the vector primitives:\n" + "\n".join(lines[:-1])
