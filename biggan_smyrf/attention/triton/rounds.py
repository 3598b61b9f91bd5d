"""Triton kernels for SMYRF's hashed rounds, read through the sort permutation and combined in place.

The kernels of `cuda_route.py` (SMYRF's permuted route, the CUDA default). Unlike the cluster
kernels of `clusters.py`, which take gathered per-round copies (G, L, d) and return per-round
outputs, these read q, k, v in token order through each round's index lists and merge every
round's output straight into one token-order accumulator. Nothing of size (rounds x tokens x d)
exists: no sorted copies of q, k or v, no per-round outputs, no un-sorting.

Inputs, for B batch elements, H rounds, n_clusters clusters per round:
  q (B, N, d_qk), k (B, M', d_qk), v (B, M', d_v)   token order, feature dim contiguous; M' = the
        keys plus every round's summary keys appended after them (cuda_route.py builds this)
  bias (B, M') float32 or None   added to the logits: -1e4 on hub keys, -inf on padding, log(count)
        on summary keys
  q_order (B, H, N)   round r's cluster c is q_order[:, r, c*Cq:(c+1)*Cq] (token indices)
  k_index (B, H, n_clusters * Lk)   its keys, k_index[:, r, c*Lk:(c+1)*Lk] (indices into M')

Forward, one launch per round: each program computes its queries' round output o_r and
logsumexp lse_r (online softmax over the cluster's keys) and merges o_r into the queries' running
combination of the rounds so far in token order -- a running max and sum of the lse and an
accumulator rescaled like FlashAttention's across key blocks, here across rounds. The result is
the rounds weighted softmax_r(lse_r); lse (B, H, N) is kept for the backward and for the hub
round's share, which the caller adds (cuda_route.py).

The backward needs only the combined output's gradient g and D = rowsum(g * out) in token order:
with P~ = exp(S - norm_r) = w_r P_r,  dV_r = P~ᵀ g,  dS_r = P~ * (g vᵀ - D),  dQ_r = scale dS_r K,
dK_r = scale dS_rᵀ Q -- the FlashAttention-2 backward with dO_r = w_r g and the combined output in
D (which carries the gradient through the round weights, see smyrf.py).

The forward runs one launch per round, in a fixed order, each merging into the float32
token-order accumulators (out, and the running max and sum, which start at 0 in one fill): within a
round every query is in exactly one cluster, so each row has one writer. Two backwards,
`blocks.one_pass_backward` picks one when the backward runs:
- one pass, the default, ONE launch for every round (the round on the grid's second axis): one
  program per (round, cluster, key block) loops over the cluster's query blocks and computes P~
  and dS once per score for all three gradients (FlashAttention-2's backward). A key's dK and dV
  rows get one addition per round, a query's dQ rows one per key block of each of its clusters,
  from programs that run at once: all are float32 atomics, whose order, and with it the last bits
  of the gradients, varies from run to run. (dK/dV add once per program, dQ once per query block
  visited: the dQ atomics are the many.)
- two kernels per round, the rounds in a fixed order, under `torch.use_deterministic_algorithms(True)`
  (`--trainer.deterministic true`): the same dK/dV pass without dQ, then one program per
  (cluster, query block) that recomputes P~ and dS over the cluster's keys for dQ alone. Every row
  has one writer per launch and no atomics: bit for bit repeatable.

Cost per round, per (query block, key block) pair, at d_qk padded to 16 and d_v to 64 in
registers: the forward does 2 dots (S, P~V) and one exp per score; the one-pass backward 5 dots
(S, dP, dV, dK, dQ) and one exp per score, 2 exps per score forward + backward; the two-kernel
backward 7 dots (S and dP in both kernels) and 2 exps per score, 3 in all. Time
O(H N Lk (d_qk + d_v)); memory O(B (N + M') (d_qk + d_v)) in float32 accumulators, O(B H N) for
lse and norm.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..config import SmyrfSizes
from ..cluster_attention import pad_features
from .blocks import (
    INTERPRETED, LOG2E, atomic_accumulate, check_inputs, dot, fp32_dot_precision, head_block, launch_sizes,
    one_pass_backward, online_softmax_result, online_softmax_step,
)
from .launches import launch


@triton.jit
def _batch_cluster_block(n_clusters, length, BLOCK: tl.constexpr):
    """(batch, cluster, block) of this program in a flat grid, a cluster's blocks consecutive.
    batch and cluster are int64 so that offsets built from them cannot overflow."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(length, BLOCK)
    bc = (pid // n_blocks).to(tl.int64)
    return bc // n_clusters, bc % n_clusters, pid % n_blocks


@triton.jit
def _gathered_rows(ptr, index, valid, stride_row, n_cols: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows `index` of a row-major matrix (feature stride 1), zeros for invalid rows and for the
    padding columns n_cols..BLOCK_D (48 -> 64 only in registers). n_cols is a compile-time
    constant so that the mask is constant over whole vectors: rows load in 16-byte pieces."""
    offs_d = tl.arange(0, BLOCK_D)
    inside = valid[:, None] & (offs_d[None, :] < n_cols)
    return tl.load(ptr + index[:, None] * stride_row + offs_d[None, :], mask=inside, other=0.0)


@triton.jit
def _add_rows(ptr, index, valid, stride_row, n_cols: tl.constexpr, value, BLOCK_D: tl.constexpr):
    """ptr[index] += value for a float32 row-major accumulator (one writer per row, see above)."""
    offs_d = tl.arange(0, BLOCK_D)
    inside = valid[:, None] & (offs_d[None, :] < n_cols)
    ptrs = ptr + index[:, None] * stride_row + offs_d[None, :]
    tl.store(ptrs, tl.load(ptrs, mask=inside, other=0.0) + value, mask=inside)


@triton.jit
def _accumulate_rows(ptr, index, valid, stride_row, n_cols: tl.constexpr, value, BLOCK_D: tl.constexpr):
    """ptr[index] += value for a float32 row-major accumulator that other programs add to at once."""
    offs_d = tl.arange(0, BLOCK_D)
    atomic_accumulate(ptr + index[:, None] * stride_row + offs_d[None, :], value,
                      valid[:, None] & (offs_d[None, :] < n_cols))


@triton.jit
def _queries(QIDX, Q, b, c, offs_m, Cq, stride_qib, stride_qb, stride_qn, BLOCK_DQK: tl.constexpr):
    """Token indices, validity and q rows (stored padded to BLOCK_DQK) of query positions offs_m of cluster c."""
    rows = offs_m < Cq
    tok = tl.load(QIDX + b * stride_qib + c * Cq + offs_m, mask=rows, other=0)
    return tok, rows, _gathered_rows(Q + b * stride_qb, tok, rows, stride_qn, BLOCK_DQK, BLOCK_DQK)


@triton.jit
def _keys(KIDX, K, b, c, offs_n, Lk, stride_kib, stride_kb, stride_kn, BLOCK_DQK: tl.constexpr):
    """Key indices, validity and k rows (stored padded to BLOCK_DQK) of key positions offs_n of cluster c."""
    cols = offs_n < Lk
    kid = tl.load(KIDX + b * stride_kib + c * Lk + offs_n, mask=cols, other=0)
    return kid, cols, _gathered_rows(K + b * stride_kb, kid, cols, stride_kn, BLOCK_DQK, BLOCK_DQK)


@triton.jit
def _logits_log2(q, k, kid, cols, BIAS, b, stride_bias_b, scale_log2,
                 HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) logits (scale q.k + bias) times log2(e); -inf past the cluster's keys."""
    s = dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2
    if HAS_BIAS:
        bias = tl.load(BIAS + b * stride_bias_b + kid, mask=cols, other=float("-inf"))
        s = s + bias[None, :] * LOG2E
    return tl.where(cols[None, :], s, float("-inf"))


@triton.jit
def _forward_kernel(
    Q, K, V, BIAS, QIDX, KIDX, LSE, OUT_ACC, RUN_MAX, RUN_SUM,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b,
    stride_qib, stride_kib, stride_lb, stride_ob, stride_on, stride_rb,
    n_clusters, Cq, Lk, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One round, one block of a cluster's queries: this round's output o_r and logsumexp lse_r
    (online softmax over the cluster's keys), then o_r merged into the queries' running combination
    of the rounds so far -- RUN_MAX (max lse so far), RUN_SUM (sum of exp(lse - max)) and OUT_ACC
    (sum of exp(lse - max) o) -- FlashAttention's rescaling, across rounds instead of key blocks.
    LSE (token order) keeps lse_r for the backward."""
    b, c, block = _batch_cluster_block(n_clusters, Cq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    tok, rows, q = _queries(QIDX, Q, b, c, offs_m, Cq, stride_qib, stride_qb, stride_qn, BLOCK_DQK)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kid, cols, k = _keys(KIDX, K, b, c, offs_n, Lk, stride_kib, stride_kb, stride_kn, BLOCK_DQK)
        v = _gathered_rows(V + b * stride_vb, kid, cols, stride_vn, D_V, BLOCK_DV)
        s = _logits_log2(q, k, kid, cols, BIAS, b, stride_bias_b, scale_log2, HAS_BIAS, UPCAST, PRECISION)
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, v, UPCAST, PRECISION)
    # This round's o_r and lse_r (base 2 here, base e in LSE); a cluster of masked keys only gives
    # o_r = 0 and lse_r = -inf, which the merge below gives weight 0.
    o, lse = online_softmax_result(m_i, l_i, acc)
    tl.store(LSE + b * stride_lb + tok, lse / LOG2E, mask=rows)
    # Merge: rescale the rounds so far to the new max (base 2 in registers, base e in RUN_MAX).
    # RUN_MAX and RUN_SUM start at 0 (one fill for both): until a round has seen a key, run_sum is
    # 0 (after one, at least e^0 = 1 from the largest lse), and the max so far is -inf.
    run_sum = tl.load(RUN_SUM + b * stride_rb + tok, mask=rows, other=0.0)
    run_max = tl.load(RUN_MAX + b * stride_rb + tok, mask=rows, other=0.0) * LOG2E
    run_max = tl.where(run_sum == 0.0, float("-inf"), run_max)
    new_max = tl.maximum(run_max, lse)
    new_safe = tl.where(new_max == float("-inf"), 0.0, new_max)
    keep, add = tl.math.exp2(run_max - new_safe), tl.math.exp2(lse - new_safe)
    tl.store(RUN_MAX + b * stride_rb + tok, new_max / LOG2E, mask=rows)
    tl.store(RUN_SUM + b * stride_rb + tok, run_sum * keep + add, mask=rows)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = rows[:, None] & (offs_dv[None, :] < D_V)
    ptrs = OUT_ACC + b * stride_ob + tok[:, None] * stride_on + offs_dv[None, :]
    previous = tl.load(ptrs, mask=inside, other=0.0)
    tl.store(ptrs, previous * keep[:, None] + o * add[:, None], mask=inside)


@triton.jit
def _backward_kv_kernel(
    Q, K, V, BIAS, QIDX, KIDX, NORM, GRAD, DELTA, DK_ACC, DV_ACC,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b,
    stride_qib, stride_kib, stride_lb, stride_db, stride_gb, stride_gn, stride_dkb, stride_dvb,
    n_clusters, Cq, Lk, scale, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One round, one block of a cluster's keys, over the cluster's queries: DK_ACC += scale dSᵀ Q and
    DV_ACC += P~ᵀ g (float32, token order of the keys; DK_ACC/DV_ACC rows have d_qk / d_v columns)."""
    b, c, block = _batch_cluster_block(n_clusters, Lk, BLOCK_N)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    kid, cols, k = _keys(KIDX, K, b, c, offs_n, Lk, stride_kib, stride_kb, stride_kn, BLOCK_DQK)
    v = _gathered_rows(V + b * stride_vb, kid, cols, stride_vn, D_V, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, Cq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        tok, rows, q = _queries(QIDX, Q, b, c, offs_m, Cq, stride_qib, stride_qb, stride_qn, BLOCK_DQK)
        g = _gathered_rows(GRAD + b * stride_gb, tok, rows, stride_gn, D_V, BLOCK_DV)
        # Rows past the cluster: norm = +inf gives P~ = 0, so they add nothing.
        norm_log2 = tl.load(NORM + b * stride_lb + tok, mask=rows, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + b * stride_db + tok, mask=rows, other=0.0)
        s = _logits_log2(q, k, kid, cols, BIAS, b, stride_bias_b, scale_log2, HAS_BIAS, UPCAST, PRECISION)
        p = tl.math.exp2(s - norm_log2[:, None])
        dv += dot(tl.trans(p.to(g.dtype)), g, UPCAST, PRECISION)
        ds = p * (dot(g, tl.trans(v), UPCAST, PRECISION) - delta[:, None])
        dk += dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PRECISION)
    _add_rows(DK_ACC + b * stride_dkb, kid, cols, D_QK, D_QK, dk * scale, BLOCK_DQK)
    _add_rows(DV_ACC + b * stride_dvb, kid, cols, D_V, D_V, dv, BLOCK_DV)


@triton.jit
def _backward_q_kernel(
    Q, K, V, BIAS, QIDX, KIDX, NORM, GRAD, DELTA, DQ_ACC,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b,
    stride_qib, stride_kib, stride_lb, stride_db, stride_gb, stride_gn, stride_dqb,
    n_clusters, Cq, Lk, scale, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """One round, one block of a cluster's queries, over the cluster's keys: DQ_ACC += scale dS K."""
    b, c, block = _batch_cluster_block(n_clusters, Cq, BLOCK_M)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    tok, rows, q = _queries(QIDX, Q, b, c, offs_m, Cq, stride_qib, stride_qb, stride_qn, BLOCK_DQK)
    g = _gathered_rows(GRAD + b * stride_gb, tok, rows, stride_gn, D_V, BLOCK_DV)
    norm_log2 = tl.load(NORM + b * stride_lb + tok, mask=rows, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + b * stride_db + tok, mask=rows, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kid, cols, k = _keys(KIDX, K, b, c, offs_n, Lk, stride_kib, stride_kb, stride_kn, BLOCK_DQK)
        v = _gathered_rows(V + b * stride_vb, kid, cols, stride_vn, D_V, BLOCK_DV)
        s = _logits_log2(q, k, kid, cols, BIAS, b, stride_bias_b, scale_log2, HAS_BIAS, UPCAST, PRECISION)
        p = tl.math.exp2(s - norm_log2[:, None])
        ds = p * (dot(g, tl.trans(v), UPCAST, PRECISION) - delta[:, None])
        dq += dot(ds.to(k.dtype), k, UPCAST, PRECISION)
    _add_rows(DQ_ACC + b * stride_dqb, tok, rows, D_QK, D_QK, dq * scale, BLOCK_DQK)


@triton.jit
def _backward_one_pass_kernel(
    Q, K, V, BIAS, QIDX, KIDX, NORM, GRAD, DELTA, DQ_ACC, DK_ACC, DV_ACC,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b,
    stride_qib, stride_kib, stride_lb, stride_db, stride_gb, stride_gn, stride_dqb, stride_dkb, stride_dvb,
    stride_qir, stride_kir, stride_lr,
    n_clusters, Cq, Lk, scale, scale_log2, D_QK: tl.constexpr, D_V: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Round program_id(1), one block of a cluster's keys, over the cluster's queries: all three
    gradients from one P~ and dS per score. Every round runs in this one launch, so a key's rows
    get additions from one program per round and a query's from every key block of its clusters:
    DQ_ACC, DK_ACC and DV_ACC are all added to atomically."""
    r = tl.program_id(1)
    QIDX += r * stride_qir
    KIDX += r * stride_kir
    NORM += r * stride_lr
    b, c, block = _batch_cluster_block(n_clusters, Lk, BLOCK_N)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dqk = tl.arange(0, BLOCK_DQK)
    kid, cols, k = _keys(KIDX, K, b, c, offs_n, Lk, stride_kib, stride_kb, stride_kn, BLOCK_DQK)
    v = _gathered_rows(V + b * stride_vb, kid, cols, stride_vn, D_V, BLOCK_DV)
    # The keys' logit offsets (log2 units): their bias, -inf past the cluster's keys.
    key_offset = tl.where(cols, 0.0, float("-inf"))
    if HAS_BIAS:
        key_offset += tl.load(BIAS + b * stride_bias_b + kid, mask=cols, other=0.0) * LOG2E
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start_m in range(0, Cq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        tok, rows, q = _queries(QIDX, Q, b, c, offs_m, Cq, stride_qib, stride_qb, stride_qn, BLOCK_DQK)
        g = _gathered_rows(GRAD + b * stride_gb, tok, rows, stride_gn, D_V, BLOCK_DV)
        # Rows past the cluster: norm = +inf gives P~ = 0, so they add nothing (and write nothing).
        norm_log2 = tl.load(NORM + b * stride_lb + tok, mask=rows, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + b * stride_db + tok, mask=rows, other=0.0)
        # Key-major (BLOCK_N, BLOCK_M) tiles, so that P~ᵀ and dSᵀ feed the dV and dK dots as they are
        # computed: query-major, the compiler computes P~ again in the transposed layout at some block
        # shapes (2 exp2 per score in the sm_90 SASS at 32 x 64), which this kernel exists to avoid.
        s_t = dot(k, tl.trans(q), UPCAST, PRECISION) * scale_log2 + key_offset[:, None]
        p_t = tl.math.exp2(s_t - norm_log2[None, :])
        dv += dot(p_t.to(g.dtype), g, UPCAST, PRECISION)
        ds_t = (p_t * (dot(v, tl.trans(g), UPCAST, PRECISION) - delta[None, :])).to(q.dtype)
        dk += dot(ds_t, q, UPCAST, PRECISION)
        dq = dot(tl.trans(ds_t), k, UPCAST, PRECISION) * scale
        dq_ptrs = DQ_ACC + b * stride_dqb + tok[:, None] * D_QK + offs_dqk[None, :]
        atomic_accumulate(dq_ptrs, dq, rows[:, None] & (offs_dqk[None, :] < D_QK))
    _accumulate_rows(DK_ACC + b * stride_dkb, kid, cols, D_QK, D_QK, dk * scale, BLOCK_DQK)
    _accumulate_rows(DV_ACC + b * stride_dvb, kid, cols, D_V, D_V, dv, BLOCK_DV)


# --- host side ---------------------------------------------------------------------------------

# (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages) per kernel, capped by the cluster sizes
# (min 16). Chosen with `make gpu-preflight` (the device's Triton 3.6, sm_90): shapes that keep >= 3
# blocks or >= 12 warps resident per SM without spills in bf16, fp16 and TF32 -- FlashAttention-2's
# 128 x 64 at 4 warps needs 221-255 registers there (2 blocks per SM) and spills in the forward; the
# dK/dV kernel's gathered loads are hidden by its 16 warps without pipelining stages. Not yet timed on
# a GPU: benchmarks/tune_rounds.py times the alternatives. "backward_kv"/"backward_q" are the
# two-kernel backward (deterministic mode), "one pass" the default one. That one holds dK, dV, P~, dP
# and dS at once: 64 x 64 blocks spill at 4 warps and at 8 the compiler computes P~ twice, in two
# layouts (2 exp2 per score); 32 x 64 at 4 warps does neither but needs 172-189 registers on Triton
# 3.6 (2 blocks per SM), 16 x 64 without pipelining stages 138.
BLOCKS = {
    "forward": (64, 32, 4, 2), "backward_kv": (32, 64, 8, 1), "backward_q": (64, 32, 4, 2), "one pass": (16, 64, 4, 1),
}


class Rounds:
    """One SMYRF call's hashed rounds as the kernels see them: inputs, index lists and sizes.

    q (B, N, d_qk), k (B, M', d_qk), v (B, M', d_v): feature dim contiguous; bias (B, M') float32 or
    None; q_order (B, H, N) and k_index (B, H, n_clusters * Lk) int64; `sizes` the call's resolved
    sizes (Cq = q_cluster_size, Lk = keys_per_cluster: a cluster's keys and summary keys).
    q and k are kept padded to BLOCK_DQK features (12 -> 16, a copy unless the caller padded them):
    32-byte rows in bf16, which load in 16-byte vectors, where 24-byte rows load in 2-byte pieces.
    """

    def __init__(self, q, k, v, bias: Optional[torch.Tensor], q_order, k_index, sizes: SmyrfSizes, scale: float):
        check_inputs(q, k, v)
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.stride(-1) != 1:
                raise ValueError(f"the permuted SMYRF kernels read rows with feature stride 1; pass {name}.contiguous()")
        if bias is not None and (bias.dtype != torch.float32 or bias.stride(-1) != 1):
            raise ValueError("the logit bias must be a float32 (B, keys) tensor with contiguous keys")
        (self.B, self.N, self.d_qk), self.d_v = q.shape, v.shape[-1]
        block_dqk = head_block(self.d_qk)
        q, k = pad_features(q, block_dqk), pad_features(k, block_dqk)
        self.H, self.Cq, self.n_clusters, self.Lk = sizes.n_hashes, sizes.q_cluster_size, sizes.n_clusters, sizes.keys_per_cluster
        self.q, self.k, self.v, self.bias = q, k, v, bias
        self.q_order, self.k_index, self.scale = q_order, k_index, scale
        self.constants = dict(
            HAS_BIAS=bias is not None, D_QK=self.d_qk, D_V=self.d_v, BLOCK_DQK=block_dqk, BLOCK_DV=head_block(self.d_v),
            UPCAST=INTERPRETED, PRECISION=fp32_dot_precision(),
        )

    def _inputs(self, r: int):
        """Pointers and strides shared by every kernel for round r (index lists of that round)."""
        q, k, v, qi, ki = self.q, self.k, self.v, self.q_order[:, r], self.k_index[:, r]
        bias = self.bias if self.bias is not None else q  # a stand-in pointer, never read without HAS_BIAS
        return (
            (q, k, v, bias, qi, ki),
            (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
             0 if self.bias is None else self.bias.stride(0), qi.stride(0), ki.stride(0)),
        )

    def _sizes(self, kernel: str) -> dict:
        """The kernel's block sizes and launch options, with the constants every kernel takes."""
        return dict(launch_sizes(BLOCKS[kernel], self.Cq, self.Lk), **self.constants)

    def _grid(self, length: int, block: int):
        return (self.B * self.n_clusters * triton.cdiv(length, block),)

    def forward(self, normalise: bool = True):
        """-> (o, lse): o (B, N, d_v) float32, the rounds combined with weights softmax_r(lse_r), and
        every round's logsumexp lse (B, H, N) float32 in token order (-inf where a query's cluster
        held only masked keys; o is 0 where every round's was). normalise=False: (o's numerator
        sum_r e^(lse_r - max) o_r, its divisor (B, N), lse), for a caller that divides as it
        combines (`combine.combine_rounds`)."""
        B, N, device = self.B, self.N, self.q.device
        lse = torch.empty(B, self.H, N, dtype=torch.float32, device=device)
        out = torch.zeros(B, N, self.d_v, dtype=torch.float32, device=device)
        run_max, run_sum = torch.zeros(2, B, N, dtype=torch.float32, device=device).unbind()
        sizes = self._sizes("forward")
        for r in range(self.H):
            pointers, strides = self._inputs(r)
            lse_r = lse[:, r]
            launch(_forward_kernel, self._grid(self.Cq, sizes["BLOCK_M"]))(
                *pointers, lse_r, out, run_max, run_sum, *strides, lse_r.stride(0), out.stride(0), out.stride(1),
                run_max.stride(0), self.n_clusters, self.Cq, self.Lk, self.scale * LOG2E.value, **sizes,
            )
        if not normalise:
            return out, run_sum, lse
        # run_sum is 0 only where every round's output is 0: any positive divisor keeps it 0.
        return out.div_(run_sum.clamp_min_(torch.finfo(torch.float32).tiny)[..., None]), lse

    def backward(self, grad: torch.Tensor, norm: torch.Tensor, delta: torch.Tensor, into=None):
        """-> dq (B, N, d_qk), dk (B, M', d_qk), dv (B, M', d_v), float32. grad (B, N, d_v) in the
        inputs' dtype, norm (B, H, N) and delta = rowsum(grad * out) (B, N), float32. One kernel
        per round, or two in deterministic mode (`blocks.one_pass_backward`, see the module docstring).
        into: float32 (dq, dk, dv) accumulators of those shapes (rows contiguous) to add to, instead
        of zeroed new ones."""
        grad = grad.to(self.q.dtype).contiguous()
        delta = delta.to(torch.float32).contiguous()
        device = self.q.device
        if into is None:
            into = (torch.zeros(self.B, self.N, self.d_qk, dtype=torch.float32, device=device),
                    torch.zeros(self.B, self.k.shape[1], self.d_qk, dtype=torch.float32, device=device),
                    torch.zeros(*self.v.shape, dtype=torch.float32, device=device))
        dq, dk, dv = into
        lengths = (self.n_clusters, self.Cq, self.Lk, self.scale, self.scale * LOG2E.value)
        if one_pass_backward():  # every round in one launch, the round on the grid's second axis
            sizes = self._sizes("one pass")
            pointers, strides = self._inputs(0)
            launch(_backward_one_pass_kernel, (*self._grid(self.Lk, sizes["BLOCK_N"]), self.H))(
                *pointers, norm[:, 0], grad, delta, dq, dk, dv, *strides, norm.stride(0), delta.stride(0),
                grad.stride(0), grad.stride(1), dq.stride(0), dk.stride(0), dv.stride(0),
                self.q_order.stride(1), self.k_index.stride(1), norm.stride(1), *lengths, **sizes,
            )
            return dq, dk, dv
        kv_sizes, q_sizes = self._sizes("backward_kv"), self._sizes("backward_q")
        for r in range(self.H):
            pointers, strides = self._inputs(r)
            norm_r = norm[:, r]
            shared = (*strides, norm_r.stride(0), delta.stride(0), grad.stride(0), grad.stride(1))
            launch(_backward_kv_kernel, self._grid(self.Lk, kv_sizes["BLOCK_N"]))(
                *pointers, norm_r, grad, delta, dk, dv, *shared, dk.stride(0), dv.stride(0), *lengths, **kv_sizes,
            )
            launch(_backward_q_kernel, self._grid(self.Cq, q_sizes["BLOCK_M"]))(
                *pointers, norm_r, grad, delta, dq, *shared, dq.stride(0), *lengths, **q_sizes,
            )
        return dq, dk, dv

