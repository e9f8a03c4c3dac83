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
    """Ask the CPU to bring the cache line of ``arr.ravel()[index]`` towards L1 (a read,
    kept in every level): an index past the end is harmless, a prefetch never faults."""

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(ary.data, [args[1]])  # not inbounds: any index is allowed
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        # the name's pointer suffix (p0 or p0i8) follows the LLVM version llvmlite uses
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(address, i8p), i32(0), i32(3), i32(1)])  # read, locality 3, data
        return context.get_dummy_value()

    return types.void(arr, index), codegen
