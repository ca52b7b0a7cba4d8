"""The training step of ``learn_time_varying_filter.py`` under DistributedDataParallel.

Each process (rank) draws its own white-noise batch through the same true filter,
a shard of the data, and runs the very same training step; the only change from
the single-process script is that the model is wrapped in
``torch.nn.parallel.DistributedDataParallel``, which averages the gradients of
all ranks during ``backward``. torchlpc's ops need nothing extra for this. After
the first backward the script gathers every rank's gradient and checks that they
are identical and equal to the gradient one process computes over all shards, prints each rank's loss as training goes, and checks that the
parameters are still identical at the end.

CPU processes talk through the gloo backend:

    torchrun --nproc-per-node 2 examples/ddp_training.py --quick
    python -m torch.distributed.run --nproc-per-node 2 examples/ddp_training.py

Run without torchrun, the script starts two processes itself. Rank 0 writes
``ddp_training.json`` (every rank's losses and the checks) to ``--out``.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

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


def train(args) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    # Share the cores out rather than have every process use them all.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    problem = QUICK if args.quick else FULL
    steps = args.steps if args.steps is not None else (10 if args.quick else 100)

    x, y, _ = make_data(problem, args.seed, rank=rank)
    torch.manual_seed(args.seed + rank)  # different on purpose: DDP broadcasts rank 0's parameters
    model = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
    with torch.no_grad():
        model.raw.normal_(std=0.1)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=problem.lr)

    # One step by hand, to look at the gradients between backward and the update.
    optimizer.zero_grad(set_to_none=True)
    loss = (ddp(x) - y).square().mean() / y.square().mean()
    loss.backward()
    grads = [torch.empty_like(model.raw.grad) for _ in range(world)]
    dist.all_gather(grads, model.raw.grad)
    grad_spread = max((g - grads[0]).abs().max().item() for g in grads)
    # The same gradient on one process: the mean of the ranks' losses, over all shards.
    xs, ys = (
        [torch.empty_like(x) for _ in range(world)],
        [torch.empty_like(y) for _ in range(world)],
    )
    dist.all_gather(xs, x)
    dist.all_gather(ys, y)
    single = FrameWiseAllPole(problem.frames, problem.order, problem.hop_length)
    single.load_state_dict(model.state_dict())
    sum((single(xr) - yr).square().mean() / yr.square().mean() for xr, yr in zip(xs, ys)).div(
        world
    ).backward()
    single_difference = (single.raw.grad - model.raw.grad).abs().max().item()
    optimizer.step()

    losses = [loss.item()]
    for _ in range(steps - 1):
        losses.append(training_step(ddp, optimizer, x, y).item())

    params = [torch.empty_like(model.raw) for _ in range(world)]
    dist.all_gather(params, model.raw.detach())
    param_spread = max((p - params[0]).abs().max().item() for p in params)
    every_loss = [None] * world
    dist.all_gather_object(every_loss, losses)

    if rank == 0:
        print(
            f"{world} processes, backend {dist.get_backend()}; each rank: {problem.batch} x "
            f"{problem.length} samples of its own noise, {steps} steps"
        )
        print("step  " + "  ".join(f"rank {r} loss" for r in range(world)))
        shown = sorted({0, 1, steps // 2, steps - 1})
        for step in shown:
            print(f"{step:4d}  " + "  ".join(f"{every_loss[r][step]:11.4e}" for r in range(world)))
        print(f"largest difference between the ranks' gradients after backward: {grad_spread:.1e}")
        print(
            f"largest difference from the gradient computed on one process:  {single_difference:.1e}"
        )
        print(f"largest difference between the ranks' parameters at the end:   {param_spread:.1e}")
        summary = args.out / "ddp_training.json"
        summary.write_text(
            json.dumps(
                {
                    "world_size": world,
                    "backend": dist.get_backend(),
                    "steps": steps,
                    "losses_per_rank": every_loss,
                    "gradient_spread": grad_spread,
                    "parameter_spread": param_spread,
                    "difference_from_single_process_gradient": single_difference,
                },
                indent=1,
            )
        )
        print(f"wrote {summary}")
    if grad_spread != 0 or param_spread != 0:
        raise SystemExit(f"rank {rank}: the ranks' gradients or parameters differ.")
    if single_difference > 1e-5 * model.raw.grad.abs().max().item():
        raise SystemExit(f"rank {rank}: the DDP gradient differs from the single-process one.")


def _spawned(rank: int, world: int, port: int, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    _train_and_leave(args)


def _train_and_leave(args) -> None:
    """Train, then end this rank's process without the interpreter's teardown.

    In torch 2.13 a ``DistributedDataParallel`` keeps the gloo process group alive
    after ``destroy_process_group``: its worker threads still run when every Python
    object that used it is gone, and so while the interpreter tears down. About one
    run in 30 here, a rank was aborted there ("terminate called without an active
    exception"), after all its work was done and written. So the ranks finish
    together at a barrier, destroy the group, flush what they printed and leave with
    ``os._exit``, which skips that teardown.
    """
    code = 0
    try:
        train(args)
        dist.barrier()
    except SystemExit as failed:  # train's own checks: report, then leave as a failure
        print(failed, file=sys.stderr)
        code = 1
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    if not dist.is_available() or not dist.is_gloo_available():
        sys.exit("this build of torch has no gloo backend for torch.distributed.")
    args.out.mkdir(parents=True, exist_ok=True)
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
        _train_and_leave(args)
    else:
        print("not started by torchrun: starting 2 processes")
        mp.spawn(_spawned, args=(2, _free_port(), args), nprocs=2)


if __name__ == "__main__":
    main()
