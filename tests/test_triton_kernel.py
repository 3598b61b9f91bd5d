"""The "triton" cluster kernel: which kernel is picked, the CPU interpreter run, CUDA at BigGAN's sizes.

The correctness cases themselves live in `triton_interpreted.py`: Triton's interpreter (which runs
the kernels on CPU tensors) must be switched on before triton is first imported, so they run in a
fresh pytest process and the rest of the suite never sees the interpreter. The `cuda` tests run
the compiled kernels where a GPU is (skipped elsewhere, see conftest.py).
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from biggan_smyrf.attention import smyrf_attention
from biggan_smyrf.attention.cluster_attention import attention_backward, attention_forward, pick_kernel
from biggan_smyrf.attention.triton import triton_available

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "triton_interpreted.py"
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


@needs_triton
@pytest.mark.slow
def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(CASES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"interpreted kernel tests failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]


def test_auto_picks_triton_on_cuda_only_where_it_runs():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_kernel("auto", cpu, False, torch.float32, 49) == "flash"
    assert pick_kernel("auto", cpu, True, torch.bfloat16, 49) == "chunked"
    assert pick_kernel("auto", cuda, False, torch.float64, 49) == "chunked"
    assert pick_kernel("auto", cuda, False, torch.bfloat16, 384) == "chunked"  # past the register budget
    expected = "triton" if triton_available() else "chunked"
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert pick_kernel("auto", cuda, True, dtype, 256) == expected


@needs_triton
def test_explicit_triton_on_the_cpu_needs_the_interpreter():
    """This process imported triton without TRITON_INTERPRET=1: the error says what to do."""
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        pick_kernel("triton", torch.device("cpu"), False, torch.float32)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        pick_kernel("triton", torch.device("cuda"), False, torch.float64)
    with pytest.raises(ValueError, match="head dims up to 256, got 384"):
        pick_kernel("triton", torch.device("cuda"), False, torch.float32, 384)


@needs_triton
@pytest.mark.parametrize(
    "dtype, precision, has_mask", [("bf16", "ieee", False), ("bf16", "ieee", True), ("fp32", "tf32", True)]
)
def test_kernels_compile_for_hopper_without_a_gpu(dtype, precision, has_mask):
    """The interpreter accepts code the compiler rejects (dot shapes, dtype mixes): compile every
    kernel for sm_90 through ptxas at BigGAN's block sizes, which needs no GPU."""
    from biggan_smyrf.attention.triton import blocks, clusters

    sizes = dict(HAS_MASK=has_mask, BLOCK_N=64, BLOCK_DQK=16, BLOCK_DV=64, UPCAST=False, PRECISION=precision)
    jobs = [
        (clusters._forward_kernel, {**sizes, "BLOCK_M": 128}),
        (blocks._row_dot_kernel, dict(BLOCK_M=128, BLOCK_DV=64)),
        (clusters._backward_kv_kernel, {**sizes, "BLOCK_M": 64}),
        (clusters._backward_q_kernel, {**sizes, "BLOCK_M": 64}),
        (clusters._backward_one_pass_kernel, {**sizes, "BLOCK_M": clusters.ONE_PASS_BLOCK_M}),
    ]
    compiled = _compile_for_hopper(jobs, dtype)
    _assert_one_exp2_per_score_without_spills(compiled["_backward_one_pass_kernel"], clusters.ONE_PASS_BLOCK_M, 64, 4)


@needs_triton
@pytest.mark.parametrize("dtype, precision, has_bias", [("bf16", "ieee", True), ("fp32", "tf32", False)])
def test_permuted_round_kernels_compile_for_hopper_without_a_gpu(dtype, precision, has_bias):
    """The same for SMYRF's permuted-round kernels (triton/rounds.py) at BigGAN's sizes."""
    from biggan_smyrf.attention.triton import rounds as kernels

    sizes = dict(HAS_BIAS=has_bias, BLOCK_N=64, BLOCK_DQK=16, BLOCK_DV=64, UPCAST=False, PRECISION=precision)
    jobs = [
        (kernels._forward_kernel, {**sizes, "BLOCK_M": 128}),
        (kernels._backward_kv_kernel, {**sizes, "BLOCK_M": 64}),
        (kernels._backward_q_kernel, {**sizes, "BLOCK_M": 64}),
    ]
    block_m, block_n, warps = kernels.BLOCKS["one pass"]
    jobs.append((kernels._backward_one_pass_kernel, {**sizes, "BLOCK_M": block_m, "BLOCK_N": block_n}, warps))
    compiled = _compile_for_hopper(jobs, dtype)
    _assert_one_exp2_per_score_without_spills(compiled["_backward_one_pass_kernel"], block_m, block_n, warps)


