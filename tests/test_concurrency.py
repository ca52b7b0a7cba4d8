"""Threads, thread counts and long runs on the CPU kernels.

* Python threads calling forward and backward at once, on mixed shapes, dtypes
  and paths, get results bit for bit equal to the same calls made one after
  another.
* Changing ``torch.set_num_threads`` between calls is safe: every thread count
  gives the reference's values, and the same thread count the same bits.
* A thousand calls leave the thread and file-descriptor counts where they were.

(DataLoader workers started by fork, spawn and forkserver are checked against
this process's results, bit for bit, in tests/test_escape.py.)
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import pytest
import torch

import torchlpc

from conftest import assert_close, filter_inputs, make_generator, randn

# Threads, processes and thousands of calls: CI's extended step.
pytestmark = pytest.mark.extended

# (batch, T, N, dtype, time-varying): the batched kernels of order 1, 2, < 8 and
# >= 8, time-invariant filters (a long one split over time when the batch is
# smaller than the thread count), complex, and outputs above the 1 MiB at which
# the CPU kernels keep memory.
JOBS = [
    ((4,), 3000, 1, torch.float32, True),
    ((3,), 2000, 2, torch.float64, True),
    ((2, 2), 1500, 5, torch.complex64, True),
    ((2,), 1000, 12, torch.float32, True),
    ((5,), 4000, 2, torch.float32, False),
    ((1,), 1 << 15, 3, torch.float64, False),
    ((2,), 1 << 17, 2, torch.float32, True),  # y 1 MiB, grad_A 2 MiB
    ((1,), 5, 8, torch.float32, True),
]


def _job_inputs(index):
    batch, T, N, dtype, varying = JOBS[index]
    x, A, zi = filter_inputs(batch, T, N, dtype=dtype, seed=index, varying=varying)
    grad_y = randn(*batch, T, dtype=dtype, generator=make_generator(100 + index))
    return x, A, zi, grad_y


INPUTS = {}


def _inputs(index):
    if index not in INPUTS:
        INPUTS[index] = _job_inputs(index)
    return INPUTS[index]


def _step(index):
    x, A, zi, grad_y = _inputs(index)
    leaves = [t.clone().requires_grad_() for t in (x, A, zi)]
    y = torchlpc.sample_wise_lpc(*leaves)
    grads = torch.autograd.grad(y, leaves, grad_y)
    return [y.detach(), *grads]


def _same(results, expected):
    return all(torch.equal(r, e) for r, e in zip(results, expected, strict=True))


@pytest.fixture(autouse=True)
def numba(monkeypatch):
    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)


def test_concurrent_calls_equal_sequential_ones():
    expected = [_step(i) for i in range(len(JOBS))]
    order = [i for _ in range(3) for i in range(len(JOBS))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_step, order))
    different = sorted({i for i, r in zip(order, results) if not _same(r, expected[i])})
    assert not different, f"jobs {[JOBS[i] for i in different]} differ when run concurrently"


def test_changing_the_thread_count_between_calls():
    before = torch.get_num_threads()
    try:
        first = {}
        for threads in [1, 3, 2, 1, 3]:
            torch.set_num_threads(threads)
            for i in range(len(JOBS)):
                results = _step(i)
                if threads in first and i in first[threads]:
                    assert _same(results, first[threads][i]), f"{JOBS[i]}, {threads} threads"
                first.setdefault(threads, {})[i] = results
        # Every thread count gives the values of one thread, within the dtype's tolerance.
        for threads, by_job in first.items():
            for i, results in by_job.items():
                for r, e, name in zip(results, first[1][i], ["y", "grad_x", "grad_A", "grad_zi"]):
                    assert_close(r, e.to(torch.complex128 if e.is_complex() else torch.float64), e.dtype, f"{JOBS[i]}, {threads} threads, {name}")
    finally:
        torch.set_num_threads(before)


def _open_files():
    return len(os.listdir("/proc/self/fd"))


def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_thread_and_file_counts_do_not_grow():
    """1000 forward+backward calls, small ones on the calling thread and large ones
    handed to the kernels' thread pool."""
    small, large = 7, 6  # JOBS indices
    for index in (small, large, 0):
        _step(index)
    files, os_threads, python_threads = _open_files(), _os_threads(), threading.active_count()
    for call in range(1000):
        _step(large if call % 100 == 0 else 0 if call % 10 == 0 else small)
    assert _open_files() <= files
    assert _os_threads() <= os_threads
    assert threading.active_count() <= python_threads
