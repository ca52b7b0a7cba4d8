"""Compile every Triton kernel variant for real GPUs, without one, and report its resources.

    python -m benchmarks.triton_resources                    # the table, to stdout
    python -m benchmarks.triton_resources --write            # into docs/performance.md
    python -m benchmarks.triton_resources --all --jobs 8     # every order, every target
    python -m benchmarks.triton_resources --all --out benchmarks/results/triton-resources.md

The variants are those :func:`torchlpc.kernels.cuda_triton.every_plan` lists: the
launch plans ``allpole`` and ``allpole_vjp`` run, so each kernel is compiled with
the constexprs and launch options the launchers give it (``compile_launch``).
For each: registers per thread, stack (ptxas puts spilled registers there) and
local memory, shared memory (from ``cuobjdump --dump-resource-usage``, shipped
with Triton), and, from the SASS (``nvdisasm``), the global loads and stores in
each loop: for the runs over time, the step loop inside and the block loop
around it. Triton's own cache (``TRITON_CACHE_DIR``) makes a second run fast.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- triton-resources: begin (python -m benchmarks.triton_resources --write) -->"
END = "<!-- triton-resources: end -->"

CAPABILITIES = (80, 90, 120)
ORDERS = (1, 2, 3, 8, 16, 31, 32, 33, 64, 4096)
# The table in docs/performance.md: sm_90, these orders (the rest are in --all).
TABLE_ORDERS = (16, 32, 64, 4096)


def variants(orders=ORDERS):
    """``[(name, launch, dtypes)]``: every distinct kernel compile the plans at these orders need.

    ``name`` is the first plan that needs it and the kernel's name.
    """
    from torchlpc.kernels import cuda_triton

    seen = {}
    for plan_name, plan in cuda_triton.every_plan(orders):
        for launch in plan.launches:
            signature, constexprs, _ = launch.source(plan.dtypes)
            key = (
                launch.kernel.fn.__name__,
                tuple(signature.items()),
                tuple((k, str(v)) for k, v in constexprs.items()),
                tuple(sorted(launch.options.items())),
            )
            if key not in seen:
                name = f"{plan_name}:{launch.kernel.fn.__name__}"
                seen[key] = (name, launch, plan.dtypes)
    return list(seen.values())


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resources(cubin: bytes) -> dict:
    """Registers, stack, local and shared bytes, and global loads/stores per loop, of a cubin."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout
        sass = subprocess.run(
            [_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return dict(
        registers=int(fields["REG"]),
        stack=int(fields["STACK"]),
        local=int(fields["LOCAL"]),
        shared=int(fields["SHARED"]),
        loops=sass_loops(sass),
    )


def sass_loops(sass: str) -> list[dict]:
    """The loops of a kernel's SASS, outermost first: global loads and stores in each body.

    A loop is a backward branch; an enclosing loop's counts include its inner
    loops' instructions once (one pass through their bodies).
    """
    lines = sass.splitlines()
    labels = {}
    for i, line in enumerate(lines):
        match = re.match(r"\s*\.?(L_x_\d+):", line)
        if match:
            labels[match.group(1)] = i
    spans = []
    for i, line in enumerate(lines):
        match = re.search(r"\bBRA\b[^`]*`\(\.?(L_x_\d+)\)", line)
        if match and labels.get(match.group(1), i) < i:
            start = labels[match.group(1)]
            # A loop is a body with instructions: skip the self-branch that ends a kernel.
            if sum("/*" in x for x in lines[start:i]) > 1:
                spans.append((start, i))
    loops = []
    for start, end in sorted(spans):
        counts = collections.Counter()
        for line in lines[start : end + 1]:
            for op in ("LDG", "STG", "LDS", "STS", "LDL", "STL", "SHFL", "BAR"):
                if re.search(rf"\b{op}\b", line):
                    counts[op] += 1
        loops.append(dict(lines=end - start, **counts))
    return loops


def _without_interpreter() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def _compile_one(index: int, orders, capability: int) -> tuple[int, int, dict]:
    name, launch, dtypes = variants(orders)[index]
    from torchlpc.kernels import cuda_triton

    started = time.perf_counter()
    compiled = cuda_triton.compile_launch(launch, dtypes, capability)
    result = resources(compiled.asm["cubin"])
    result["seconds"] = time.perf_counter() - started
    return index, capability, result


def compile_all(orders=ORDERS, capabilities=CAPABILITIES, jobs: int | None = None, only=None):
    """``[(name, launch, capability, resources)]`` of every variant, compiled in ``jobs`` processes.

    ``only(name, launch, capability)``, if given, picks the variants to compile.
    """
    items = variants(orders)
    work = [
        (i, capability)
        for capability in capabilities
        for i, (name, launch, _) in enumerate(items)
        if only is None or only(name, launch, capability)
    ]
    jobs = jobs or os.cpu_count() or 1
    results = {}
    # Fresh processes, without Triton's interpreter, which the tests switch on in theirs.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_without_interpreter
    ) as pool:
        futures = [pool.submit(_compile_one, i, orders, c) for i, c in work]
        for future in concurrent.futures.as_completed(futures):
            i, capability, result = future.result()
            results[i, capability] = result
    return [
        (items[i][0], items[i][1], capability, results[i, capability]) for i, capability in work
    ]


def spills(result: dict) -> bool:
    """Whether ptxas spilled registers (to the stack frame or local memory)."""
    return result["stack"] > 0 or result["local"] > 0


def _loop_columns(launch, result) -> tuple[str, str]:
    """Global loads/stores per step and per block of the runs over time, or per iteration."""
    loops = result["loops"]
    fmt = lambda loop: f"{loop.get('LDG', 0)} / {loop.get('STG', 0)}"  # noqa: E731
    if "BT" in launch.constexprs and len(loops) >= 2:
        # The step loop is the innermost; the block loop encloses it.
        return fmt(loops[-1]), fmt(loops[0])
    if loops:
        return "-", fmt(loops[0])
    return "-", "-"


def table(rows) -> str:
    """The markdown table of ``compile_all``'s rows (a target column when there are several)."""
    targets = len({capability for _, _, capability, _ in rows}) > 1
    out = [
        "| variant | kernel |" + (" target |" if targets else "") + " warps | BT | registers | "
        "spill (stack + local) bytes | shared bytes | global loads / stores per step | "
        "per block (or loop iteration) |",
        "|---|---|" + ("---|" if targets else "") + "---:|---:|---:|---:|---:|---|---|",
    ]
    for name, launch, capability, result in rows:
        variant, kernel = name.split(":")
        per_step, per_block = _loop_columns(launch, result)
        target = f" sm_{capability} |" if targets else ""
        out.append(
            f"| {variant} | {kernel} |{target} {launch.options['num_warps']} | "
            f"{launch.constexprs.get('BT', '-')} | {result['registers']} | "
            f"{result['stack'] + result['local']} | {result['shared']} | {per_step} | {per_block} |"
        )
    return "\n".join(out)


def spill_summary(rows) -> str:
    """One line per compile that spills, or a line saying none does."""
    bad = [r for r in rows if spills(r[3])]
    if not bad:
        return "No variant spills registers."
    small = [r for r in bad if "-float32-" in r[0] and r[1].constexprs["N"] <= 32]
    lines = [
        f"{len(bad)} of {len(rows)} compiles spill registers; {len(small)} of them in float32 "
        "at N <= 32:",
        "",
    ]
    for name, launch, capability, result in bad:
        lines.append(
            f"- {name} sm_{capability}: {result['registers']} registers, "
            f"{result['stack'] + result['local']} bytes of stack and local memory"
        )
    return "\n".join(lines)


def write_doc(markdown: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    begin, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:begin] + "\n" + markdown + "\n" + text[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.triton_resources", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--all", action="store_true", help="every order and target")
    parser.add_argument("--jobs", type=int, help="compiler processes (default: one per CPU)")
    parser.add_argument("--write", action="store_true", help=f"write the table into {DOC}")
    parser.add_argument("--out", type=Path, help="also write the table, as a Markdown page, to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.all:
        rows = compile_all(ORDERS, CAPABILITIES, args.jobs)
    else:
        rows = compile_all(TABLE_ORDERS, (90,), args.jobs)
    triton_version = __import__("triton").__version__
    header = (
        f"Generated by `python -m benchmarks.triton_resources` with Triton {triton_version}"
        f" for {', '.join(f'sm_{c}' for c in sorted({r[2] for r in rows}))}; "
        f"{len(rows)} compiles in {time.perf_counter() - started:.0f} s."
    )
    markdown = header + "\n\n" + table(rows)
    print(markdown)
    bad = [r for r in rows if spills(r[3])]
    for name, launch, capability, result in bad:
        print(f"spills: {name} sm_{capability}: {result}", file=sys.stderr)
    if args.write:
        write_doc(markdown)
    if args.out:
        args.out.write_text(
            "# Triton kernels: resources per compiled variant\n\n"
            "<!-- Generated; do not edit by hand. -->\n\n" + header + "\n\n"
            + spill_summary(rows) + "\n\n" + table(rows) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
