"""Vector primitives for the numba kernels, written as LLVM intrinsics.

numba leaves the SLP vectoriser off and its loop vectoriser only vectorises a
floating-point sum whose trip count covers four whole vectors, so the short dot
products of an all-pole filter (N - 8 terms) stayed scalar and serial, which
made the per-sample cost grow with N several times faster than the arithmetic.
These primitives emit the vector code themselves: 32-byte vectors (8 float32 or
4 float64 lanes; LLVM splits them where the target's registers are narrower),
fused multiply-adds, and two accumulators for the sums.

Each operates on a 1-D C-contiguous array at an offset, and some read one array
*backwards*, so that a coefficient row ``A[t, i-1]`` (ascending ``i``) meets the
past outputs ``y[t-i]`` (descending addresses) without a reversed copy. Real
dtypes take the vector code; complex dtypes take plain loops with the same
meaning. Callers keep every index in bounds: nothing here checks.

    dot_reversed(a, ia, b, ib_last, n)       sum_l a[ia+l] * b[ib_last-l]
    dot_conj(a, ia, b, ib, n)                sum_l a[ia+l] * conj(b[ib+l])
    sub_conj_scaled_reversed(y, iy_last, a, ia, s, n)
                                             y[iy_last-l] -= conj(a[ia+l]) * s
    set_neg_scaled_conj_reversed(out, io, b, ib_last, s, n)
                                             out[io+l] = -s * conj(b[ib_last-l])

with ``l = 0 .. n-1``; ``n <= 0`` does nothing (and sums to zero).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "dot_reversed",
    "dot_conj",
    "sub_conj_scaled_reversed",
    "set_neg_scaled_conj_reversed",
]

_VECTOR_BYTES = 32
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_REAL = (types.float32, types.float64)


def _is_real_row(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype in _REAL


def _is_row(t) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1


class _Emitter:
    """LLVM IR helpers for one dtype inside one intrinsic's codegen."""

    def __init__(self, context, builder, dtype):
        self.context, self.builder = context, builder
        self.scalar = context.get_value_type(dtype)
        size = context.get_abi_sizeof(self.scalar)
        self.width = _VECTOR_BYTES // size
        self.vector = ir.VectorType(self.scalar, self.width)
        self.align = size
        bits = 8 * size
        module = builder.module
        self.vfma = cgutils.get_or_insert_function(
            module, ir.FunctionType(self.vector, [self.vector] * 3), f"llvm.fma.v{self.width}f{bits}"
        )
        self.sfma = cgutils.get_or_insert_function(
            module, ir.FunctionType(self.scalar, [self.scalar] * 3), f"llvm.fma.f{bits}"
        )

    def const(self, value: int):
        return ir.Constant(_I64, value)

    def index(self, value, ty):
        return self.context.cast(self.builder, value, ty, types.intp)

    def count(self, value, ty):
        """An element count as an intp, negative counts as zero."""
        value = self.index(value, ty)
        negative = self.builder.icmp_signed("<", value, self.const(0))
        return self.builder.select(negative, self.const(0), value)

    def pointer(self, array_type, array, index, index_type):
        data = self.context.make_array(array_type)(self.context, self.builder, array).data
        return self.builder.gep(data, [self.index(index, index_type)])

    def load(self, pointer, offset):
        address = self.builder.bitcast(self.builder.gep(pointer, [offset]), self.vector.as_pointer())
        return self.builder.load(address, align=self.align)

    def store(self, value, pointer, offset):
        address = self.builder.bitcast(self.builder.gep(pointer, [offset]), self.vector.as_pointer())
        self.builder.store(value, address, align=self.align)

    def reverse(self, value):
        order = ir.Constant(ir.VectorType(_I32, self.width), list(range(self.width - 1, -1, -1)))
        return self.builder.shuffle_vector(value, value, order)

    def splat(self, scalar):
        undef = ir.Constant(self.vector, ir.Undefined)
        one = self.builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
        lanes = ir.Constant(ir.VectorType(_I32, self.width), [0] * self.width)
        return self.builder.shuffle_vector(one, one, lanes)

    def zero(self):
        return ir.Constant(self.vector, [ir.Constant(self.scalar, 0.0)] * self.width)

    def horizontal_sum(self, value):
        width = self.width
        while width > 1:
            half = width // 2
            low = ir.Constant(ir.VectorType(_I32, half), list(range(half)))
            high = ir.Constant(ir.VectorType(_I32, half), list(range(half, width)))
            value = self.builder.fadd(
                self.builder.shuffle_vector(value, value, low),
                self.builder.shuffle_vector(value, value, high),
            )
            width = half
        return self.builder.extract_element(value, ir.Constant(_I32, 0))

    def block_loop(self, n, body, step_blocks=1):
        """Call ``body(offset)`` for offset = 0, w, 2w, ... while a whole vector
        fits in n (``step_blocks`` vectors per call); return the elements done."""
        builder = self.builder
        span = self.width * step_blocks
        blocks = builder.udiv(n, self.const(span))
        with cgutils.for_range(builder, blocks) as loop:
            body(builder.mul(loop.index, self.const(span)))
        return builder.mul(blocks, self.const(span))

    def scalar_loop(self, start, stop, body):
        with cgutils.for_range_slice(self.builder, start, stop, self.const(1), inc=True) as (l, _):
            body(l)


