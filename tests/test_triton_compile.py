"""The Triton kernels compiled for real GPUs (sm_80, sm_90, sm_120), no GPU needed.

The variants come from the launchers' own plans (``cuda_triton.every_plan``):
each kernel with the constexprs, warps, stages and fp-fusion ``allpole`` and
``allpole_vjp`` launch it with. The interpreter (tests/test_triton.py) accepts
programs that the compiler rejects and says nothing of registers; this compiles
them with Triton's real pipeline down to a cubin (ptxas ships with Triton), and
fails on any register spill in float32 at N <= 32.

By default a part of the matrix runs (about 60 compiles, in parallel processes,
about 75 CPU-seconds): for sm_90 every variant at N = 32 (the widest block at
N <= 32, so the most registers) and the float32 sequential kernels at the
largest order; and the float32 sequential kernels at N = 32 for sm_80 and
sm_120. ``TORCHLPC_COMPILE_ALL=1`` compiles every variant at every order of
``benchmarks.triton_resources.ORDERS`` for all three targets (about 1,100 compiles;
CI's extended step sets it; ``python -m benchmarks.triton_resources --all --out
benchmarks/results/triton-resources.md`` writes their table).
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

# A minute and more of compilation: CI's extended step (python -m pytest -m extended).
pytestmark = pytest.mark.extended
triton = pytest.importorskip("triton")

from benchmarks import triton_resources  # noqa: E402
from torchlpc.kernels import cuda_triton  # noqa: E402

COMPILE_ALL = bool(os.environ.get("TORCHLPC_COMPILE_ALL"))


def _in_default_run(name: str, launch, capability: int) -> bool:
    N = launch.constexprs["N"]
    float32 = "-float32-" in name
    sequential = "-sequential-" in name
    if capability == 90:
        return N == 32 or (sequential and float32 and N == cuda_triton.MAX_ORDER)
    return float32 and sequential and N == 32


@pytest.fixture(scope="module")
def compiled():
    """``[(name, launch, capability, resources)]`` of every compile of this run."""
    only = None if COMPILE_ALL else _in_default_run
    orders = triton_resources.ORDERS
    return triton_resources.compile_all(orders, triton_resources.CAPABILITIES, only=only)


def test_every_plan_covers_every_parameter_of_the_launchers():
    # every_plan walks every value of each parameter of the plan builders: a new
    # parameter (a new kind of variant) must be added to it, or this fails.
    walked = {"dtype", "N", "time_invariant", "variant", "several_chunks", "need_A"}
    for builder in (cuda_triton.forward_plan, cuda_triton.backward_plan):
        assert set(inspect.signature(builder).parameters) <= walked, builder.__name__
    names = [name for name, _ in cuda_triton.every_plan([1, 33, cuda_triton.MAX_ORDER])]
    assert len(names) == len(set(names))
    for part in ("fwd-", "bwd-", "sequential", "chunked-chunks", "float32", "float64",
                 "-ti-", "-tv-", "no_grad_A", f"N{cuda_triton.MAX_ORDER}"):
        assert any(part in name for name in names), part
    # The chunked variant is refused above its largest order, and so left out.
    assert not any("chunked" in name and f"N{cuda_triton.MAX_ORDER}" in name for name in names)


def test_plans_are_what_the_launchers_run(monkeypatch):
    # The launchers execute the plan they build: every launch goes through _execute.
    seen = []

    def record(plan, tensors, B, C, N, T, L):
        seen.append((plan, C))
        raise _Stop

    class _Stop(Exception):
        pass

    monkeypatch.setattr(cuda_triton, "_execute", record)
    x = torch.zeros(2, 40, dtype=torch.float64)
    A = torch.zeros(2, 40, 3, dtype=torch.float64)
    zi = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(_Stop):
        cuda_triton.allpole(x, A, zi, variant="chunked", chunk_size=16)
    with pytest.raises(_Stop):
        cuda_triton.allpole_vjp(x, A, x, zi, True, variant="chunked", chunk_size=16)
    (forward, C), (backward, _) = seen
    assert C == 3
    assert forward == cuda_triton.forward_plan(torch.float64, 3, False, "chunked", True)
    assert backward == cuda_triton.backward_plan(torch.float64, 3, False, True, "chunked", True)


def test_every_variant_compiles(compiled):
    assert compiled, "nothing was compiled"
    targets = {capability for _, _, capability, _ in compiled}
    assert targets == set(triton_resources.CAPABILITIES)
    kernels = {launch.kernel.fn.__name__ for _, launch, _, _ in compiled}
    assert kernels == {name for name in cuda_triton.__all__ if name.endswith(
        ("_kernel", "_chunk_state", "_scan", "_refine"))}
    for name, launch, capability, result in compiled:
        assert result["registers"] > 0, (name, capability)
        assert result["registers"] * 32 * launch.options["num_warps"] <= 65536, (name, capability)


def test_no_spill_in_float32_up_to_order_32(compiled):
    spilled = [
        (name, capability, result["stack"], result["local"])
        for name, launch, capability, result in compiled
        if "-float32-" in name and launch.constexprs["N"] <= 32
        and triton_resources.spills(result)
    ]
    assert not spilled


def test_runs_load_a_block_ahead_and_no_step_loads(compiled):
    # The runs over time load the next block of BT steps (coefficients and
    # signal) in the block loop and nothing in the step loop; when ptxas unrolls
    # the step loop there is only the block loop.
    runs = [
        (name, capability, result["loops"])
        for name, launch, capability, result in compiled
        if "BT" in launch.constexprs
    ]
    assert runs
    for name, capability, loops in runs:
        assert loops, (name, capability)
        block, steps = loops[0], loops[1:]
        assert block.get("LDG", 0) >= 1, (name, capability, loops)
        assert block.get("STG", 0) >= 1, (name, capability, loops)
        for step in steps:
            assert step.get("LDG", 0) == 0, (name, capability, loops)
