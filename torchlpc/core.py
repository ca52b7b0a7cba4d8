"""torchlpc 0.7's ``torchlpc.core``: ``LPC``, and the ops ``torch.ops.torchlpc.lpc``
and ``torch.ops.torchlpc.scan`` that its compiled extension registered.

Nothing here computes anything of its own: each name is the public function
with 0.7's argument order and names. 0.7's numba and CUDA helpers (``lpc_np``,
``lpc_cuda`` and their kernels) have no counterpart; see docs/migrating.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import _linear_recurrence, _sample_wise_lpc

__all__ = ["LPC"]


class LPC(torch.autograd.Function):
    """torchlpc 0.7's autograd Function: ``LPC.apply(x, A, zi)`` filters x.

    ``y[t] = x[t] - sum_i A[t, i-1] y[t-i]`` with ``y[-1-k] = zi[k]``; x ``(B, T)``,
    A ``(B, T, N)``, zi ``(B, N)``, returning y ``(B, T)``. It is
    :func:`torchlpc.sample_wise_lpc` (so it also takes its leading dimensions,
    broadcasting, a time-invariant A and ``zi=None`` for zeros); its errors name
    ``LPC.apply``. ``apply`` is the one entry point (0.7's ``forward`` and
    ``backward`` were never meant to be called directly); the derivatives, every
    order, forward mode and vmap included, are those of the ``torchlpc::allpole``
    op.
    """

    @classmethod
    def apply(cls, x: Tensor, A: Tensor, zi: Tensor) -> Tensor:
        return _sample_wise_lpc("LPC.apply", x, A, zi, False, "A")


# 0.7's compiled ops, with their schemas (arguments a, b, c): torch.ops.torchlpc.lpc(x,
# A, zi) is the filter above, torch.ops.torchlpc.scan(x, a, zi) the first-order
# recurrence y[t] = a[t] y[t-1] + x[t] with zi (B,). Implicit-autograd ops: they
# decompose into the public functions, so they are differentiable (0.7's were not)
# and work under every transform.
_library = torch.library.Library("torchlpc", "FRAGMENT")
_library.define("lpc(Tensor a, Tensor b, Tensor c) -> Tensor")
_library.define("scan(Tensor a, Tensor b, Tensor c) -> Tensor")
_library.impl(
    "lpc",
    lambda x, A, zi: _sample_wise_lpc("torch.ops.torchlpc.lpc", x, A, zi, False, "A"),
    "CompositeImplicitAutograd",
)
_library.impl(
    "scan",
    lambda x, a, zi: _linear_recurrence("torch.ops.torchlpc.scan", a, x, zi),
    "CompositeImplicitAutograd",
)
