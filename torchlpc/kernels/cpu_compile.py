"""Compiling the numba kernels without making the calls that need them wait.

numba compiles a kernel on its first call in an environment (seconds for each
dtype and order family, forward and backward: see README, Performance) and
caches the machine code on disk, from which a later process loads it in a
fraction of a second. Automatic dispatch (:mod:`torchlpc._dispatch`) asks
:func:`ready` whether the kernels a call needs are in this process yet. If they
are not, a background thread compiles or loads them, by running the same kernel
wrapper on stand-in zeros of the call's dtype, order family and path, and the
call runs on the chunked PyTorch path meanwhile, whose results are within the
same accuracy bound. The thread is the process's only work on them: later calls
of the same kind take the chunked path until it is done, then the kernels.

That is ``TORCHLPC_CPU_COMPILE=background``, an opt-in. The default, ``wait``
(also whenever ``torch.use_deterministic_algorithms(True)`` is on, and with
``TORCHLPC_BACKEND=numba``), makes calls wait for their kernels, so that every
call of a process runs the same code and repeats bit for bit (see :func:`mode`). The first preparation of each kind logs one line on
the ``torchlpc`` logger (level INFO) saying what it prepares.

Processes: ``os.fork`` waits for the compilations in flight (a child forked
while a thread held numba's compiler lock would wait for it forever), and the
interpreter waits for them at exit (the threads are not daemons), so that what
was compiled reaches the disk cache.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from typing import Callable, Hashable

import torch

from . import cpu_plan
from .cpu_plan import family_of, split_over_time

ENV_VARIABLE = "TORCHLPC_CPU_COMPILE"
MODES = ("background", "wait")

_log = logging.getLogger("torchlpc")
_lock = threading.Lock()
# Kinds of call whose kernels this process has (or whose preparation failed, so
# that the call itself raises what went wrong).
_ready: set = set()
_running: dict[Hashable, threading.Thread] = {}


def mode() -> str:
    """``background`` or ``wait``: ``TORCHLPC_CPU_COMPILE`` (default ``wait``), and
    ``wait`` whenever PyTorch's deterministic algorithms are on. Not background by
    default: a call repeated across the end of a compilation runs on two paths and
    differs in its last bits, and torch.autograd.gradcheck (torchlpc 0.7.2's own
    test_grad.py) then reports a backward that is not reentrant."""
    # Read on every call (mode() runs on every call), parsed once per value.
    value = _parse_mode(os.environ.get(ENV_VARIABLE, ""))
    if torch.are_deterministic_algorithms_enabled():
        return "wait"
    return value


@functools.lru_cache(maxsize=None)
def _parse_mode(raw: str) -> str:
    value = raw.strip().lower() or "wait"
    if value not in MODES:
        raise ValueError(
            f"{ENV_VARIABLE}={value!r} is not a mode; expected one of {', '.join(MODES)} "
            "(unset means wait)."
        )
    return value


def ready(key: Hashable) -> bool:
    """Whether the kernels of calls of kind ``key`` may run now.

    In ``background`` mode a kind seen for the first time starts its preparation
    on a thread and is not ready until it is done. In ``wait`` mode every kind is
    ready: the call compiles what it needs (after one log line, the first time).
    """
    waits = mode() == "wait"  # first: a misspelt TORCHLPC_CPU_COMPILE raises on every call
    if key in _ready:
        return True
    prepare, what = _plan(key)
    if waits:
        with _lock:
            if key in _ready:
                return True
            _ready.add(key)
        _log.info("preparing numba CPU kernels for %s; this call waits for them.", what)
        return True
    with _lock:
        if key in _ready:
            return True
        if key not in _running:
            _log.info(
                "preparing numba CPU kernels for %s in the background (compiled on "
                "first use in an environment, then loaded from numba's disk cache); calls run "
                "on the chunked PyTorch path until they are ready.",
                what,
            )
            thread = threading.Thread(
                target=_prepare, args=(key, prepare, what), name="torchlpc-compile"
            )
            _running[key] = thread
            thread.start()
    return False


# While a preparation runs (numba's import and compiler are Python, holding the
# GIL), the interpreter hands the GIL over every 0.5 ms instead of 5, so that the
# calling thread's chunked path, many small PyTorch ops, gets it back sooner. (The
# first calls still share the process with numba's import: with a warm disk cache
# the first forward took 0.3-0.45 s here, 0.16 s with numba imported beforehand,
# 0.03 s with no preparation at all.)
_SWITCH_INTERVAL = 0.0005
_saved_switch_interval: list[float] = []


def _prepare(key: Hashable, prepare: Callable[[], None], what: str) -> None:
    start = time.perf_counter()
    with _lock:
        if not _saved_switch_interval:
            _saved_switch_interval.append(sys.getswitchinterval())
            sys.setswitchinterval(min(_SWITCH_INTERVAL, _saved_switch_interval[0]))
    try:
        prepare()
    except Exception:
        # Left to the calls: marked ready, the next one runs the kernels and
        # raises whatever went wrong there, in the caller's thread.
        _log.warning("preparing the kernels for %s failed", what, exc_info=True)
    finally:
        with _lock:
            _ready.add(key)
            _running.pop(key, None)
            if not _running and _saved_switch_interval:
                sys.setswitchinterval(_saved_switch_interval.pop())
    _log.debug("kernels for %s ready after %.2f s", what, time.perf_counter() - start)


def wait_for_all() -> None:
    """Return once no preparation is running (each started one has finished)."""
    while True:
        with _lock:
            threads = list(_running.values())
        if not threads:
            return
        current = threading.current_thread()
        if any(thread is current for thread in threads):
            return
        for thread in threads:
            thread.join()


os.register_at_fork(before=wait_for_all)


# ---------------------------------------------------------------------------
# What a call needs, and its preparation. The key is made from shapes alone and
# imports nothing (a first call does not wait for numba's import either); the
# preparation, made from the key, imports the kernels.

_FAMILY_NAMES = {1: "order 1", 2: "order 2", 3: "orders 3-7", 8: "orders 8 and up"}


def allpole_key(op: str, x: torch.Tensor, A: torch.Tensor) -> tuple:
    """The kind of an ``allpole`` or ``allpole_vjp`` call (x is its signal, or
    grad_y): its kernels depend on the dtype, the order's family, time-invariance
    and, for one long time-invariant sequence, the split over threads."""
    (B, T), N = x.shape, A.shape[-1]
    invariant = A.shape[1] == 1
    return (op, x.dtype, family_of(N), invariant, invariant and split_over_time(B, T, N))


def linear_recurrence_key(op: str, x: torch.Tensor) -> tuple:
    """The kind of a ``linear_recurrence`` or ``linear_recurrence_vjp`` call."""
    return (op, x.dtype)


def _plan(key: tuple) -> tuple[Callable[[], None], str]:
    """What prepares the kernels of calls of kind ``key`` (the wrapper run on
    stand-in zeros: an order of the family, the split path's length), and a
    description of them."""
    op, dtype = key[:2]
    name = f"{op}, {str(dtype).replace('torch.', '')}"
    if op.startswith("linear_recurrence"):

        def prepare() -> None:
            from . import cpu_numba

            a0 = torch.zeros(1, 4, dtype=dtype)
            zi0 = torch.zeros(1, dtype=dtype)
            if op == "linear_recurrence":
                cpu_numba.linear_recurrence(a0, a0, zi0)
            else:
                cpu_numba.linear_recurrence_vjp(a0, a0, a0, zi0, True)

        return prepare, name

    family, invariant, split = key[2:]

    def prepare() -> None:
        from . import cpu_numba

        steps = cpu_plan.SPLIT_MIN_STEPS if split else family + 3
        x0 = torch.zeros(1, steps, dtype=dtype)
        A0 = torch.zeros(1, 1 if invariant else steps, family, dtype=dtype)
        zi0 = torch.zeros(1, family, dtype=dtype)
        if op == "allpole":
            cpu_numba.allpole(x0, A0, zi0)
        else:
            cpu_numba.allpole_vjp(x0, A0, x0, zi0, True)

    what = (
        f"{name}, {_FAMILY_NAMES[family]}, {'time-invariant' if invariant else 'time-varying'}"
        f"{', one sequence over the threads' if split else ''}"
    )
    return prepare, what
