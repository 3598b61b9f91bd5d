"""The "triton" cluster kernel: which kernel is picked, the CPU interpreter run, CUDA at BigGAN's sizes.

The correctness cases themselves live in `triton_interpreted*.py` (one file per family of kernels):
Triton's interpreter (which runs the kernels on CPU tensors) must be switched on before triton is
first imported, so each file runs in a fresh pytest process and the rest of the suite never sees
the interpreter. The `cuda` tests run the compiled kernels where a GPU is (skipped elsewhere, see
conftest.py).
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
# The interpreted case files (see above).
CASES = sorted((ROOT / "tests").glob("triton_interpreted*.py"))
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


# The interpreted cases (every file) take about a minute and a half on one core: they run in
# interleaved shares (conftest.py's --shard), each its own process, so that xdist's workers run the
# shares side by side. Three, not two: dealt 1, 2, 1, 2, ... the costlier case of every parametrized
# pair (bfloat16 after float32, the two-kernel backward after the one pass) falls to the same share,
# and 2 shares came out at about 65 and 40 s where 3 take 38, 24 and 37 s (a share's start-up is ~4 s).
INTERPRETED_SHARDS = 3


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("shard", [f"{i}/{INTERPRETED_SHARDS}" for i in range(1, INTERPRETED_SHARDS + 1)])
def test_kernels_under_triton_interpreter(shard):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(  # -p no:xdist: the share runs in this one process, not in workers of its own
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs", "--shard", shard, *map(str, CASES)],
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
@pytest.mark.parametrize("dtype, masked", [("bf16", False), ("bf16", True), ("tf32", True)])
def test_kernels_compile_for_hopper_without_a_gpu(dtype, masked):
    """The interpreter accepts code the compiler rejects (dot shapes, dtype mixes): compile every
    cluster kernel for sm_90 through ptxas, as launched at BigGAN's sizes -- the specialisation
    (argument types, divisibility, constexprs, warps, stages) is Triton's own binder's, taken from
    the real launch (benchmarks/triton_launches.py), the two-kernel backward's in deterministic
    mode -- which needs no GPU."""
    from benchmarks import triton_launches

    torch_dtype, precision = triton_launches.DTYPES[dtype]
    q, k, v, mask = biggan_clusters(torch_dtype, G=2, device="cpu")
    mask = mask if masked else None
    with triton_launches.fp32_dots(precision), triton_launches.recording((90,)) as launches:
        out, lse = attention_forward(q, k, v, 1.0, "triton", mask)
        attention_backward(torch.ones_like(out), q, k, v, out, lse, 1.0, "triton", mask)
        with triton_launches.deterministic():
            attention_backward(torch.ones_like(out), q, k, v, out, lse, 1.0, "triton", mask)
    kernels = {"_forward_kernel", "_row_dot_kernel", "_backward_keys_kernel", "_backward_q_kernel"}
    _assert_one_exp2_per_score_without_spills(*_compile_for_hopper(launches[90], kernels))


@needs_triton
@pytest.mark.parametrize("dtype, recipe", [("bf16", "default"), ("tf32", "paper")])
def test_permuted_round_kernels_compile_for_hopper_without_a_gpu(dtype, recipe):
    """The same for SMYRF's permuted-round kernels (triton/rounds.py), launched by smyrf_attention
    at 4,096 tokens in clusters of 2,048 (the default recipe's logit bias on, the paper's off)."""
    from benchmarks import triton_launches

    launches = triton_launches.smyrf_launches(recipe, 4096, 1, dtype)[90]  # both backwards
    rounds = [x for x in launches if x.module == "rounds"]
    assert {x.constants["HAS_BIAS"] for x in rounds} == {recipe == "default"}
    kernels = {"_forward_kernel", "_backward_keys_kernel", "_backward_q_kernel"}
    _assert_one_exp2_per_score_without_spills(*_compile_for_hopper(rounds, kernels))


@needs_triton
@pytest.mark.parametrize("dtype, recipe", [("bf16", "default"), ("tf32", "paper")])
def test_hashing_kernels_compile_for_hopper_without_a_gpu(dtype, recipe):
    """The same for the CUDA route's hashing (triton/hashing.py): k-d levels in the default recipe,
    one XBOX+ projection in the paper's."""
    from triton.backends.compiler import GPUTarget
    from benchmarks import triton_launches

    launches = triton_launches.smyrf_launches(recipe, 4096, 1, dtype)[90]
    unique = triton_launches.unique([x for x in launches if x.module == "hashing"])
    per_level = "_level_kernel" if recipe == "default" else "_xbox_kernel"
    assert {x.name for x in unique} >= {"_maxima_kernel", per_level}
    for launch in unique:
        assert launch.compile(GPUTarget("cuda", 90, 32)).asm["cubin"], launch.name


def _compile_for_hopper(launches, kernels: set):
    """Every specialisation of `launches` compiled for sm_90; -> the one-pass backward's compiled
    kernel and its (BLOCK_M, BLOCK_N, num_warps)."""
    from triton.backends.compiler import GPUTarget
    from benchmarks import triton_launches

    unique = triton_launches.unique(launches)
    assert {x.name for x in unique} == kernels
    for launch in unique:
        compiled = launch.compile(GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], launch.name
        if launch.name == "_backward_keys_kernel" and launch.constants["WITH_DQ"]:  # the one-pass backward
            one_pass = compiled, launch.constants["BLOCK_M"], launch.constants["BLOCK_N"], launch.options["num_warps"]
    return one_pass


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


# --- CUDA: the compiled kernels at BigGAN ch=96's sizes ------------------------------------------
# 2048 queries and 512 keys + 32 summary keys per cluster, d_qk = 12, d_v = 48.


def biggan_clusters(dtype, G=8, Lq=2048, Lk=544, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(G, n, d, generator=g).to(device, dtype) for n, d in ((Lq, 12), (Lk, 12), (Lk, 48)))
    mask = (torch.rand(G, Lk, generator=g) > 0.1).to(device)
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
