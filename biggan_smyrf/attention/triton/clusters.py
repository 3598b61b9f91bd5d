"""Triton kernels for attention inside clusters (FlashAttention-2 style), forward and backward.

The "triton" kernel of `cluster_attention.py`: same interface, same numbers as the "chunked" kernel
up to rounding. SMYRF uses it for its hub round; its hashed rounds use `rounds.py`, which reads
through the sort permutation instead of gathered clusters; both build on `blocks.py`.
q: (G, Lq, d_qk), k: (G, Lk, d_qk), v: (G, Lk, d_v); every cluster g is independent. k, v and the
key mask may also hold G / P groups, each shared by P consecutive query groups (SMYRF's hub round:
one copy of the hub keys for all of a batch element's query runs); the kernels read group g's keys
at g // P, a runtime integer, so nothing is repeated or copied.

Cost: time O(G·Lq·Lk·(d_qk + d_v)): per (query block, key block) pair the forward does 2 dots
and one exp per score; the one-pass backward 5 dots (S, dP, dV, dK, dQ) and one exp per score
(2 in all), the two-kernel backward 7 dots (S and dP in both kernels) and two (3 in all). Memory
O(G·(Lq + Lk)·(d_qk + d_v)) for inputs, outputs and gradients plus O(G·Lq) for the logsumexp
and D, and O(G·Lq·d_qk) float32 for the one-pass backward's dQ. No score tensor exists
anywhere: scores live in registers, one block at a time.

Design, and why:
- Forward: one program per (block of queries, cluster) with an online softmax over key blocks
  (running max m, running sum l, rescaled fp32 accumulator), so a query block's scores never
  leave the chip. Writes out (input dtype) and lse = m + log(l) (fp32) for the backward and for
  SMYRF's round weights.
- Backward: a preprocess computes D = rowsum(dO ∘ out); then, chosen when the backward runs
  (`blocks.one_pass_backward`), one of two schemes. One pass (FlashAttention-2's): one program
  per (block of keys, cluster) loops over query blocks, accumulates dK and dV in registers and
  adds each query block's share of dQ to a zeroed float32 buffer with atomics -- P = exp(S - lse)
  and dP computed once, but the order of the dQ additions varies from run to run. Two kernels,
  in deterministic mode (`torch.use_deterministic_algorithms(True)`): the same dK/dV kernel
  without dQ, and another per (block of queries, cluster) that loops over key blocks for dQ;
  each output block has exactly one writer (no atomics, no float32 buffer, bit for bit
  repeatable), for P and dP computed twice. Either can add dQ into a caller's float32 buffer
  (the one pass's atomics start from its contents; the dQ kernel reads, adds and writes its own
  rows), so that a caller summing several attentions' gradients needs no copy or addition of its own.
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

from .blocks import (
    INTERPRETED, LOG2E, atomic_accumulate, check_inputs, cluster_and_block, dot, fp32_dot_precision,
    head_block, launch_sizes, one_pass_backward, online_softmax_result, online_softmax_step, row_dot,
)
from .launches import launch


def _mask_arguments(key_mask: Optional[torch.Tensor], like: torch.Tensor):
    """(pointer, stride_g, stride_n, has_mask). Bool is read as uint8 (a free view); without a
    mask any tensor stands in for the pointer, which the kernel then never touches."""
    if key_mask is None:
        return like, 0, 0, False
    mask = key_mask.view(torch.uint8)
    return mask, mask.stride(0), mask.stride(1), True


@triton.jit
def _tile(ptr, offs_r, offs_c, stride_r, stride_c, n_r, n_c: tl.constexpr):
    """The (rows, cols) tile of a strided matrix at `ptr`, zeros outside [0, n_r) x [0, n_c): the
    tails of a cluster and the head-dim padding (12 -> 16, 48 -> 64) live only in registers."""
    inside = (offs_r[:, None] < n_r) & (offs_c[None, :] < n_c)
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c, mask=inside, other=0.0)


@triton.jit
def _key_tiles(K, V, kg, offs_n, Lk, stride_kg, stride_kn, stride_kd, stride_vg, stride_vn, stride_vd,
               D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """k and v rows offs_n of key group kg."""
    k = _tile(K + kg * stride_kg, offs_n, tl.arange(0, BLOCK_DQK), stride_kn, stride_kd, Lk, D_QK)
    return k, _tile(V + kg * stride_vg, offs_n, tl.arange(0, BLOCK_DV), stride_vn, stride_vd, Lk, D_V)


@triton.jit
def _query_tiles(Q, DO, LSE, DELTA, g, offs_m, Lq, stride_qg, stride_qm, stride_qd, stride_dog, stride_dom, stride_dod,
                 D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """What the backwards read of query rows offs_m of group g: validity, q, dO, lse (log2 units)
    and delta. Rows past Lq load q = dO = 0 and lse = delta = 0: P is finite and dS = 0 there."""
    rows = offs_m < Lq
    q = _tile(Q + g * stride_qg, offs_m, tl.arange(0, BLOCK_DQK), stride_qm, stride_qd, Lq, D_QK)
    do = _tile(DO + g * stride_dog, offs_m, tl.arange(0, BLOCK_DV), stride_dom, stride_dod, Lq, D_V)
    lse_log2 = tl.load(LSE + g * Lq + offs_m, mask=rows, other=0.0) * LOG2E
    delta = tl.load(DELTA + g * Lq + offs_m, mask=rows, other=0.0)
    return rows, q, do, lse_log2, delta


@triton.jit
def _scores_log2(q, k, offs_n, Lk, mask_ptr, stride_mg, stride_mn, g, scale_log2,
                 HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) logits times log2(e), -inf for keys past Lk and masked keys."""
    s = dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2
    keep = offs_n < Lk
    if HAS_MASK:
        attend = tl.load(mask_ptr + g * stride_mg + offs_n * stride_mn, mask=keep, other=0)
        keep = keep & (attend != 0)
    return tl.where(keep[None, :], s, float("-inf"))


