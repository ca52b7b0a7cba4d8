"""Work over the threads: the batch split into slices (``run_over_batch``) and a
list of tasks run on the pool and the calling thread (``_run_tasks``).

The kernels release the GIL, so Python worker threads run them in parallel. The
thread count follows ``torch.get_num_threads()``.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import torch


# Below this many coefficient reads a call runs on the calling thread alone:
# handing work to other threads costs more than it saves.
_PARALLEL_MIN_WORK = 1 << 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torchlpc")
        return _pool


def run_over_batch(kernel, work: int, *arguments, together: int = 2) -> None:
    """Call ``kernel(*arguments)`` with the batch (axis 0 of every array) split over threads.

    Up to ``torch.get_num_threads()`` threads, so that the CPU kernels follow PyTorch's
    setting, take slices of the batch from a shared counter; the calling thread works
    too and a helper that has not started by the time the work is gone is cancelled.
    A busy machine therefore never makes a call wait for a thread that is not
    scheduled. (numba's own ``parallel=True`` does: its OpenMP layer competes with
    PyTorch's and a training loop of small steps ran 9-20x slower on a busy 2-core
    machine, and its workqueue layer aborts the process when two threads launch
    kernels at once.)
    """
    batch = arguments[0].shape[0]
    threads = min(batch, torch.get_num_threads()) if work >= _PARALLEL_MIN_WORK else 1
    if threads <= 1:
        kernel(*arguments)
        return
    # Pieces of `together` rows or more, which the kernels take in groups (order 2
    # in pairs, order 1 four at a time).
    pieces = min(max(batch // together, 1), 4 * threads)
    bounds = [batch * k // pieces for k in range(pieces + 1)]
    # An array of one row (coefficients shared by the batch) goes whole to every slice.
    _run_tasks([
        partial(kernel, *(
            a[lo:hi] if isinstance(a, np.ndarray) and a.shape[0] == batch else a
            for a in arguments
        ))
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ])


def _run_tasks(tasks: list) -> list:
    """Run the callables on the pool and the calling thread; return their results
    when all are done.

    Emptied on return: a helper cancelled before it started stays in the pool's
    queue until a worker thread takes it, and through it the tasks and their
    arrays, which would keep the outputs' memory from being reused (_buffers).
    """
    counter = itertools.count()
    results = [None] * len(tasks)
    threads = min(len(tasks), torch.get_num_threads())

    def drain() -> None:
        for index in iter(counter.__next__, None):
            if index >= len(tasks):
                return
            results[index] = tasks[index]()

    helpers = [_executor(threads - 1).submit(drain) for _ in range(threads - 1)] if threads > 1 else []
    try:
        drain()
    finally:
        for helper in helpers:
            if not helper.cancel():
                helper.result()
        tasks.clear()
    return results


def _split_parts() -> int:
    return torch.get_num_threads()
