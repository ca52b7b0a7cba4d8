"""How every numba kernel of the CPU backend is compiled, and the helpers they share.

``_kernel``: compiled on first use with ``cache=True`` (machine code kept on disk),
releasing the GIL, with only contraction into fused multiply-adds allowed (no
reassociation), so that the order of every sum is the one the source writes and
NaN and Inf propagate. ``_u``: numba checks every signed index for a negative
value, so the hot loops index with unsigned integers. ``_literal``: the order
family of a kernel (cpu_plan.FAMILIES) is passed down as a literal integer, so that
overloads can choose a family's loop while the kernel is typed.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

_kernel = numba.njit(cache=True, nogil=True, fastmath={"contract"})

# Time steps between two sums of a time-invariant grad_A: the block's grad_x and
# y stay in the first-level cache for its N dot products.
_BLOCK = 512

# Indices are unsigned: numba checks every signed index for a negative value.
_u = np.uint64


# Kernel families. Each order class has its own loop (cpu_forward, cpu_backward,
# cpu_order1), and a call compiles only its own: a family is passed down as a
# literal integer (1, 2, 3 for 3..7, 8 for 8 and more), and overloads choose the
# loop while the kernel is typed, so that the other loops are never compiled. One driver branching on N at
# run time compiled every loop, forward and backward, order 1 to 64, on the first
# call of any order: 5 s forward and 14 s backward of a cold start. The
# families and the choice between them are in cpu_plan.


def _literal(family) -> int:
    if not isinstance(family, types.IntegerLiteral):
        raise numba.errors.TypingError("the kernel family must be a literal integer")
    return family.literal_value
