"""The interpreter's overheads that `interpreter_overheads.py` removes: what it runs instead gives
bit for bit what Triton's own code gives (checked here so that a Triton upgrade that changes the
code it stands in for fails here, not somewhere in the kernels' tolerances).

Not collected by the suite (no test_ prefix): `test_triton_kernel.py` runs every
`triton_interpreted*.py` in a fresh pytest process with TRITON_INTERPRET=1.
"""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402 -- overheads of Triton's interpreter, removed (see there)
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from biggan_smyrf.attention.triton import clusters  # noqa: E402
from helpers import deterministic_algorithms  # noqa: E402


def test_the_overheads_are_removed():
    assert interpreter._convert_float is interpreter_overheads._convert_float
    assert interpreter._get_np_dtype is interpreter_overheads._get_np_dtype
    assert interpreter.InterpretedFunction.__call__ is interpreter_overheads._device_call


def test_casts_are_triton_s():
    """bfloat16 -> float32 on every bit pattern; float32 -> bfloat16 on every sign, exponent and
    top 7 mantissa bits (what the cast keeps) with low halves 0, 1, 0x7fff, 0x8000 and 0xffff;
    each without subnormals and with them (which Triton's function converts)."""
    original = interpreter_overheads._original_convert_float
    bf16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f32 = ((np.arange(1 << 16, dtype=np.uint32)[:, None] << 16) | np.array([0, 1, 0x7FFF, 0x8000, 0xFFFF], dtype=np.uint32)).ravel()
    for bits, src, dst, mantissa, exponent in ((bf16, tl.bfloat16, tl.float32, 0x7F, 0x7F80),
                                               (f32.view(np.float32), tl.float32, tl.bfloat16, 0x7FFFFF, 0x7F800000)):
        raw = bits.view(np.uint16 if src == tl.bfloat16 else np.uint32)
        subnormal = ((raw & exponent) == 0) & ((raw & mantissa) != 0)
        assert subnormal.any() and not subnormal.all()
        for x in (bits[~subnormal], bits, bits[~subnormal][:4096].reshape(64, 64)):
            got, want = interpreter_overheads._convert_float(x, src, dst, None), original(x, src, dst, None)
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (src, dst)


def test_numpy_types_are_triton_s():
    original = interpreter_overheads._original_np_dtype
    scalars = [tl.int1, tl.int8, tl.uint8, tl.int16, tl.uint16, tl.int32, tl.uint32, tl.int64, tl.uint64,
               tl.float16, tl.bfloat16, tl.float32, tl.float64]
    for t in scalars + [tl.pointer_type(tl.bfloat16), tl.pointer_type(tl.float32)]:
        for each in (t, tl.block_type(t, [16, 64])):
            assert interpreter_overheads._get_np_dtype(each) == original(each), each


def test_kernels_compute_what_triton_s_interpreter_computes(monkeypatch):
    """The cluster kernels (bfloat16, masked, tails; forward and both backwards) with the
    overheads removed and with Triton's own interpreter: the same bits."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, d, generator=g).bfloat16() for n, d in ((40, 12), (24, 12), (24, 48)))
    mask = torch.rand(2, 24, generator=g) > 0.3
    grad = torch.randn(2, 40, 48, generator=g).bfloat16()

    def run():
        out, lse = clusters.forward(q, k, v, 0.7, mask)
        results = [out, lse]
        for deterministic in (False, True):
            with deterministic_algorithms(deterministic):
                results += clusters.backward(grad, q, k, v, out, lse, 0.7, mask)
        return results

    fast = run()
    monkeypatch.setattr(interpreter, "_convert_float", interpreter_overheads._original_convert_float)
    monkeypatch.setattr(interpreter, "_get_np_dtype", interpreter_overheads._original_np_dtype)
    monkeypatch.setattr(interpreter.GridExecutor, "__call__", interpreter_overheads._grid_call)
    monkeypatch.setattr(interpreter.InterpretedFunction, "__call__", interpreter_overheads._function_call)
    for a, b in zip(fast, run()):
        assert a.dtype == b.dtype and torch.equal(a, b)
