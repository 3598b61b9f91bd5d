"""The building blocks every Triton kernel here shares, public for `clusters.py` and `rounds.py`.

Device functions (`triton.jit`, called from inside kernels): `dot` (a @ b accumulated in fp32),
`online_softmax_step` / `online_softmax_result` (FlashAttention's online softmax over key blocks),
`cluster_and_block` (a program's place in a flat grid), `atomic_accumulate` (the one-pass
backwards' dQ). Host side: `block_size` / `head_block` (compile-time block widths), `check_inputs`
(dtypes and head dims the kernels take), `fp32_dot_precision` (IEEE or TF32, as PyTorch's
matmuls), `row_dot` (FlashAttention's D = rowsum(dO * O), which both backwards need),
`one_pass_backward` (which backward runs), `LOG2E`, and `INTERPRETED` (whether triton runs under
its CPU interpreter). A module of their own so that the cluster kernels and the permuted-round
kernels build on one copy and neither reaches into the other.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import TRITON_DTYPES, TRITON_MAX_HEAD_DIM
from .launches import launch

# log2(e): the kernels work in base 2 (exp2, log2), the host's scale and lse in base e.
LOG2E = tl.constexpr(1.4426950408889634)


def block_size(length: int, largest: int) -> int:
    return max(16, min(largest, triton.next_power_of_2(length)))


def launch_sizes(blocks: tuple[int, int, int, int], n_queries: int, n_keys: int) -> dict:
    """A kernel's (BLOCK_M, BLOCK_N, num_warps, num_stages) as launch arguments, the blocks capped
    by the lengths of its query and key runs."""
    block_m, block_n, warps, stages = blocks
    return dict(BLOCK_M=block_size(n_queries, block_m), BLOCK_N=block_size(n_keys, block_n),
                num_warps=warps, num_stages=stages)


def head_block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in TRITON_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"the 'triton' cluster kernel takes float16, bfloat16 or float32 q, k, v of one dtype, got "
            f"{q.dtype}, {k.dtype}, {v.dtype}; use kernel='chunked' (e.g. for float64 gradcheck)"
        )
    if max(q.shape[-1], v.shape[-1]) > TRITON_MAX_HEAD_DIM:
        raise ValueError(
            f"the 'triton' cluster kernel supports head dims up to {TRITON_MAX_HEAD_DIM}, got d_qk={q.shape[-1]}, "
            f"d_v={v.shape[-1]}; use kernel='chunked'"
        )


@triton.jit
def dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b accumulated in fp32; PRECISION ("ieee" or "tf32") matters for fp32 inputs only.
    UPCAST (only under the interpreter, whose tl.dot multiplies bfloat16's raw bit patterns in
    triton 3.8: triton-lang/triton#11584) feeds it fp32 copies instead: products of half values
    are exact in fp32, so this is the tensor-core result up to summation order."""
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


# Whether triton.jit ran under TRITON_INTERPRET=1 when this module was imported: then the kernels
# run on CPU tensors in Triton's (slow, numpy-based) interpreter, and on nothing else.
INTERPRETED = isinstance(dot, InterpretedFunction)


@triton.jit
def cluster_and_block(length, BLOCK: tl.constexpr):
    """(cluster, block) of this program in a flat grid, the blocks of one cluster consecutive (so
    they run together and share its keys in L2; a flat grid also has no 65,535 limit on the number
    of clusters). The cluster index is int64 so that its offsets cannot overflow."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(length, BLOCK)
    return (pid // n_blocks).to(tl.int64), pid % n_blocks


@triton.jit
def online_softmax_step(m_i, l_i, acc, s, v, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one block of base-2 logits s and its values v into the running max m_i, sum l_i and
    output acc of a block of query rows (FlashAttention's online softmax)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # While a row has seen only masked keys its max is -inf; subtracting 0 instead keeps
    # exp2(-inf - max) = 0 rather than NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, UPCAST, PRECISION)
    return m_new, l_i, acc


@triton.jit
def online_softmax_result(m_i, l_i, acc):
    """(out, lse in base 2) of the rows; a row that saw only masked keys gets out = 0, lse = -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    return out, lse


@triton.jit
def atomic_accumulate(ptrs, value, inside):
    """*ptrs += value (float32) where several programs add to the same rows at once: the one-pass
    backwards' dQ, added by every key block of a cluster. Relaxed ordering: nothing reads the sums
    before the kernel ends. The order of the additions, hence the sums' last bits, varies from run
    to run, which is why deterministic mode runs the two-kernel backward (`one_pass_backward`)."""
    tl.atomic_add(ptrs, value, mask=inside, sem="relaxed")


@triton.jit
def _row_dot_kernel(
    DO, OUT, DELTA,
    stride_dg, stride_dm, stride_dd,
    stride_og, stride_om, stride_od,
    Lq, D_V,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """DELTA[g, i] = sum_d dO[g, i, d] * out[g, i, d] in fp32 (FlashAttention's D)."""
    g, block = cluster_and_block(Lq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (offs_m[:, None] < Lq) & (offs_dv[None, :] < D_V)
    do = tl.load(DO + g * stride_dg + offs_m[:, None] * stride_dm + offs_dv[None, :] * stride_dd, mask=inside, other=0.0)
    o = tl.load(OUT + g * stride_og + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od, mask=inside, other=0.0)
    tl.store(DELTA + g * Lq + offs_m, tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1), mask=offs_m < Lq)


def fp32_dot_precision() -> str:
    """TF32 for fp32 dots where PyTorch's CUDA matmuls use it too (torch.set_float32_matmul_precision
    "high"/"medium", or torch.backends.cuda.matmul.fp32_precision = "tf32"), so that this kernel and
    the chunked one round alike; IEEE fp32 otherwise, and always under the interpreter."""
    return "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" and not INTERPRETED else "ieee"


def one_pass_backward() -> bool:
    """Which backward the kernels run, decided when the backward runs. One pass (the default):
    P and dS recomputed once per score, by one program per key block that adds its share of dQ
    with `atomic_accumulate`: one exponential per score, five dots per (query block, key block).
    Two kernels where PyTorch is told to be deterministic (`torch.use_deterministic_algorithms`,
    which Lightning's `--trainer.deterministic true` sets): one for dK and dV, one for dQ, each
    gradient row written by a single program, bit for bit repeatable, for two exponentials per
    score and seven dots per block pair."""
    return not torch.are_deterministic_algorithms_enabled()


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(G, L) float32 sum over the last dim of a * b, for (G, L, d) inputs of any float dtype and
    strides, without float32 copies of them (FlashAttention's D = rowsum(dO * O))."""
    G, L, d = a.shape
    delta = torch.empty(G, L, dtype=torch.float32, device=a.device)
    block_rows = block_size(L, 128)
    launch(_row_dot_kernel, (G * triton.cdiv(L, block_rows),))(
        a, b, delta, *a.stride(), *b.stride(), L, d, BLOCK_M=block_rows, BLOCK_DV=head_block(d),
    )
    return delta
