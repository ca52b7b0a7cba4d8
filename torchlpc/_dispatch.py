"""Chooses the kernel that runs an op for a given device and dtype.

The choice is made per call, lazily: no backend is imported, compiled or probed
until a tensor needs it. Automatic choice: numba kernels for CPU tensors, Triton
kernels for real CUDA tensors, and the pure-PyTorch chunked algorithm for
everything else (complex CUDA tensors, MPS, XPU, ...). ``TORCHLPC_BACKEND``
(``numba``, ``triton``, ``chunked`` or ``reference``; unset or ``auto`` means
automatic) forces one backend everywhere, which tests and benchmarks use; a
forced backend that cannot run on the given tensors raises instead of falling
back. ``reference`` is the plain loop over time of :mod:`torchlpc.reference`.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

from . import reference

BACKENDS = ("numba", "triton", "chunked", "reference")
ENV_VARIABLE = "TORCHLPC_BACKEND"


@functools.lru_cache(maxsize=None)
def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def requested_backend() -> str | None:
    """The backend named by ``TORCHLPC_BACKEND``, or None for automatic."""
    # Read on every call (tests and users change it), parsed once per value.
    return _parse_backend(os.environ.get(ENV_VARIABLE, ""))


@functools.lru_cache(maxsize=None)
def _parse_backend(raw: str) -> str | None:
    value = raw.strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VARIABLE}={value!r} is not a backend; expected one of "
            f"{', '.join(BACKENDS)}, or unset/'auto' for automatic selection."
        )
    return value


def _why_unusable(
    backend: str, device: torch.device, dtype: torch.dtype | None = None
) -> str | None:
    """None if ``backend`` can run on tensors of ``device`` and ``dtype``, else the reason."""
    if backend in ("reference", "chunked"):
        return None
    if backend == "numba":
        if device.type != "cpu":
            return f"the numba backend runs on CPU tensors only, not on {device.type!r} tensors"
        if not _module_available("numba"):
            return "the numba backend needs the 'numba' package, which is not installed"
        return None
    if backend == "triton":
        if not _module_available("triton"):
            return "the triton backend needs the 'triton' package, which is not installed"
        from .kernels import cuda_triton

        return cuda_triton.why_unusable(device, dtype)
    raise AssertionError(backend)


_FROM_ENVIRONMENT = object()


def select_backend(
    device: torch.device, dtype: torch.dtype | None = None, forced=_FROM_ENVIRONMENT
) -> str:
    """The backend that runs an op on tensors of ``device`` and ``dtype``; ``forced``
    is what requested_backend() returned, read here when not given."""
    if forced is _FROM_ENVIRONMENT:
        forced = requested_backend()
    if forced is not None:
        reason = _why_unusable(forced, device, dtype)
        if reason is not None:
            raise RuntimeError(f"{ENV_VARIABLE}={forced} was requested, but {reason}.")
        return forced
    kind = device.type
    if kind == "cpu" and _module_available("numba"):
        return "numba"
    if kind == "cuda" and _why_unusable("triton", device, dtype) is None:
        return "triton"
    return "chunked"


_KERNEL_MODULES = {"numba": "cpu_numba", "triton": "cuda_triton", "chunked": "chunked"}
_loaded: dict[str, object] = {}


def _module(name: str):
    """The module ``torchlpc.kernels.<name>``, imported on first use (an import
    statement on every call costs as much as filtering a short signal)."""
    module = _loaded.get(name)
    if module is None:
        module = importlib.import_module(f".kernels.{name}", __package__)
        _loaded[name] = module
    return module


def _kernels(backend: str):
    """The kernel module of a backend, imported on first use."""
    return _module(_KERNEL_MODULES[backend])


# A of one row, (1, T|1, N), may serve every row of x (B, T). The numba, chunked and
# reference kernels read it for every row as it is. The Triton kernels index A by
# row, so they get an expanded copy; so does every backend for a time-invariant
# (1, 1, N), which costs B * N. The gradient of a shared time-varying row is not
# made per row and summed, but summed over the rows lag by lag, from grad_x.


def _rows(A: Tensor, B: int) -> Tensor:
    return A.expand(B, *A.shape[1:]).contiguous()


def _copies_shared_rows(backend: str, A: Tensor) -> bool:
    return backend == "triton" or A.shape[1] == 1


def numba_ready(op: str, x: Tensor, A: Tensor | None = None, forced=_FROM_ENVIRONMENT) -> bool:
    """Whether the numba kernels of this call are compiled, or may be compiled by
    it: always when the backend is forced, else once a background preparation is
    done (see :mod:`torchlpc.kernels.cpu_compile`)."""
    if forced is _FROM_ENVIRONMENT:
        forced = requested_backend()
    if forced == "numba":
        return True
    cpu_compile = _module("cpu_compile")
    if A is None:
        return cpu_compile.ready(cpu_compile.linear_recurrence_key(op, x))
    return cpu_compile.ready(cpu_compile.allpole_key(op, x, A))


def _backend_for(op: str, x: Tensor, A: Tensor) -> str:
    """select_backend, with the chunked path standing in, under automatic choice,
    for numba kernels that are still being compiled and for orders beyond what
    the Triton kernels hold in registers."""
    # The environment is read once per call: it is most of the cost of choosing.
    forced = requested_backend()
    backend = select_backend(x.device, x.dtype, forced)
    if backend == "numba" and not numba_ready(op, x, A, forced):
        return "chunked"
    if (
        backend == "triton"
        and forced is None
        and A.shape[-1] > _kernels("triton").MAX_ORDER
    ):
        return "chunked"
    return backend


def allpole(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """Run the forward filter on the selected backend; inputs share dtype and device."""
    backend = _backend_for("allpole", x, A)
    if A.shape[0] != x.shape[0] and _copies_shared_rows(backend, A):
        A = _rows(A, x.shape[0])
    if backend == "reference":
        with torch.no_grad():
            return reference.allpole_reference(x, A, zi)
    return _kernels(backend).allpole(x, A, zi)


def _shared_grad_A(grad_x: Tensor, y: Tensor, zi: Tensor) -> Tensor:
    """``grad_A[0, t, i-1] = -sum_b grad_x[b, t] conj(y[b, t-i])``, ``(1, T, N)``,
    one lag at a time: no ``(B, T, N)`` intermediate."""
    T, N = y.shape[1], zi.shape[1]
    padded = torch.cat([zi.flip(-1), y], dim=-1)
    grad_A = grad_x.new_empty(1, T, N)
    for i in range(1, N + 1):
        lag = padded[:, N - i : N - i + T]
        # vecdot conjugates its first argument.
        grad_A[0, :, i - 1] = torch.linalg.vecdot(lag.T, grad_x.T)
    return grad_A.neg_()


def allpole_vjp(
    grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the fused backward pass; ``grad_A`` is empty when ``need_A`` is false."""
    backend = _backend_for("allpole_vjp", grad_y, A)
    B = grad_y.shape[0]
    if A.shape[0] == B:
        return _allpole_vjp(backend, grad_y, A, y, zi, need_A)
    if _copies_shared_rows(backend, A):
        grad_x, grad_A, grad_zi = _allpole_vjp(backend, grad_y, _rows(A, B), y, zi, need_A)
        return grad_x, grad_A.sum(0, keepdim=True) if need_A else grad_A, grad_zi
    grad_x, grad_A, grad_zi = _allpole_vjp(backend, grad_y, A, y, zi, False)
    if need_A:
        grad_A = _shared_grad_A(grad_x, y, zi)
    return grad_x, grad_A, grad_zi


def _allpole_vjp(
    backend: str, grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool
) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "reference":
        with torch.no_grad():
            grad_x, grad_A, grad_zi = reference.allpole_vjp_reference(grad_y, A, y, zi)
        if not need_A:
            grad_A = A.new_empty((0, 0, 0))
        return grad_x, grad_A, grad_zi
    return _kernels(backend).allpole_vjp(grad_y, A, y, zi, need_A)