@triton.jit
def _forward_kernel(
    Q, K, V, MASK, OUT, LSE,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_og, stride_om, stride_od,
    stride_mg, stride_mn,
    Lq, Lk, parts, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    g, block = cluster_and_block(Lq, BLOCK_M)
    kg = g // parts  # the keys' group: `parts` consecutive query groups share one
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
        k, v = _key_tiles(K, V, kg, offs_n, Lk, stride_kg, stride_kn, stride_kd, stride_vg, stride_vn, stride_vd,
                          D_QK, D_V, BLOCK_DQK, BLOCK_DV)
        s = _scores_log2(q, k, offs_n, Lk, MASK, stride_mg, stride_mn, kg, scale_log2, HAS_MASK, UPCAST, PRECISION)
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v, UPCAST, PRECISION)
    out, lse_log2 = online_softmax_result(m_i, l_i, acc)
    lse = lse_log2 / LOG2E
    tl.store(
        OUT + g * stride_og + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od,
        out.to(OUT.dtype.element_ty), mask=rows[:, None] & (offs_dv[None, :] < D_V),
    )
    tl.store(LSE + g * Lq + offs_m, lse, mask=rows)


@triton.jit
def _probabilities(s, lse_log2):
    """P = exp2(s - lse·log2 e); rows with every key masked (lse = -inf) give 0, not NaN."""
    return tl.math.exp2(s - tl.where(lse_log2 == float("-inf"), 0.0, lse_log2)[:, None])


@triton.jit
def _backward_keys_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ_ACC, DK, DV,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_dog, stride_dom, stride_dod,
    stride_mg, stride_mn,
    Lq, Lk, parts, scale, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    WITH_DQ: tl.constexpr,
):
    """dV = Pᵀ dO and dK = scale · dSᵀ Q for one block of keys, over all query blocks, from one P and
    dS per score; DK and DV contiguous (G, Lk, d). WITH_DQ (the one-pass backward): also DQ_ACC
    (float32, contiguous (G, Lq, d_qk), zeroed or a caller's running sum) += scale · dS K, added
    atomically since every key block of the cluster adds to every query."""
    g, block = cluster_and_block(Lk, BLOCK_N)
    kg = g // parts  # the keys' group: `parts` consecutive query groups share one
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    cols = offs_n < Lk
    keep = cols
    if HAS_MASK:
        keep = keep & (tl.load(MASK + kg * stride_mg + offs_n * stride_mn, mask=cols, other=0) != 0)
    key_offset = tl.where(keep, 0.0, float("-inf"))  # added to the logits: -inf past Lk and on masked keys
    k, v = _key_tiles(K, V, kg, offs_n, Lk, stride_kg, stride_kn, stride_kd, stride_vg, stride_vn, stride_vd,
                      D_QK, D_V, BLOCK_DQK, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows, q, do, lse_log2, delta = _query_tiles(Q, DO, LSE, DELTA, g, offs_m, Lq, stride_qg, stride_qm, stride_qd,
                                                    stride_dog, stride_dom, stride_dod, D_QK, D_V, BLOCK_DQK, BLOCK_DV)
        # Key-major tiles, so that Pᵀ and dSᵀ feed the dV and dK dots as computed (why: rounds.py).
        s_t = dot(k, tl.trans(q), UPCAST, PRECISION) * scale_log2 + key_offset[:, None]
        p_t = tl.math.exp2(s_t - tl.where(lse_log2 == float("-inf"), 0.0, lse_log2)[None, :])
        dv += dot(p_t.to(do.dtype), do, UPCAST, PRECISION)
        ds_t = (p_t * (dot(v, tl.trans(do), UPCAST, PRECISION) - delta[None, :])).to(q.dtype)
        dk += dot(ds_t, q, UPCAST, PRECISION)
        if WITH_DQ:
            dq_ptrs = DQ_ACC + (g * Lq + offs_m[:, None]) * D_QK + offs_dqk[None, :]
            atomic_accumulate(dq_ptrs, dot(tl.trans(ds_t), k, UPCAST, PRECISION) * scale,
                              rows[:, None] & (offs_dqk[None, :] < D_QK))
    dk_ptrs = DK + (g * Lk + offs_n[:, None]) * D_QK + offs_dqk[None, :]
    tl.store(dk_ptrs, (dk * scale).to(DK.dtype.element_ty), mask=cols[:, None] & (offs_dqk[None, :] < D_QK))
    dv_ptrs = DV + (g * Lk + offs_n[:, None]) * D_V + offs_dv[None, :]
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=cols[:, None] & (offs_dv[None, :] < D_V))


