"""Code that runs in other processes for tests/test_escape.py.

Kept in its own module (not a test module) so that spawned and forkserver
processes import it without collecting tests, and so that DataLoader workers can
unpickle the dataset by reference.
"""

from __future__ import annotations

import hashlib

import torch

import torchlpc

# Just over the CPU cache's 1 MiB threshold in float32, so that every output is
# cut from kept memory, and small enough that a process makes many in a moment.
T = (1 << 18) + 64
N = 2


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (1, T) and a stable time-varying A (1, T, N), different for every seed."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, generator=generator)
    A = 0.4 * torch.rand(1, T, N, generator=generator) - 0.2
    return x, A


def output(seed: int) -> torch.Tensor:
    x, A = inputs(seed)
    return torchlpc.sample_wise_lpc(x, A)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def holder(connection, queue) -> None:
    """Serve a test from another process until it sends None.

    ("keep", tensor): keep a tensor received from the test, reply with its digest.
    ("queue",): the same for the next tensor on ``queue``.
    ("make", seed): filter here, send the output (it travels through shared
    memory) and keep nothing of it; then filter a few more times, so that this
    process's cache would hand its memory out again if it could.
    ("digests",): reply with the digests of the tensors kept, as they are now.
    """
    kept = []
    while True:
        message = connection.recv()
        if message is None:
            return
        if message[0] in ("keep", "queue"):
            tensor = message[1] if message[0] == "keep" else queue.get()
            kept.append(tensor)
            connection.send(digest(tensor))
        elif message[0] == "make":
            connection.send(output(message[1]))
            for seed in range(1000, 1004):
                output(seed)
            connection.send("done")
        elif message[0] == "digests":
            connection.send([digest(t) for t in kept])


class Outputs(torch.utils.data.IterableDataset):
    """Yields (seed, filter output) for seeds 0..count-1, each a whole batch."""

    def __init__(self, count: int):
        self.count = count

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for seed in range(worker, self.count, workers):
            yield seed, output(seed)