def _dot_codegen(reverse_b: bool):
    def codegen(context, builder, signature, args):
        a_type, ia_type, b_type, ib_type, n_type = signature.args
        e = _Emitter(context, builder, a_type.dtype)
        width = e.width
        pa = e.pointer(a_type, args[0], args[1], ia_type)
        pb = e.pointer(b_type, args[2], args[3], ib_type)
        n = e.count(args[4], n_type)
        # Reading b backwards, vector k covers b[ib_last - k w - (w - 1) .. ib_last - k w].
        pb_block = builder.gep(pb, [e.const(-(width - 1))]) if reverse_b else pb

        def b_vector(offset):
            if reverse_b:
                return e.reverse(e.load(pb_block, builder.neg(offset)))
            return e.load(pb_block, offset)

        def b_scalar(l):
            return builder.load(builder.gep(pb, [builder.neg(l) if reverse_b else l]))

        acc = [cgutils.alloca_once_value(builder, e.zero()) for _ in range(2)]
        total = cgutils.alloca_once_value(builder, ir.Constant(e.scalar, 0.0))
        done = cgutils.alloca_once_value(builder, e.const(0))

        def fma_into(slot, offset):
            value = builder.call(e.vfma, [e.load(pa, offset), b_vector(offset), builder.load(slot)])
            builder.store(value, slot)

        def two_vectors(offset):
            fma_into(acc[0], offset)
            fma_into(acc[1], builder.add(offset, e.const(width)))

        # Short sums (fewer than `width` terms) skip the vector part altogether.
        with builder.if_then(builder.icmp_unsigned(">=", n, e.const(width))):
            paired = e.block_loop(n, two_vectors, step_blocks=2)
            one_more = builder.icmp_unsigned(">=", builder.sub(n, paired), e.const(width))
            with builder.if_then(one_more):
                fma_into(acc[0], paired)
            builder.store(builder.select(one_more, builder.add(paired, e.const(width)), paired), done)
            lanes = builder.fadd(builder.load(acc[0]), builder.load(acc[1]))
            builder.store(e.horizontal_sum(lanes), total)
        done = builder.load(done)

        def tail(l):
            a = builder.load(builder.gep(pa, [l]))
            builder.store(builder.call(e.sfma, [a, b_scalar(l), builder.load(total)]), total)

        e.scalar_loop(done, n, tail)
        return builder.load(total)

    return codegen


@intrinsic
def _real_dot_reversed(typingctx, a, ia, b, ib_last, n):
    if not (_is_real_row(a) and _is_real_row(b) and a.dtype == b.dtype):
        return None
    return a.dtype(a, ia, b, ib_last, n), _dot_codegen(reverse_b=True)


@intrinsic
def _real_dot(typingctx, a, ia, b, ib, n):
    if not (_is_real_row(a) and _is_real_row(b) and a.dtype == b.dtype):
        return None
    return a.dtype(a, ia, b, ib, n), _dot_codegen(reverse_b=False)


@intrinsic
def _real_sub_scaled_reversed(typingctx, y, iy_last, a, ia, s, n):
    if not (_is_real_row(y) and _is_real_row(a) and y.dtype == a.dtype):
        return None

    def codegen(context, builder, signature, args):
        y_type, iy_type, a_type, ia_type, s_type, n_type = signature.args
        e = _Emitter(context, builder, a_type.dtype)
        py = e.pointer(y_type, args[0], args[1], iy_type)
        py_block = builder.gep(py, [e.const(-(e.width - 1))])
        pa = e.pointer(a_type, args[2], args[3], ia_type)
        minus_s = builder.fneg(context.cast(builder, args[4], s_type, a_type.dtype))
        minus_s_vector = e.splat(minus_s)
        n = e.count(args[5], n_type)

        def vector(offset):
            at = builder.neg(offset)
            updated = builder.call(
                e.vfma, [e.reverse(e.load(pa, offset)), minus_s_vector, e.load(py_block, at)]
            )
            e.store(updated, py_block, at)

        def tail(l):
            target = builder.gep(py, [builder.neg(l)])
            a = builder.load(builder.gep(pa, [l]))
            builder.store(builder.call(e.sfma, [a, minus_s, builder.load(target)]), target)

        e.scalar_loop(e.block_loop(n, vector), n, tail)
        return context.get_dummy_value()

    return types.void(y, iy_last, a, ia, s, n), codegen