@triton.jit
def _backward_q_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ,
    stride_qg, stride_qm, stride_qd,
    stride_kg, stride_kn, stride_kd,
    stride_vg, stride_vn, stride_vd,
    stride_dog, stride_dom, stride_dod,
    stride_mg, stride_mn,
    Lq, Lk, parts, scale, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    """dQ = scale · dS K for one block of queries, over all key blocks. DQ is contiguous (G, Lq, d_qk);
    ACCUMULATE adds to it (a caller's float32 buffer) instead: this program is the only one
    touching its rows, so a plain read-add-write keeps the sum bit for bit repeatable."""
    g, block = cluster_and_block(Lq, BLOCK_M)
    kg = g // parts  # the keys' group: `parts` consecutive query groups share one
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    rows, q, do, lse_log2, delta = _query_tiles(Q, DO, LSE, DELTA, g, offs_m, Lq, stride_qg, stride_qm, stride_qd,
                                                stride_dog, stride_dom, stride_dod, D_QK, D_V, BLOCK_DQK, BLOCK_DV)
    q_inside = rows[:, None] & (offs_dqk[None, :] < D_QK)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = _key_tiles(K, V, kg, offs_n, Lk, stride_kg, stride_kn, stride_kd, stride_vg, stride_vn, stride_vd,
                          D_QK, D_V, BLOCK_DQK, BLOCK_DV)
        s = _scores_log2(q, k, offs_n, Lk, MASK, stride_mg, stride_mn, kg, scale_log2, HAS_MASK, UPCAST, PRECISION)
        p = _probabilities(s, lse_log2)
        dp = dot(do, tl.trans(v), UPCAST, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, UPCAST, PRECISION)
    dq_ptrs = DQ + (g * Lq + offs_m[:, None]) * D_QK + offs_dqk[None, :]
    dq = dq * scale
    if ACCUMULATE:
        dq += tl.load(dq_ptrs, mask=q_inside, other=0.0)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=q_inside)


# (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages) per kernel, capped by the lengths: as the
# rounds' kernels (triton/rounds.py BLOCKS, chosen with `make gpu-preflight`). The one-pass backward
# holds dK, dV, P, dP and dS at once: 64 x 64 spills in TF32 and with 8 warps the compiler computes
# P twice, in two layouts; 32 x 64 at 4 warps does neither but holds 2 blocks per SM on Triton 3.6
# in TF32 (183-195 registers), 16 x 64 without pipelining stages 3 (120-139).
BLOCKS = {
    "forward": (64, 32, 4, 2), "backward_kv": (16, 64, 4, 1), "backward_q": (64, 32, 4, 2), "one pass": (16, 64, 4, 1),
}


