"""Three overheads of Triton 3.8's interpreter, removed for the interpreted tests without changing
anything a kernel computes. Imported by the `triton_interpreted*.py` files (TRITON_INTERPRET=1).

1. Device-function calls re-patch triton.language. A launch (`GridExecutor.__call__`) runs with
triton.language patched to the interpreter's numpy builder (`_patch_lang(kernel)`: the builtins of
every triton.language module the kernel's globals name, the tensor class and a few functions;
undone when the launch ends). Every call of a `triton.jit` device function inside it
(`InterpretedFunction.__call__`: ours -- `dot`, `online_softmax_step`, the tile loads -- and
triton's own `tl.sum`, `tl.max`, `tl.cdiv`, `tl.zeros`, thousands per launch) calls
`_patch_lang(function)` again, whose `inspect.getmembers` walks triton.language, its tensor class
and tl.math. That changes nothing where the function's modules are patched already: the builtins
are the patched wrappers (`is_builtin` is false for them, so they are left as they are) and the
rest is set to equivalent functions again. They are patched already
- if the launch patched them (our kernels and device functions all name `tl` alone), or
- if an earlier device call patched them (triton's standard library names `triton.language.core`):
  the interpreter drops a device call's patch scope without undoing it, so that patch lasts for the
  rest of the process (a later launch that patches the module too restores it to the patched state).
Those calls run the rewritten function directly, with the interpreter's own error wrapping; any
other call goes through Triton's code unchanged.

2. `_get_np_dtype` builds its table of numpy types (19 Triton dtypes hashed by name) on every call,
tens of thousands of times per test: 15% of a test's time. Its answer depends on the type's scalar
type alone (a pointer's is uint64, a block's its element's), which the dtype's name identifies
(Triton's dtypes compare by name): cached by that name.

3. `_convert_float` (bfloat16 <-> float32 casts, which the interpreter does on the bits: every dot
of a bfloat16 kernel casts its tiles) takes some twenty numpy passes with its handling of
subnormals, where for every other value -- normal, zero, infinite or NaN -- its bfloat16 -> float32
is the bits shifted up by 16 and its float32 -> bfloat16 (truncation, no rounding mode) the top 16
bits: a bfloat16 test took twice a float32 one. Those two casts of arrays without subnormals take
the shift; anything else goes to Triton's function. (Checked bit for bit against it on every
bfloat16 and every float32 bit pattern that is not subnormal.)

The kernels' operations, their order and their inputs are untouched: what they compute is bit for
bit the same (also checked against the unpatched interpreter on the route's outputs and gradients).
"""
from __future__ import annotations

import threading

import numpy as np
import triton.language as tl
from triton.runtime import interpreter

_LANGS = (tl, tl.core)
_state = threading.local()  # .patched: the languages the launch running on this thread patched
_lasting: set = set()  # the languages a device call's (never undone) patch covers
_named: dict = {}


def _langs(fn) -> frozenset:
    """The triton.language modules `fn`'s globals name, those `_patch_lang(fn)` patches."""
    if fn not in _named:
        _named[fn] = frozenset(id(value) for value in fn.__globals__.values() if any(value is lang for lang in _LANGS))
    return _named[fn]


def _launch(self, *args, **kwargs):
    outer = getattr(_state, "patched", None)
    _state.patched = _langs(self.fn)
    try:
        return _grid_call(self, *args, **kwargs)
    finally:
        _state.patched = outer


def _device_call(self, *args, **kwargs):
    patched = getattr(_state, "patched", None)
    if patched is None:  # outside a launch: as Triton does it
        return _function_call(self, *args, **kwargs)
    langs = _langs(self.fn)
    if not langs <= patched | _lasting:
        result = _function_call(self, *args, **kwargs)  # patches langs, and what the launch does not undo stays
        _lasting.update(langs - patched)
        return result
    fn = self.rewrite()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # as InterpretedFunction.__call__
        raise interpreter.InterpreterError(repr(e)) from e


_np_dtypes: dict = {}


def _get_np_dtype(tt_dtype):
    scalar = tt_dtype.scalar  # a block's element type; a scalar or pointer type itself
    if scalar.name not in _np_dtypes:
        _np_dtypes[scalar.name] = _original_np_dtype(scalar)
    return _np_dtypes[scalar.name]


def _convert_float(input, input_dtype, output_dtype, rounding_mode):
    up = input_dtype == tl.bfloat16 and output_dtype == tl.float32
    down = input_dtype == tl.float32 and output_dtype == tl.bfloat16
    if rounding_mode is None and (up or down):
        bits = np.frombuffer(input.tobytes(), dtype=np.uint16 if up else np.uint32)  # as Triton's reads them
        mantissa = (1 << input_dtype.fp_mantissa_width) - 1
        exponent = ((1 << (input_dtype.primitive_bitwidth - 1)) - 1) & ~mantissa
        if not np.any(((bits & exponent) == 0) & ((bits & mantissa) != 0)):  # no subnormal
            out = bits.astype(np.uint32) << 16 if up else (bits >> 16).astype(np.uint16)
            return out.reshape(input.shape)
    return _original_convert_float(input, input_dtype, output_dtype, rounding_mode)


if not getattr(interpreter.GridExecutor.__call__, "_overheads_removed", False):
    _grid_call, _function_call = interpreter.GridExecutor.__call__, interpreter.InterpretedFunction.__call__
    _original_np_dtype, _original_convert_float = interpreter._get_np_dtype, interpreter._convert_float
    _launch._overheads_removed = True
    interpreter.GridExecutor.__call__ = _launch
    interpreter.InterpretedFunction.__call__ = _device_call
    interpreter._get_np_dtype = _get_np_dtype
    interpreter._convert_float = _convert_float