@intrinsic
def _real_set_neg_scaled_reversed(typingctx, out, io, b, ib_last, s, n):
    if not (_is_real_row(out) and _is_real_row(b) and out.dtype == b.dtype):
        return None

    def codegen(context, builder, signature, args):
        out_type, io_type, b_type, ib_type, s_type, n_type = signature.args
        e = _Emitter(context, builder, b_type.dtype)
        po = e.pointer(out_type, args[0], args[1], io_type)
        pb = e.pointer(b_type, args[2], args[3], ib_type)
        pb_block = builder.gep(pb, [e.const(-(e.width - 1))])
        minus_s = builder.fneg(context.cast(builder, args[4], s_type, b_type.dtype))
        minus_s_vector = e.splat(minus_s)
        n = e.count(args[5], n_type)

        def vector(offset):
            b = e.reverse(e.load(pb_block, builder.neg(offset)))
            e.store(builder.fmul(b, minus_s_vector), po, offset)

        def tail(l):
            b = builder.load(builder.gep(pb, [builder.neg(l)]))
            builder.store(builder.fmul(b, minus_s), builder.gep(po, [l]))

        e.scalar_loop(e.block_loop(n, vector), n, tail)
        return context.get_dummy_value()

    return types.void(out, io, b, ib_last, s, n), codegen


# Public names: vector code for real rows, loops for complex ones. The stubs are
# never called from Python; numba resolves them through the overloads.


def dot_reversed(a, ia, b, ib_last, n):  # pragma: no cover - numba-only
    raise NotImplementedError("only callable from numba-compiled code")


def dot_conj(a, ia, b, ib, n):  # pragma: no cover - numba-only
    raise NotImplementedError("only callable from numba-compiled code")


def sub_conj_scaled_reversed(y, iy_last, a, ia, s, n):  # pragma: no cover - numba-only
    raise NotImplementedError("only callable from numba-compiled code")


def set_neg_scaled_conj_reversed(out, io, b, ib_last, s, n):  # pragma: no cover - numba-only
    raise NotImplementedError("only callable from numba-compiled code")


_LOOP_OPTIONS = {"fastmath": {"contract"}}

# inline="always": numba puts the primitive's code into the caller's loop itself.
# Left to LLVM's inliner, they were inlined for AVX2 targets but called once per
# time step, with the register-held outputs spilled around the call, when numba
# compiled for AVX-512 CPUs (znver4, skylake-avx512). A 2-core AVX-512 EPYC
# measured the forward at N = 8 at 10.9 ns a sample, an AVX2 one 3.5: this is the
# likely cause (the AVX-512 code cannot run here to time it). tests/test_cpu_codegen.py
# checks the assembly for those targets.


def _zero(array_type):
    """A zero of the array's dtype, frozen into the compiled loop."""
    return np.dtype(str(array_type.dtype)).type(0)


@overload(dot_reversed, jit_options=_LOOP_OPTIONS, inline="always")
def _dot_reversed_overload(a, ia, b, ib_last, n):
    if _is_real_row(a) and _is_real_row(b) and a.dtype == b.dtype:
        return lambda a, ia, b, ib_last, n: _real_dot_reversed(a, ia, b, ib_last, n)
    if _is_row(a) and _is_row(b):
        zero = _zero(a)

        def loop(a, ia, b, ib_last, n):
            total = zero
            for l in range(n):
                total += a[ia + l] * b[ib_last - l]
            return total

        return loop
    return None


@overload(dot_conj, jit_options=_LOOP_OPTIONS, inline="always")
def _dot_conj_overload(a, ia, b, ib, n):
    if _is_real_row(a) and _is_real_row(b) and a.dtype == b.dtype:
        return lambda a, ia, b, ib, n: _real_dot(a, ia, b, ib, n)
    if _is_row(a) and _is_row(b):
        zero = _zero(a)

        def loop(a, ia, b, ib, n):
            total = zero
            for l in range(n):
                total += a[ia + l] * np.conj(b[ib + l])
            return total

        return loop
    return None


@overload(sub_conj_scaled_reversed, jit_options=_LOOP_OPTIONS, inline="always")
def _sub_conj_scaled_reversed_overload(y, iy_last, a, ia, s, n):
    if _is_real_row(y) and _is_real_row(a) and y.dtype == a.dtype:
        return lambda y, iy_last, a, ia, s, n: _real_sub_scaled_reversed(y, iy_last, a, ia, s, n)
    if _is_row(y) and _is_row(a):

        def loop(y, iy_last, a, ia, s, n):
            for l in range(n):
                y[iy_last - l] -= np.conj(a[ia + l]) * s

        return loop
    return None


@overload(set_neg_scaled_conj_reversed, jit_options=_LOOP_OPTIONS, inline="always")
def _set_neg_scaled_conj_reversed_overload(out, io, b, ib_last, s, n):
    if _is_real_row(out) and _is_real_row(b) and out.dtype == b.dtype:
        return lambda out, io, b, ib_last, s, n: _real_set_neg_scaled_reversed(out, io, b, ib_last, s, n)
    if _is_row(out) and _is_row(b):

        def loop(out, io, b, ib_last, s, n):
            for l in range(n):
                out[io + l] = -s * np.conj(b[ib_last - l])

        return loop
    return None