def _strides(x: torch.Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def _groups(q, k, v, key_mask) -> int:
    """How many consecutive query groups share each key group (`parts`): q is (G, Lq, d), k, v
    and the mask (G / parts, Lk, ...)."""
    check_inputs(q, k, v)
    G, groups = q.shape[0], k.shape[0]
    if v.shape[0] != groups or groups == 0 or G % groups or (key_mask is not None and key_mask.shape[0] != groups):
        raise ValueError(f"query groups {G} must be a multiple of the key groups {groups} "
                         f"(values {v.shape[0]}, mask {None if key_mask is None else key_mask.shape[0]})")
    return G // groups


def forward(q, k, v, scale: float, key_mask: Optional[torch.Tensor] = None):
    """-> out (G, Lq, d_v) in q's dtype, lse (G, Lq) float32. k, v and key_mask may hold G / P
    groups, each shared by P consecutive query groups (the hub round: one copy of the hub keys for
    all of a batch element's query runs). One launch."""
    parts = _groups(q, k, v, key_mask)
    (G, Lq, d_qk), Lk, d_v = q.shape, k.shape[1], v.shape[-1]
    out = q.new_empty(G, Lq, d_v)
    lse = torch.empty(G, Lq, dtype=torch.float32, device=q.device)
    mask, stride_mg, stride_mn, has_mask = _mask_arguments(key_mask, q)
    sizes = launch_sizes(BLOCKS["forward"], Lq, Lk)
    launch(_forward_kernel, (G * triton.cdiv(Lq, sizes["BLOCK_M"]),))(
        q, k, v, mask, out, lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), stride_mg, stride_mn,
        Lq, Lk, parts, scale * LOG2E.value, D_QK=d_qk, D_V=d_v,
        HAS_MASK=has_mask, BLOCK_DQK=head_block(d_qk), BLOCK_DV=head_block(d_v),
        UPCAST=INTERPRETED, PRECISION=fp32_dot_precision(), **sizes,
    )
    return out, lse


def backward(grad, q, k, v, out, lse, scale: float, key_mask: Optional[torch.Tensor] = None,
             dq_acc: Optional[torch.Tensor] = None, key_grad_dtype: Optional[torch.dtype] = None):
    """-> dq, dk, dv (contiguous). `out` is the tensor whose row-dot with grad enters dS (see the
    module docstring of cluster_attention.py). k, v, key_mask may be shared by P query groups as in
    `forward`; dk and dv are then still per query group, (G, Lk, d): the caller sums over the P.

    dq_acc: a float32 contiguous (G, Lq, d_qk) buffer that dQ is added into (then dq is None)
    instead of returned in q's dtype. key_grad_dtype: dk's and dv's dtype (default the inputs').
    Launches: the row dot for D, then one kernel, or two in deterministic mode (`blocks.one_pass_backward`)."""
    parts = _groups(q, k, v, key_mask)
    (G, Lq, d_qk), Lk, d_v = q.shape, k.shape[1], v.shape[-1]
    if dq_acc is not None and (dq_acc.dtype != torch.float32 or dq_acc.shape != q.shape or not dq_acc.is_contiguous()):
        raise ValueError(f"dq_acc must be a contiguous float32 {tuple(q.shape)} tensor, got {dq_acc.dtype} {tuple(dq_acc.shape)}")
    lse = lse.to(torch.float32).contiguous()
    grad = grad.to(q.dtype)
    block_dqk, block_dv = head_block(d_qk), head_block(d_v)
    delta = row_dot(grad, out)
    mask, stride_mg, stride_mn, has_mask = _mask_arguments(key_mask, q)
    dk = torch.empty(G, Lk, d_qk, dtype=key_grad_dtype or k.dtype, device=k.device)
    dv = torch.empty(G, Lk, d_v, dtype=key_grad_dtype or v.dtype, device=v.device)
    shared = (
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad), stride_mg, stride_mn,
        Lq, Lk, parts, scale, scale * LOG2E.value,
    )
    constants = dict(
        D_QK=d_qk, D_V=d_v, HAS_MASK=has_mask, BLOCK_DQK=block_dqk, BLOCK_DV=block_dv,
        UPCAST=INTERPRETED, PRECISION=fp32_dot_precision(),
    )
    if one_pass_backward():
        sizes = launch_sizes(BLOCKS["one pass"], Lq, Lk)
        given = dq_acc is not None
        if not given:
            dq_acc = torch.zeros(G, Lq, d_qk, dtype=torch.float32, device=q.device)
        launch(_backward_keys_kernel, (G * triton.cdiv(Lk, sizes["BLOCK_N"]),))(
            q, k, v, mask, grad, lse, delta, dq_acc, dk, dv, *shared, **constants, **sizes, WITH_DQ=True,
        )
        return (None if given else dq_acc.to(q.dtype)), dk, dv
    dq = dq_acc if dq_acc is not None else torch.empty(G, Lq, d_qk, dtype=q.dtype, device=q.device)
    kv_sizes, q_sizes = launch_sizes(BLOCKS["backward_kv"], Lq, Lk), launch_sizes(BLOCKS["backward_q"], Lq, Lk)
    launch(_backward_keys_kernel, (G * triton.cdiv(Lk, kv_sizes["BLOCK_N"]),))(
        q, k, v, mask, grad, lse, delta, dk, dk, dv, *shared, **constants, **kv_sizes, WITH_DQ=False)
    launch(_backward_q_kernel, (G * triton.cdiv(Lq, q_sizes["BLOCK_M"]),))(
        q, k, v, mask, grad, lse, delta, dq, *shared, **constants, **q_sizes, ACCUMULATE=dq_acc is not None)
    return (None if dq_acc is not None else dq), dk, dv
