"""Triton kernels for attention inside clusters (FlashAttention-2 style), forward and backward.

The "triton" kernel of `kernels.py`: same interface, same numbers as the "chunked" kernel up to
rounding. SMYRF uses it for its hub round; its hashed rounds use `triton_rounds.py`, which builds
on the helpers here. q: (G, Lq, d_qk), k: (G, Lk, d_qk), v: (G, Lk, d_v); every cluster g is independent.

Cost: time O(G·Lq·Lk·(d_qk + d_v)): per (query block, key block) pair the forward does 2 dots,
the backward 7 (S and dP recomputed in both backward kernels; dV, dK, dQ once). Memory
O(G·(Lq + Lk)·(d_qk + d_v)) for inputs, outputs and gradients plus O(G·Lq) for the logsumexp
and D. No score tensor exists anywhere: scores live in registers, one block at a time.

Design, and why:
- Forward: one program per (block of queries, cluster) with an online softmax over key blocks
  (running max m, running sum l, rescaled fp32 accumulator), so a query block's scores never
  leave the chip. Writes out (input dtype) and lse = m + log(l) (fp32) for the backward and for
  SMYRF's round weights.
- Backward, the standard FlashAttention-2 split: a preprocess computes D = rowsum(dO ∘ out);
  one kernel per (block of keys, cluster) loops over query blocks and accumulates dK and dV,
  another per (block of queries, cluster) loops over key blocks and accumulates dQ. Each output
  block has exactly one writer, so no atomics and no zero-initialised fp32 buffers; the price is
  computing P = exp(S - lse) and dP twice, cheap at BigGAN's tiny head dims.
  `out` is whatever the caller passes (SMYRF passes the combined multi-round output, which
  folds in the gradient through its logsumexp round weights; see smyrf.py).
- d_qk and d_v are separate compile-time block widths, each the next power of two >= 16 (tl.dot
  needs >= 16), reached by masked loads: BigGAN's 12 and 48 become 16 and 64 in registers. The
  fused PyTorch kernels need one head dim, i.e. padded *copies* of q and k at 48 (about 4x the
  q·k work); here nothing is copied, and strided inputs are read through their strides.
- Tails (Lq, Lk not multiples of the block, e.g. 512 keys + 32 summary keys = 544) and the
  optional key mask (True = attend) become -inf logits. A query whose keys are all masked gets
  out = 0 and lse = -inf, like the chunked kernel; the backward treats its lse as 0 there so
  that P = exp(-inf - 0) = 0 instead of NaN.
- Exponentials in base 2 (exp2 with log2(e) folded into the scale), the usual cheap form.
- fp16/bf16/fp32 inputs; every dot accumulates in fp32. Half inputs feed P and dS to the second
  dots in the input dtype (as FlashAttention does: tensor cores, and the error stays at the
  input's precision). fp32 inputs use IEEE fp32 dots unless PyTorch's CUDA matmuls are set to TF32
  (torch.set_float32_matmul_precision("high")): then TF32, like the chunked kernel's matmuls.
  fp64 is rejected: use the "chunked" kernel (gradcheck).
- Block sizes are fixed per call from the lengths (at most 128 queries x 64 keys, at least 16),
  not autotuned: no GPU has measured them yet. Small lengths get small blocks, which also keeps
  Triton's CPU interpreter (TRITON_INTERPRET=1, how the tests run without a GPU) fast.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .kernels import TRITON_DTYPES, TRITON_MAX_HEAD_DIM

# log2(e): the kernels work in base 2 (exp2, log2), the host's scale and lse in base e.
LOG2E = tl.constexpr(1.4426950408889634)


def _block(length: int, largest: int) -> int:
    return max(16, min(largest, triton.next_power_of_2(length)))


def _head_block(d: int) -> int:
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


def _mask_arguments(key_mask: Optional[torch.Tensor], like: torch.Tensor):
    """(pointer, stride_g, stride_n, has_mask). Bool is read as uint8 (a free view); without a
    mask any tensor stands in for the pointer, which the kernel then never touches."""
    if key_mask is None:
        return like, 0, 0, False
    mask = key_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1), True


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b accumulated in fp32; PRECISION ("ieee" or "tf32") matters for fp32 inputs only.
    UPCAST (only under the interpreter, whose tl.dot multiplies bfloat16's raw bit patterns in
    triton 3.8: triton-lang/triton#11584) feeds it fp32 copies instead: products of half values
    are exact in fp32, so this is the tensor-core result up to summation order."""
    if UPCAST:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c):
    """The (rows, cols) tile of a strided matrix at `ptr`, zeros outside [0, n_r) x [0, n_c): the
    tails of a cluster and the head-dim padding (12 -> 16, 48 -> 64) live only in registers."""
    inside = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c, mask=inside, other=0.0)


