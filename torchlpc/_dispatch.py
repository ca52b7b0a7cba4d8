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
    value = os.environ.get(ENV_VARIABLE, "").strip().lower()
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


def select_backend(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs an op on tensors of ``device`` and ``dtype``."""
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


def _kernels(backend: str):
    """The kernel module of a backend, imported on first use."""
    module = _loaded.get(backend)
    if module is None:
        module = importlib.import_module(f".kernels.{_KERNEL_MODULES[backend]}", __package__)
        _loaded[backend] = module
    return module


def allpole(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """Run the forward filter on the selected backend; inputs share dtype and device."""
    backend = select_backend(x.device, x.dtype)
    if backend == "reference":
        with torch.no_grad():
            return reference.allpole_reference(x, A, zi)
    return _kernels(backend).allpole(x, A, zi)


def allpole_vjp(
    grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the fused backward pass; ``grad_A`` is empty when ``need_A`` is false."""
    backend = select_backend(grad_y.device, grad_y.dtype)
    if backend == "reference":
        with torch.no_grad():
            grad_x, grad_A, grad_zi = reference.allpole_vjp_reference(grad_y, A, y, zi)
        if not need_A:
            grad_A = A.new_empty((0, 0, 0))
        return grad_x, grad_A, grad_zi
    return _kernels(backend).allpole_vjp(grad_y, A, y, zi, need_A)
