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
    if device.type == "cpu" and _why_unusable("numba", device) is None:
        return "numba"
    if device.type == "cuda" and _why_unusable("triton", device, dtype) is None:
        return "triton"
    return "chunked"


def _numpy(tensor: Tensor):
    return tensor.detach().contiguous().numpy()


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The accumulator dtype for sums over time."""
    return torch.complex128 if dtype.is_complex else torch.float64


def allpole(x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
    """Run the forward filter on the selected backend; inputs share dtype and device."""
    backend = select_backend(x.device, x.dtype)
    if backend == "triton":
        from .kernels import cuda_triton

        return cuda_triton.allpole(x, A, zi)
    if backend == "chunked":
        from .kernels import chunked

        return chunked.allpole(x, A, zi)
    if backend == "numba":
        from .kernels import cpu_numba

        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        if x.numel():
            cpu_numba.run_over_batch(
                cpu_numba.allpole_fwd_kernel, x.numel() * A.shape[-1],
                _numpy(x), _numpy(A), _numpy(zi), y.numpy(),
            )
        return y
    with torch.no_grad():
        return reference.allpole_reference(x, A, zi)


def allpole_vjp(
    grad_y: Tensor, A: Tensor, y: Tensor, zi: Tensor, need_A: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the fused backward pass; ``grad_A`` is empty when ``need_A`` is false."""
    backend = select_backend(grad_y.device, grad_y.dtype)
    if backend == "triton":
        from .kernels import cuda_triton

        return cuda_triton.allpole_vjp(grad_y, A, y, zi, need_A)
    if backend == "chunked":
        from .kernels import chunked

        return chunked.allpole_vjp(grad_y, A, y, zi, need_A)
    if backend == "numba":
        from .kernels import cpu_numba

        B, N = zi.shape
        time_invariant = A.shape[1] == 1
        grad_x = torch.empty_like(grad_y, memory_format=torch.contiguous_format)
        grad_zi = torch.zeros_like(zi, memory_format=torch.contiguous_format)
        # The kernel takes both a (B, T, N) grad_A for time-varying A and a wide
        # (B, N) sum for time-invariant A; the one it does not write is an empty
        # placeholder, typed like the real thing so that one compiled kernel
        # serves every case.
        grad_A = A.new_empty((0, 0, 0))
        grad_A_rows = torch.empty((B, 0, 0), dtype=A.dtype)
        grad_a_wide = torch.empty((B, 0), dtype=_wide(A.dtype))
        if need_A and time_invariant:
            grad_a_wide = torch.zeros(B, N, dtype=_wide(A.dtype))
        elif need_A:
            grad_A = grad_A_rows = torch.empty_like(A, memory_format=torch.contiguous_format)
        if grad_y.numel():
            cpu_numba.run_over_batch(
                cpu_numba.allpole_vjp_kernel, grad_y.numel() * N,
                _numpy(grad_y), _numpy(A), _numpy(y), _numpy(zi),
                grad_x.numpy(), grad_A_rows.numpy(), grad_a_wide.numpy(), grad_zi.numpy(), need_A,
            )
        if need_A and time_invariant:
            grad_A = grad_a_wide.to(A.dtype)[:, None, :]
        return grad_x, grad_A, grad_zi
    with torch.no_grad():
        grad_x, grad_A, grad_zi = reference.allpole_vjp_reference(grad_y, A, y, zi)
    if not need_A:
        grad_A = A.new_empty((0, 0, 0))
    return grad_x, grad_A, grad_zi
