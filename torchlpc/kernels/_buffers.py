"""Memory for the CPU kernels' large outputs, kept between calls.

A training loop frees the filter's outputs (y, grad_x, grad_A) by the time it
calls the filter again, and glibc hands blocks of a few MiB and more back to
the kernel: every call then maps them afresh and takes a page fault, with the
page zeroed, on the first write to every 4 KiB. On this project's benchmark
machine that was 40% of a forward+backward pass (16x44100x32 float64: 57 ms,
36 ms with the memory reused). PyTorch's CPU allocator keeps nothing (its CUDA
one does), so the CPU kernels keep their own: every output of at least
``MIN_BYTES`` is cut from a storage this module holds, and a storage that
nothing but this module holds any more (its use count is one: every tensor,
view, saved tensor or NumPy array over it holds a reference) is handed out
again, for an output that it holds with at most a quarter to spare. Nothing is
copied, no tensor changes under its owner, and an output is as uninitialised
as ``torch.empty``'s.

What is kept is bounded: at most ``TORCHLPC_CPU_CACHE_MB`` MiB of storage (read
once, when the CPU kernels are first used; 1024 by default, 0 turns the cache
off), the least recently handed out dropped first. :func:`release_free`
(public as ``torchlpc.empty_cpu_cache``) drops every storage not in use.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import math
import os
import sys
import threading

import torch

ENV_VARIABLE = "TORCHLPC_CPU_CACHE_MB"
# Below this glibc reuses freed memory itself, and the bookkeeping would cost
# more than a fault per page of so small an output.
MIN_BYTES = 1 << 20
_MAX_ENTRIES = 64


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


_limit = _limit_from_environment()
_lock = threading.Lock()
# (storage, its byte size when kept), least recently handed out first.
_storages: "collections.OrderedDict[int, tuple[torch.UntypedStorage, int]]" = (
    collections.OrderedDict()
)
_keys = itertools.count()
_kept_bytes = 0
_use_count = torch._C._storage_Use_Count


def kept_bytes() -> int:
    """Bytes of storage the cache holds now, in use or not."""
    return _kept_bytes


def release_free() -> int:
    """Drop every kept storage that no tensor uses; returns the bytes released."""
    global _kept_bytes
    released = 0
    with _lock:
        for key in [k for k, (s, _) in _storages.items() if _use_count(s._cdata) == 1]:
            released += _storages.pop(key)[1]
        _kept_bytes -= released
    return released


def _drop_oldest(needed: int) -> None:
    """Stop keeping the least recently handed out storages until ``needed`` more
    bytes fit. One in use stays with its tensors and is freed with them."""
    global _kept_bytes
    while _storages and (_kept_bytes + needed > _limit or len(_storages) >= _MAX_ENTRIES):
        _kept_bytes -= _storages.popitem(last=False)[1][1]


def new_output(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, from a kept storage when one is free."""
    global _kept_bytes
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes > _limit:
        return advise_huge_pages(torch.empty(shape, dtype=dtype))
    with _lock:
        # The smallest free storage that holds the output with at most a quarter
        # of it to spare, so that sequences of varying length reuse memory too.
        best, best_bytes = None, nbytes + nbytes // 4 + 1
        for key, (storage, kept) in _storages.items():
            # (A user's resize_ may have changed a storage's size since it was kept.)
            if nbytes <= kept < best_bytes and storage.nbytes() == kept:
                if _use_count(storage._cdata) == 1:
                    best, best_bytes = key, kept
        if best is not None:
            # Made under the lock, the tensor holds the storage before another
            # thread can see it free.
            tensor = torch.empty(0, dtype=dtype).set_(_storages[best][0], 0, shape)
            _storages.move_to_end(best)
            return tensor
    tensor = advise_huge_pages(torch.empty(shape, dtype=dtype))
    with _lock:
        _drop_oldest(nbytes)
        _storages[next(_keys)] = (tensor.untyped_storage(), nbytes)
        _kept_bytes += nbytes
    return tensor


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


def advise_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """Ask Linux for transparent huge pages under a large, not yet written tensor."""
    global _madvise
    size = tensor.numel() * tensor.element_size()
    if size < _HUGE_PAGE_MIN_BYTES or not sys.platform.startswith("linux"):
        return tensor
    if _madvise is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _madvise = libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    end = (tensor.data_ptr() + size) // _HUGE_PAGE * _HUGE_PAGE
    if end > start:
        _madvise(start, end - start, 14)  # MADV_HUGEPAGE; a refusal changes nothing
    return tensor
