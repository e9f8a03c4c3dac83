"""LLVM operations numba does not expose, for the kernels: typed as numba functions, each
one emits a single instruction.  Valid inside ``@njit`` code only."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def f64_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bit pattern is the int64 ``bits`` (an LLVM bitcast)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask the CPU to bring the cache line of ``arr.ravel()[index]`` into L2 (a read; LLVM
    locality 2, prefetcht1 on x86): an index past the end is harmless, a prefetch never
    faults.  Into L2 rather than L1 (locality 3): the force kernel streaming the reference
    set's derivatives took 1-6% less time in each of five interleaved runs (medians of 15,
    2.1 GHz Xeon), as the prefetches no longer compete with the pass's own loads for L1."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(ary.data, [args[1]])  # not inbounds: any index is allowed
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        # the name's pointer suffix (p0 or p0i8) follows the LLVM version llvmlite uses
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(address, i8p), i32(0), i32(2), i32(1)])  # read, locality 2, data
        return context.get_dummy_value()

    return types.void(arr, index), codegen