@triton.jit
def _cluster_and_block(length, BLOCK: tl.constexpr):
    """(cluster, block) of this program in a flat grid, the blocks of one cluster consecutive (so
    they run together and share its keys in L2; a flat grid also has no 65,535 limit on the number
    of clusters). The cluster index is int64 so that its offsets cannot overflow."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(length, BLOCK)
    return (pid // n_blocks).to(tl.int64), pid % n_blocks


@triton.jit
def _scores_log2(q, k, offs_n, Lk, mask_ptr, stride_mg, stride_mn, g, scale_log2,
                 HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) logits times log2(e), -inf for keys past Lk and masked keys."""
    s = _dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2
    keep = offs_n < Lk
    if HAS_MASK:
        attend = tl.load(mask_ptr + g * stride_mg + offs_n * stride_mn, mask=keep, other=0)
        keep = keep & (attend != 0)
    return tl.where(keep[None, :], s, float("-inf"))


@triton.jit
def _online_softmax_step(m_i, l_i, acc, s, v, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one block of base-2 logits s and its values v into the running max m_i, sum l_i and
    output acc of a block of query rows (FlashAttention's online softmax)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # While a row has seen only masked keys its max is -inf; subtracting 0 instead keeps
    # exp2(-inf - max) = 0 rather than NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PRECISION)
    return m_new, l_i, acc


@triton.jit
def _online_softmax_result(m_i, l_i, acc):
    """(out, lse in base 2) of the rows; a row that saw only masked keys gets out = 0, lse = -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    return out, lse


@triton.jit
def _forward_kernel(
    Q, K, V, MASK, OUT, LSE,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_og, stride_om, stride_od,
    stride_mg, stride_mn,
    Lq, Lk, D_QK, D_V, scale_log2,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    g, block = _cluster_and_block(Lq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = offs_m < Lq
    q = _tile(Q + g * stride_qg, offs_m, offs_dqk, stride_qm, stride_qd, Lq, D_QK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + g * stride_kg, offs_n, offs_dqk, stride_kn, stride_kd, Lk, D_QK)
        v = _tile(V + g * stride_vg, offs_n, offs_dv, stride_vn, stride_vd, Lk, D_V)
        s = _scores_log2(q, k, offs_n, Lk, MASK, stride_mg, stride_mn, g, scale_log2, HAS_MASK, UPCAST, PRECISION)
        m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, s, v, UPCAST, PRECISION)
    out, lse_log2 = _online_softmax_result(m_i, l_i, acc)
    lse = lse_log2 / LOG2E
    tl.store(
        OUT + g * stride_og + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
        out.to(OUT.dtype.element_ty), mask=rows[:, None] & (offs_dv[None, :] < D_V),
    )
    tl.store(LSE + g * Lq + offs_m, lse, mask=rows)


@triton.jit
def _row_dot_kernel(
    DO, OUT, DELTA,
    stride_dg, stride_dm, stride_dd,
    stride_og, stride_om, stride_od,
    Lq, D_V,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """DELTA[g, i] = sum_d dO[g, i, d] * out[g, i, d] in fp32 (FlashAttention's D)."""
    g, block = _cluster_and_block(Lq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (offs_m[:, None] < Lq) & (offs_dv[None, :] < D_V)
    do = tl.load(DO + g * stride_dg + offs_m[:, None] * stride_dm + offs_dv[None, :] * stride_dd, mask=inside, other=0.0)
    o = tl.load(OUT + g * stride_og + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od, mask=inside, other=0.0)
    tl.store(DELTA + g * Lq + offs_m, tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1), mask=offs_m < Lq)


@triton.jit
def _probabilities(s, lse_log2):
    """P = exp2(s - lse·log2 e); rows with every key masked (lse = -inf) give 0, not NaN."""
    return tl.math.exp2(s - tl.where(lse_log2 == float("-inf"), 0.0, lse_log2)[:, None])


@triton.jit
def _backward_kv_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DK, DV,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_dog, stride_dom, stride_dod,
    stride_mg, stride_mn,
    Lq, Lk, D_QK, D_V, scale, scale_log2,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dV = Pᵀ dO and dK = scale · dSᵀ Q for one block of keys, over all query blocks.
    DK and DV are contiguous (G, Lk, d)."""
    g, block = _cluster_and_block(Lk, BLOCK_N)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    cols = offs_n < Lk
    k_inside = cols[:, None] & (offs_dqk[None, :] < D_QK)
    v_inside = cols[:, None] & (offs_dv[None, :] < D_V)
    k = _tile(K + g * stride_kg, offs_n, offs_dqk, stride_kn, stride_kd, Lk, D_QK)
    v = _tile(V + g * stride_vg, offs_n, offs_dv, stride_vn, stride_vd, Lk, D_V)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < Lq
        q = _tile(Q + g * stride_qg, offs_m, offs_dqk, stride_qm, stride_qd, Lq, D_QK)
        do = _tile(DO + g * stride_dog, offs_m, offs_dv, stride_dom, stride_dod, Lq, D_V)
        # Rows past Lq load q = dO = 0 and lse = delta = 0: P is finite and dS = 0 there.
        lse_log2 = tl.load(LSE + g * Lq + offs_m, mask=rows, other=0.0) * LOG2E
        delta = tl.load(DELTA + g * Lq + offs_m, mask=rows, other=0.0)
        s = _scores_log2(q, k, offs_n, Lk, MASK, stride_mg, stride_mn, g, scale_log2, HAS_MASK, UPCAST, PRECISION)
        p = _probabilities(s, lse_log2)
        dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST, PRECISION)
        dp = _dot(do, tl.trans(v), UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PRECISION)
    tl.store(DK + (g * Lk + offs_n[:, None]) * D_QK + offs_dqk[None, :], (dk * scale).to(DK.dtype.element_ty), mask=k_inside)
    tl.store(DV + (g * Lk + offs_n[:, None]) * D_V + offs_dv[None, :], dv.to(DV.dtype.element_ty), mask=v_inside)


@triton.jit
def _backward_q_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_dog, stride_dom, stride_dod,
    stride_mg, stride_mn,
    Lq, Lk, D_QK, D_V, scale, scale_log2,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ = scale · dS K for one block of queries, over all key blocks. DQ is contiguous (G, Lq, d_qk)."""
    g, block = _cluster_and_block(Lq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = offs_m < Lq
    q_inside = rows[:, None] & (offs_dqk[None, :] < D_QK)
    q = _tile(Q + g * stride_qg, offs_m, offs_dqk, stride_qm, stride_qd, Lq, D_QK)
    do = _tile(DO + g * stride_dog, offs_m, offs_dv, stride_dom, stride_dod, Lq, D_V)
    lse_log2 = tl.load(LSE + g * Lq + offs_m, mask=rows, other=0.0) * LOG2E
    delta = tl.load(DELTA + g * Lq + offs_m, mask=rows, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + g * stride_kg, offs_n, offs_dqk, stride_kn, stride_kd, Lk, D_QK)
        v = _tile(V + g * stride_vg, offs_n, offs_dv, stride_vn, stride_vd, Lk, D_V)
        s = _scores_log2(q, k, offs_n, Lk, MASK, stride_mg, stride_mn, g, scale_log2, HAS_MASK, UPCAST, PRECISION)
        p = _probabilities(s, lse_log2)
        dp = _dot(do, tl.trans(v), UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, UPCAST, PRECISION)
    tl.store(DQ + (g * Lq + offs_m[:, None]) * D_QK + offs_dqk[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_inside)


def _fp32_dot_precision() -> str:
    """TF32 for fp32 dots where PyTorch's CUDA matmuls use it too (torch.set_float32_matmul_precision
    "high"/"medium", or torch.backends.cuda.matmul.fp32_precision = "tf32"), so that this kernel and
    the chunked one round alike; IEEE fp32 otherwise, and always under the interpreter."""
    return "tf32" if torch.backends.cuda.matmul.fp32_precision == "tf32" and not INTERPRETED else "ieee"


def _strides(x: torch.Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def forward(q, k, v, scale: float, key_mask: Optional[torch.Tensor] = None):
    """-> out (G, Lq, d_v) in q's dtype, lse (G, Lq) float32."""
    check_inputs(q, k, v)
    (G, Lq, d_qk), Lk, d_v = q.shape, k.shape[1], v.shape[-1]
    out = q.new_empty(G, Lq, d_v)
    lse = torch.empty(G, Lq, dtype=torch.float32, device=q.device)
    mask, stride_mg, stride_mn, has_mask = _mask_arguments(key_mask, q)
    block_m, block_n = _block(Lq, 128), _block(Lk, 64)
    _forward_kernel[(G * triton.cdiv(Lq, block_m),)](
        q, k, v, mask, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), stride_mg, stride_mn,
        Lq, Lk, d_qk, d_v, scale * LOG2E.value,
        HAS_MASK=has_mask, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_DQK=_head_block(d_qk), BLOCK_DV=_head_block(d_v),
        UPCAST=INTERPRETED, PRECISION=_fp32_dot_precision(),
    )
    return out, lse


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(G, L) float32 sum over the last dim of a * b, for (G, L, d) inputs of any float dtype and
    strides, without float32 copies of them (FlashAttention's D = rowsum(dO * O))."""
    G, L, d = a.shape
    delta = torch.empty(G, L, dtype=torch.float32, device=a.device)
    block_rows = _block(L, 128)
    _row_dot_kernel[(G * triton.cdiv(L, block_rows),)](
        a, b, delta, *_strides(a), *_strides(b), L, d, BLOCK_M=block_rows, BLOCK_DV=_head_block(d),
    )
    return delta


def backward(grad, q, k, v, out, lse, scale: float, key_mask: Optional[torch.Tensor] = None):
    """-> dq, dk, dv (contiguous, the inputs' dtype). `out` is the tensor whose row-dot with grad
    enters dS (see the module docstring of kernels.py)."""
    check_inputs(q, k, v)
    (G, Lq, d_qk), Lk, d_v = q.shape, k.shape[1], v.shape[-1]
    lse = lse.to(torch.float32).contiguous()
    grad = grad.to(q.dtype)
    block_dqk, block_dv = _head_block(d_qk), _head_block(d_v)
    delta = row_dot(grad, out)
    mask, stride_mg, stride_mn, has_mask = _mask_arguments(key_mask, q)
    dq = torch.empty(G, Lq, d_qk, dtype=q.dtype, device=q.device)
    dk = torch.empty(G, Lk, d_qk, dtype=k.dtype, device=k.device)
    dv = torch.empty(G, Lk, d_v, dtype=v.dtype, device=v.device)
    shared = (
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad), stride_mg, stride_mn,
        Lq, Lk, d_qk, d_v, scale, scale * LOG2E.value,
    )
    block_m, block_n = _block(Lq, 64), _block(Lk, 64)
    sizes = dict(
        HAS_MASK=has_mask, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=block_dqk, BLOCK_DV=block_dv,
        UPCAST=INTERPRETED, PRECISION=_fp32_dot_precision(),
    )
    _backward_kv_kernel[(G * triton.cdiv(Lk, block_n),)](q, k, v, mask, grad, lse, delta, dk, dv, *shared, **sizes)
    _backward_q_kernel[(G * triton.cdiv(Lq, block_m),)](q, k, v, mask, grad, lse, delta, dq, *shared, **sizes)
    return dq, dk, dv


# Whether triton.jit ran under TRITON_INTERPRET=1 when this module was imported: then the kernels
# run on CPU tensors in Triton's (slow, numpy-based) interpreter, and on nothing else.
INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)