def _compile_for_hopper(jobs, dtype: str) -> dict:
    """{kernel name: compiled kernel} for jobs (kernel, constexprs[, num_warps if not Triton's 4])."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    compiled = {}
    for kernel, constants, *warps in jobs:
        signature = {name: _argument_type(name, constants, dtype) for name in kernel.arg_names}
        options = {"num_warps": warps[0]} if warps else {}
        compiled[kernel.__name__] = compile(
            ASTSource(kernel, signature, constants), target=GPUTarget("cuda", 90, 32), options=options
        )
        assert compiled[kernel.__name__].asm["cubin"], kernel.__name__
    return compiled


def _assert_one_exp2_per_score_without_spills(compiled, block_m: int, block_n: int, warps: int) -> None:
    """What the one-pass backward is for, read from its SASS: each of its 32 x warps threads runs
    every exp2 instruction (MUFU.EX2) once per (query block, key block), so one exponential per score
    means block_m x block_n of them -- the compiler can recompute P in a second register layout,
    which doubles them; and no local memory (spilled registers) in the key loop."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    per_score = sass.count("MUFU.EX2") * 32 * warps / (block_m * block_n)
    assert per_score == 1, f"{per_score} exp2 per score"
    resources = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
    assert resources["STACK"] == 0 and resources["LOCAL"] == 0, f"spills: {resources}"


# Float32 buffers of both kernel families: logsumexps, row dots, norms, the bias and accumulators.
FLOAT32_ARGUMENTS = {"LSE", "DELTA", "NORM", "BIAS", "OUT_ACC", "DQ_ACC", "DK_ACC", "DV_ACC", "RUN_MAX", "RUN_SUM"}
INDEX_ARGUMENTS = {"QIDX", "KIDX"}
SIZE_ARGUMENTS = {"Lq", "Lk", "Cq", "n_clusters", "D_QK", "D_V"}


def _argument_type(name: str, constants: dict, dtype: str) -> str:
    """Triton signature types of the kernels' arguments, by their naming convention."""
    if name in constants:
        return "constexpr"
    if name in FLOAT32_ARGUMENTS:
        return "*fp32"
    if name in INDEX_ARGUMENTS:
        return "*i64"
    if name == "MASK":
        return "*u8"
    if name.startswith("scale"):
        return "fp32"
    if name.startswith("stride") or name in SIZE_ARGUMENTS:
        return "i32"
    return f"*{dtype}"


# --- CUDA: the compiled kernels at BigGAN ch=96's sizes ------------------------------------------
# 2048 queries and 512 keys + 32 summary keys per cluster, d_qk = 12, d_v = 48.


def biggan_clusters(dtype, G=8, Lq=2048, Lk=544, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(G, n, d, generator=g).to("cuda", dtype) for n, d in ((Lq, 12), (Lk, 12), (Lk, 48)))
    mask = (torch.rand(G, Lk, generator=g) > 0.1).cuda()
    mask[0] = False
    return q, k, v, mask


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# bf16: both kernels round to bf16, P and dS at different points (interpreter, SMYRF end to end: up to 1.1e-2).
CUDA_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCE), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_cuda_triton_matches_chunked_at_biggan_sizes(dtype, masked):
    q, k, v, mask = biggan_clusters(dtype)
    mask = mask if masked else None
    out, lse = attention_forward(q, k, v, 1.0, "triton", mask)
    want_out, want_lse = attention_forward(q, k, v, 1.0, "chunked", mask)
    assert relative_error(out, want_out) < CUDA_TOLERANCE[dtype]
    torch.testing.assert_close(lse, want_lse, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    got = attention_backward(grad, q, k, v, out, lse, 1.0, "triton", mask)
    want = attention_backward(grad, q, k, v, out, lse, 1.0, "chunked", mask)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        assert relative_error(a, b) < CUDA_TOLERANCE[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(CUDA_TOLERANCE), ids=lambda d: str(d)[6:])
def test_cuda_smyrf_auto_is_triton_and_matches_chunked(dtype):
    """A 64x64 map (N = 4096 queries, M = 1024 keys) with the library's defaults, 4 x 2048."""
    assert pick_kernel("auto", torch.device("cuda"), False, dtype) == "triton"
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, d, generator=g).to("cuda", dtype) for n, d in ((4096, 12), (1024, 12), (1024, 48)))

    def run(kernel):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = smyrf_attention(*leaves, n_hashes=4, q_cluster_size=2048, seed=0, kernel=kernel)
        out.float().square().sum().backward()
        return [out.detach()] + [x.grad for x in leaves]

    for a, b in zip(run("auto"), run("chunked")):
        assert relative_error(a, b) < CUDA_TOLERANCE[dtype]


@pytest.mark.cuda
def test_cuda_fp32_follows_torchs_tf32_setting():
    """With PyTorch's CUDA matmuls on TF32 the kernel's fp32 dots use TF32 too: both kernels then
    round at TF32's precision (~1e-3), and the triton one still matches the chunked one."""
    q, k, v, mask = biggan_clusters(torch.float32, G=4)
    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        out, lse = attention_forward(q, k, v, 1.0, "triton", mask)
        want_out, _ = attention_forward(q, k, v, 1.0, "chunked", mask)
        grad = torch.randn_like(out)
        got = attention_backward(grad, q, k, v, out, lse, 1.0, "triton", mask)
        want = attention_backward(grad, q, k, v, out, lse, 1.0, "chunked", mask)
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous
    for a, b in zip((out, *got), (want_out, *want)):
        assert relative_error(a, b) < 1e-2
