"""The training step of ``learn_time_varying_filter.py`` under ``torch.compile``, timed against eager.

torchlpc's filters are ``torch.library`` custom ops with fake (meta) kernels, so
Dynamo traces the whole model, the filter included, as one graph
(``fullgraph=True`` would raise on a graph break), and AOTAutograd compiles the
backward, which calls the op's fused backward. Two copies of the model start from
the same parameters; one is trained eagerly and one through ``torch.compile``.
The script prints the time the first compiled step took (the compilation), the
median time of a step after that for both, their ratio, and how far the two
models' losses drift apart (they should agree to rounding).

Writes ``compile_training.json`` to ``--out``.

    python examples/compile_training.py            # larger sizes, 50 timed steps
    python examples/compile_training.py --quick    # tiny sizes, 5 timed steps

The first compilation in a fresh environment takes tens of seconds on a small
machine; later runs reuse Inductor's on-disk cache and are quicker.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch

# isort: split
# A sibling script: the problem, the model and the training step.
from learn_time_varying_filter import (
    FULL,
    QUICK,
    FrameWiseAllPole,
    make_data,
    parse_args,
    training_step,
)


def timed(step) -> tuple[float, float]:
    start = time.perf_counter()
    loss = step()
    return time.perf_counter() - start, loss.item()


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    problem = QUICK if args.quick else FULL
    steps = args.steps if args.steps is not None else (5 if args.quick else 50)
    args.out.mkdir(parents=True, exist_ok=True)

    x, y, _ = make_data(problem, args.seed)
    torch.manual_seed(args.seed)
    eager = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
    with torch.no_grad():
        eager.raw.normal_(std=0.1)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    print(
        f"model: order {problem.order}, {problem.frames} frames; data {problem.batch} x {problem.length}; "
        f"{steps} timed steps each, alternating, after one warm-up step"
    )

    eager_optimizer = torch.optim.Adam(eager.parameters(), lr=problem.lr)
    compiled_optimizer = torch.optim.Adam(compiled.parameters(), lr=problem.lr)
    eager_first, eager_loss = timed(lambda: training_step(eager, eager_optimizer, x, y))
    compile_first, compiled_loss = timed(lambda: training_step(compiled, compiled_optimizer, x, y))
    eager_losses, compiled_losses = [eager_loss], [compiled_loss]
    eager_times, compiled_times = [], []
    # Alternate the two, so that both see the same load on a shared machine.
    for _ in range(steps):
        seconds, loss = timed(lambda: training_step(eager, eager_optimizer, x, y))
        eager_times.append(seconds)
        eager_losses.append(loss)
        seconds, loss = timed(lambda: training_step(compiled, compiled_optimizer, x, y))
        compiled_times.append(seconds)
        compiled_losses.append(loss)

    eager_ms = 1e3 * statistics.median(eager_times)
    compiled_ms = 1e3 * statistics.median(compiled_times)
    drift = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(eager_losses, compiled_losses))
    print(
        f"first compiled step (compilation included): {compile_first:.1f} s "
        f"(first eager step: {1e3 * eager_first:.1f} ms)"
    )
    print(f"eager step:    {eager_ms:8.2f} ms (median)")
    print(f"compiled step: {compiled_ms:8.2f} ms (median)")
    print(f"eager / compiled: {eager_ms / compiled_ms:.2f}x")
    print(f"largest relative difference between the two loss curves: {drift:.1e}")
    if drift > 1e-3:
        raise SystemExit("the compiled model's losses differ from the eager model's.")

    summary = args.out / "compile_training.json"
    summary.write_text(
        json.dumps(
            {
                "batch": problem.batch,
                "length": problem.length,
                "order": problem.order,
                "steps": steps,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "compile_seconds": compile_first,
                "eager_step_ms": eager_ms,
                "compiled_step_ms": compiled_ms,
                "speedup": eager_ms / compiled_ms,
                "eager_losses": eager_losses,
                "compiled_losses": compiled_losses,
            },
            indent=1,
        )
    )
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()
