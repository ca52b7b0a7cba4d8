"""Memory for the CPU kernels' large outputs, kept between calls.

A training loop frees the filter's outputs (y, grad_x, grad_A) by the time it
calls the filter again, and glibc hands blocks of a few MiB and more back to
the kernel: every call then maps them afresh and takes a page fault, with the
page zeroed, on the first write to every 4 KiB. On this project's benchmark
machine that was 40% of a forward+backward pass (16x44100x32 float64: 57 ms,
36 ms with the memory reused). PyTorch's CPU allocator keeps nothing (its CUDA
one does), so the CPU kernels keep their own: every output of at least
``MIN_BYTES`` is cut from a block of memory this module holds, for an output
that the block holds with at most a quarter to spare.

A block is lent to one storage at a time and comes back only when that storage
lets go of it: when the storage is destroyed, which happens once nothing in
this process refers to it (no tensor, view, storage object, saved tensor,
NumPy array, DLPack capsule, ...; a weak reference to the storage dies with
it), or when the storage moves its data elsewhere (``share_memory_``, and so
every ``torch.multiprocessing`` queue, pipe and DataLoader worker, copies the
data into a new shared segment and frees the block). The storage holds the
block through a NumPy array (``torch.from_numpy``) whose finaliser gives the
block back, so nothing here has to guess from reference counts, which other
processes, Python references to a storage object and weak references all
escape. A block is never shared between processes: a forked child writes to
its own copy-on-write pages. The price: such a storage cannot grow
(``resize_`` to a larger size raises, as for any tensor made by
``torch.from_numpy``). An output is as uninitialised as ``torch.empty``'s.

What is kept is bounded: at most ``TORCHLPC_CPU_CACHE_MB`` MiB of blocks (read
once, when the CPU kernels are first used; 1024 by default, 0 turns the cache
off), the least recently handed out dropped first; a dropped block that is
lent out is freed with its storage. :func:`release_free` (public as
``torchlpc.empty_cpu_cache``) drops every block not lent out.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import math
import os
import sys
import threading
import weakref

import numpy as np
import torch

ENV_VARIABLE = "TORCHLPC_CPU_CACHE_MB"
# Below this glibc reuses freed memory itself, and the bookkeeping would cost
# more than a fault per page of so small an output.
MIN_BYTES = 1 << 20
_MAX_ENTRIES = 64
# torch.empty's alignment, which the kernels' vector loads were written for.
_ALIGNMENT = 64


def _limit_from_environment() -> int:
    value = os.environ.get(ENV_VARIABLE, "").strip()
    if not value:
        return 1024 << 20
    try:
        megabytes = float(value)
    except ValueError:
        raise ValueError(
            f"{ENV_VARIABLE}={value!r} is not a number of MiB (0 turns the cache off)"
        ) from None
    if megabytes < 0:
        raise ValueError(f"{ENV_VARIABLE}={value!r} must not be negative")
    return int(megabytes * (1 << 20))


class _Block:
    """Memory kept between calls, and whether a storage holds it now."""

    __slots__ = ("memory", "nbytes", "lent")

    def __init__(self, nbytes: int):
        raw = np.empty(nbytes + _ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % _ALIGNMENT
        self.memory = raw[start : start + nbytes]
        self.nbytes = nbytes
        self.lent = False


def _given_back(block: _Block) -> None:
    # Runs when the storage's last reference goes, in whichever thread drops it
    # (an autograd worker, a new_output under the lock): one store, no lock.
    block.lent = False


_limit = _limit_from_environment()
_lock = threading.Lock()
# Least recently handed out first.
_blocks: "collections.OrderedDict[int, _Block]" = collections.OrderedDict()
_keys = itertools.count()
_kept_bytes = 0


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock when it forked.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def kept_bytes() -> int:
    """Bytes of memory the cache holds now, lent out or not."""
    return _kept_bytes


def release_free() -> int:
    """Drop every kept block that no storage holds; returns the bytes released."""
    global _kept_bytes
    released = 0
    with _lock:
        for key in [k for k, block in _blocks.items() if not block.lent]:
            released += _blocks.pop(key).nbytes
        _kept_bytes -= released
    if released:
        _trim_heap()
    return released


def _trim_heap() -> None:
    # glibc raises its mmap threshold as large blocks are freed, so kept blocks
    # come to live on the heap, where freeing them does not return the memory to
    # the system; malloc_trim does.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (AttributeError, OSError):
            pass  # not glibc


def _drop_oldest(needed: int) -> None:
    """Stop keeping the least recently handed out blocks until ``needed`` more
    bytes fit. One that is lent out stays with its storage and is freed with it."""
    global _kept_bytes
    while _blocks and (_kept_bytes + needed > _limit or len(_blocks) >= _MAX_ENTRIES):
        _kept_bytes -= _blocks.popitem(last=False)[1].nbytes


def _lend(block: _Block, shape, dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """A tensor over the first ``nbytes`` of ``block``; the block comes back when
    the tensor's storage lets go of it."""
    block.lent = True
    # A new array object per loan: the storage holds it, and its finaliser runs
    # when the storage lets go, not when the block itself is freed.
    lease = block.memory[:nbytes]
    finaliser = weakref.finalize(lease, _given_back, block)
    finaliser.atexit = False
    return torch.from_numpy(lease).view(dtype).view(shape)


def new_output(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, in kept memory when a block is free."""
    global _kept_bytes
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)  # (below huge pages' threshold too)
    if nbytes > _limit:
        return advise_huge_pages(torch.empty(shape, dtype=dtype))
    with _lock:
        # The smallest free block that holds the output with at most a quarter
        # of it to spare, so that sequences of varying length reuse memory too.
        best, best_bytes = None, nbytes + nbytes // 4 + 1
        for key, block in _blocks.items():
            if not block.lent and nbytes <= block.nbytes < best_bytes:
                best, best_bytes = key, block.nbytes
        if best is not None:
            _blocks.move_to_end(best)
            # Lent under the lock, so that no other thread takes it too.
            return _lend(_blocks[best], shape, dtype, nbytes)
    block = _Block(nbytes)
    advise_huge_pages(block.memory)
    with _lock:
        _drop_oldest(nbytes)
        _blocks[next(_keys)] = block
        _kept_bytes += nbytes
        return _lend(block, shape, dtype, nbytes)


def output_like(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`new_output` of ``tensor``'s shape and dtype."""
    return new_output(tensor.shape, tensor.dtype)


# Outputs at least this large come from a fresh mapping when glibc serves them
# (it maps every block above 32 MiB afresh), and a fault per 4 KiB page while
# the kernel writes them cost more than the kernel: 22 ms of 30 for 90 MB here.
# Transparent huge pages, asked for before the first write, fault once per
# 2 MiB (10 ms for the same 90 MB). Below this size glibc reuses freed memory
# and the advice would only split its mappings.
_HUGE_PAGE_MIN_BYTES = 32 << 20
_HUGE_PAGE = 2 << 20
_madvise = None


def advise_huge_pages(tensor):
    """Ask Linux for transparent huge pages under a large, not yet written tensor
    (or NumPy array); returns it."""
    global _madvise
    size = tensor.nbytes
    if size < _HUGE_PAGE_MIN_BYTES or not sys.platform.startswith("linux"):
        return tensor
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _madvise = libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    address = tensor.ctypes.data if isinstance(tensor, np.ndarray) else tensor.data_ptr()
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + size) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _madvise(start, end - start, 14)  # MADV_HUGEPAGE; a refusal changes nothing
    return tensor
