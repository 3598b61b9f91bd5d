"""SMYRF's summary keys on the CUDA route: their rows written by Triton kernels, and their gradients
folded back into the keys, two launches each.

The maths is `summaries.py`'s: in round r the keys sorted by k_order[:, r] are cut into
S = n_summaries equal blocks, and cluster c (k_cluster_size consecutive sorted keys) gets, for each
block s, the mean key and value over the block's keys outside c with weight w = 1, and the logit
offset log(count) (HUB_MASK_LOGIT where count is 0). Here w = (bias == 0): the logit bias the
rounds read anyway (0 for an ordinary key, HUB_MASK_LOGIT for a hub key, -inf for padding), so no
weight tensor exists.

Layout, for B batch elements, H rounds, C = n_clusters, M keys: k_ext (B, M', DQ), v_ext (B, M', d_v),
bias_ext (B, M') float32 with M' = M + H C S; rows [0, M) are the keys in token order, row
M + ((r C + c) S + s) is the summary key of (round r, cluster c, block s).

A block and a cluster are runs of sorted positions, so block s meets the consecutive clusters
c_first(s) = s * block // k_cluster_size, ..., at most J of them (J = `cells_per_block`). Their
intersections, the cells (s, j) with cluster c_first(s) + j, are what both directions work in:
- forward: one program per (b, r, s, j) sums the weighted features of its cell into a float32
  scratch (B, H, S, J, DQ + d_v + 1); then one program per (b, r, s, tile of clusters) adds, for
  each cluster, the block's cells other than its own -- a sum without the cancellation of
  "block minus own", so counts are exact and an empty block is exactly 0 -- and writes the means
  and offsets.
- backward (counts are constants, the offsets carry no gradient): a key at sorted position p of
  round r, in block s and cluster c0, receives sum over c != c0 of g[r, c, s] / count[r, c, s].
  One program per (b, r, s) takes T = sum_c g / count over all clusters and writes each cell's
  T - g[c_first + j] / count[c_first + j] into a scratch, and the round's inverse order for the
  block's positions; then one program per (b, block of keys) loops over the rounds, reads each
  key's cell through the inverse order, and adds the sum to its dk and dv rows. One writer per
  row and a fixed order of additions: no atomics, the same bits on every run. This needs k_order
  to be a permutation of [0, M) in every round, which a sort order is.

Counts in the backward are read back from bias_ext's summary rows, round(exp(log(count))): exact
for the counts a block can hold (float32's log and exp are off by far less than 0.5 below 2^20).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..config import SmyrfSizes
from ..summaries import HUB_MASK_LOGIT
from .launches import launch

BLOCK_KEYS = 64  # sorted positions per step in the cell sums, keys per program in the fold
BLOCK_CLUSTERS = 16  # clusters per step when writing summary rows or summing their gradients


@functools.cache
def cells_per_block(n_keys: int, n_summaries: int, k_cluster_size: int) -> int:
    """The most clusters one block of sorted keys meets (J): 1 when the blocks tile the clusters."""
    block = n_keys // n_summaries
    return max((s * block + block - 1) // k_cluster_size - s * block // k_cluster_size + 1
               for s in range(n_summaries))


@triton.jit
def _cell_sums_kernel(K, V, BIAS, ORDER, CELLS, H, S, J, block, k_cluster_size,
                      stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b, stride_ob, stride_or,
                      D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """One cell (b, r, s, j): the sums of w k, w v and w over the sorted positions of block s in
    cluster c_first(s) + j (none past the block's last cluster: zeros), into CELLS' row."""
    pid = tl.program_id(0).to(tl.int64)
    j = pid % J
    s = pid // J % S
    r = pid // (J * S) % H
    b = pid // (J * S * H)
    block_start = s * block
    c = block_start // k_cluster_size + j
    lo = tl.maximum(block_start, c * k_cluster_size)
    hi = tl.minimum(block_start + block, (c + 1) * k_cluster_size)
    offs_p = tl.arange(0, BLOCK_K)
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc_k = tl.zeros((BLOCK_DQ,), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_DV,), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(lo, hi, BLOCK_K):
        pos = start + offs_p
        inside = pos < hi
        key = tl.load(ORDER + b * stride_ob + r * stride_or + pos, mask=inside, other=0).to(tl.int64)
        bias = tl.load(BIAS + b * stride_bias_b + key, mask=inside, other=float("-inf"))
        counted = inside & (bias == 0.0)
        k = tl.load(K + b * stride_kb + key[:, None] * stride_kn + offs_dq[None, :],
                    mask=counted[:, None] & (offs_dq[None, :] < D_QK), other=0.0)
        v = tl.load(V + b * stride_vb + key[:, None] * stride_vn + offs_dv[None, :],
                    mask=counted[:, None] & (offs_dv[None, :] < D_V), other=0.0)
        acc_k += tl.sum(k.to(tl.float32), axis=0)
        acc_v += tl.sum(v.to(tl.float32), axis=0)
        acc_w += counted.to(tl.float32)
    cell = CELLS + pid * (D_QK + D_V + 1)
    tl.store(cell + offs_dq, acc_k, mask=offs_dq < D_QK)
    tl.store(cell + D_QK + offs_dv, acc_v, mask=offs_dv < D_V)
    tl.store(cell + D_QK + D_V, tl.sum(acc_w, axis=0))


@triton.jit
def _summary_rows_kernel(K, V, BIAS, CELLS, M, H, S, J, C, block, k_cluster_size,
                         stride_kb, stride_kn, stride_vb, stride_vn, stride_bias_b,
                         D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                         BLOCK_C: tl.constexpr, MASK_LOGIT: tl.constexpr):
    """Rows (r, c, s) of a tile of clusters c: the block's cells other than c's own, as means and
    log(count)."""
    pid = tl.program_id(0).to(tl.int64)
    n_tiles = tl.cdiv(C, BLOCK_C)
    tile = pid % n_tiles
    s = pid // n_tiles % S
    r = pid // (n_tiles * S) % H
    b = pid // (n_tiles * S * H)
    c = tile * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = c < C
    c_first = s * block // k_cluster_size
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc_k = tl.zeros((BLOCK_C, BLOCK_DQ), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_C, BLOCK_DV), dtype=tl.float32)
    count = tl.zeros((BLOCK_C,), dtype=tl.float32)
    cells = CELLS + ((b * H + r) * S + s) * J * (D_QK + D_V + 1)
    for j in range(J):
        cell = cells + j * (D_QK + D_V + 1)
        other = (c != c_first + j)[:, None]
        acc_k += tl.where(other, tl.load(cell + offs_dq, mask=offs_dq < D_QK, other=0.0)[None, :], 0.0)
        acc_v += tl.where(other, tl.load(cell + D_QK + offs_dv, mask=offs_dv < D_V, other=0.0)[None, :], 0.0)
        count += tl.where(c != c_first + j, tl.load(cell + D_QK + D_V), 0.0)
    divisor = tl.maximum(count, 1.0)[:, None]
    row = M + (r * C + c) * S + s
    tl.store(K + b * stride_kb + row[:, None] * stride_kn + offs_dq[None, :],
             (acc_k / divisor).to(K.dtype.element_ty), mask=rows[:, None] & (offs_dq[None, :] < D_QK))
    tl.store(V + b * stride_vb + row[:, None] * stride_vn + offs_dv[None, :],
             (acc_v / divisor).to(V.dtype.element_ty), mask=rows[:, None] & (offs_dv[None, :] < D_V))
    offset = tl.where(count > 0, tl.log(tl.maximum(count, 1.0)), MASK_LOGIT)
    tl.store(BIAS + b * stride_bias_b + row, offset, mask=rows)


@triton.jit
def _cell_grads_kernel(DK, DV, BIAS, ORDER, CELLS, INVERSE, M, H, S, J, C, block, k_cluster_size,
                       stride_dkb, stride_dkn, stride_dvb, stride_dvn, stride_bias_b, stride_ob, stride_or,
                       stride_ib, stride_ir,
                       D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """Block (b, r, s): each cell's gradient per key, sum over clusters c other than the cell's of
    g[r, c, s] / count[r, c, s], into CELLS; and the round's inverse order for the block's positions."""
    pid = tl.program_id(0).to(tl.int64)
    s = pid % S
    r = pid // S % H
    b = pid // (S * H)
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    dk_rows = DK + b * stride_dkb
    dv_rows = DV + b * stride_dvb
    first_row = M + r * C * S + s  # row of (r, 0, s); cluster c's is S rows further per c
    total_k = tl.zeros((BLOCK_DQ,), dtype=tl.float32)
    total_v = tl.zeros((BLOCK_DV,), dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        rows = c < C
        row = first_row + c * S
        offset = tl.load(BIAS + b * stride_bias_b + row, mask=rows, other=float("-inf"))
        count = tl.floor(tl.exp(offset) + 0.5)
        share = tl.where(count > 0, 1.0 / tl.maximum(count, 1.0), 0.0)[:, None]
        g_k = tl.load(dk_rows + row[:, None] * stride_dkn + offs_dq[None, :],
                      mask=rows[:, None] & (offs_dq[None, :] < D_QK), other=0.0)
        g_v = tl.load(dv_rows + row[:, None] * stride_dvn + offs_dv[None, :],
                      mask=rows[:, None] & (offs_dv[None, :] < D_V), other=0.0)
        total_k += tl.sum(g_k * share, axis=0)
        total_v += tl.sum(g_v * share, axis=0)
    c_first = s * block // k_cluster_size
    for j in range(J):
        c = c_first + j
        inside = c < C
        row = first_row + c * S
        offset = tl.load(BIAS + b * stride_bias_b + row, mask=inside, other=float("-inf"))
        count = tl.floor(tl.exp(offset) + 0.5)
        share = tl.where(count > 0, 1.0 / tl.maximum(count, 1.0), 0.0)
        g_k = tl.load(dk_rows + row * stride_dkn + offs_dq, mask=inside & (offs_dq < D_QK), other=0.0)
        g_v = tl.load(dv_rows + row * stride_dvn + offs_dv, mask=inside & (offs_dv < D_V), other=0.0)
        cell = CELLS + (pid * J + j) * (D_QK + D_V)
        tl.store(cell + offs_dq, total_k - g_k * share, mask=offs_dq < D_QK)
        tl.store(cell + D_QK + offs_dv, total_v - g_v * share, mask=offs_dv < D_V)
    offs_p = tl.arange(0, BLOCK_K)
    for start in range(s * block, s * block + block, BLOCK_K):
        pos = start + offs_p
        inside = pos < s * block + block
        key = tl.load(ORDER + b * stride_ob + r * stride_or + pos, mask=inside, other=0)
        tl.store(INVERSE + b * stride_ib + r * stride_ir + key, pos.to(tl.int32), mask=inside)


@triton.jit
def _fold_kernel(DK, DV, BIAS, CELLS, INVERSE, M, H, S, J, block, k_cluster_size,
                 stride_dkb, stride_dkn, stride_dvb, stride_dvn, stride_bias_b, stride_ib, stride_ir,
                 D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Keys of one block of token order: every round's cell gradient, through the inverse order,
    added to the dk and dv rows of the keys with w = 1."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(M, BLOCK_K)
    b = (pid // n_blocks).to(tl.int64)
    key = pid % n_blocks * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    bias = tl.load(BIAS + b * stride_bias_b + key, mask=key < M, other=float("-inf"))
    counted = (key < M) & (bias == 0.0)
    acc_k = tl.zeros((BLOCK_K, BLOCK_DQ), dtype=tl.float32)
    acc_v = tl.zeros((BLOCK_K, BLOCK_DV), dtype=tl.float32)
    for r in range(H):
        pos = tl.load(INVERSE + b * stride_ib + r * stride_ir + key, mask=counted, other=0)
        s = pos // block
        j = pos // k_cluster_size - s * block // k_cluster_size
        cell = CELLS + (((b * H + r) * S + s) * J + j) * (D_QK + D_V)
        acc_k += tl.load(cell[:, None] + offs_dq[None, :],
                         mask=counted[:, None] & (offs_dq[None, :] < D_QK), other=0.0)
        acc_v += tl.load(cell[:, None] + D_QK + offs_dv[None, :],
                         mask=counted[:, None] & (offs_dv[None, :] < D_V), other=0.0)
    dk = DK + b * stride_dkb + key[:, None] * stride_dkn + offs_dq[None, :]
    inside_k = counted[:, None] & (offs_dq[None, :] < D_QK)
    tl.store(dk, tl.load(dk, mask=inside_k, other=0.0) + acc_k, mask=inside_k)
    dv = DV + b * stride_dvb + key[:, None] * stride_dvn + offs_dv[None, :]
    inside_v = counted[:, None] & (offs_dv[None, :] < D_V)
    tl.store(dv, tl.load(dv, mask=inside_v, other=0.0) + acc_v, mask=inside_v)


def _check(k_ext, v_ext, bias_ext, k_order, sizes: SmyrfSizes) -> tuple[int, int, int, int]:
    """(B, H, M, J) of a call, after checking the layout the kernels index by."""
    B, H, M = k_order.shape
    rows = M + H * sizes.n_clusters * sizes.n_summaries
    if not sizes.n_summaries or M != sizes.n_keys:
        raise ValueError(f"summary rows need n_summaries > 0 and {sizes.n_keys} keys, got {sizes.n_summaries} and {M}")
    for name, x in (("k", k_ext), ("v", v_ext)):
        if x.shape[:2] != (B, rows) or x.stride(-1) != 1:
            raise ValueError(f"{name} rows must be (B={B}, {rows}, d) with the feature dim contiguous, got {tuple(x.shape)}")
    if bias_ext.shape != (B, rows) or bias_ext.dtype != torch.float32 or bias_ext.stride(-1) != 1:
        raise ValueError(f"bias must be float32 ({B}, {rows}), contiguous, got {bias_ext.dtype} {tuple(bias_ext.shape)}")
    if k_order.stride(-1) != 1:
        raise ValueError("k_order's last dim must be contiguous")
    return B, H, M, cells_per_block(M, sizes.n_summaries, sizes.k_cluster_size)


def write_summaries(k_ext: torch.Tensor, v_ext: torch.Tensor, bias_ext: torch.Tensor, k_order: torch.Tensor,
                    sizes: SmyrfSizes) -> None:
    """Write every round's summary rows (see the module docstring) of k_ext, v_ext and bias_ext in
    place from their key rows [0, M): mean keys and values accumulated in float32 and stored in
    the tensors' dtypes, log(count) or HUB_MASK_LOGIT. Padding columns of k (zero in every key)
    stay zero. Two launches; on meta tensors none.

    Time O(B H M (DQ + d_v)) gathered reads (each key once per round) plus O(B H C S J (DQ + d_v))
    for the rows; memory: a float32 scratch of B H S J (DQ + d_v + 1), J = `cells_per_block`
    (1 when the blocks tile the clusters, as at BigGAN's sizes)."""
    B, H, M, J = _check(k_ext, v_ext, bias_ext, k_order, sizes)
    S, C, block = sizes.n_summaries, sizes.n_clusters, M // sizes.n_summaries
    d_qk, d_v = k_ext.shape[-1], v_ext.shape[-1]
    cells = torch.empty(B, H, S, J, d_qk + d_v + 1, dtype=torch.float32, device=k_ext.device)
    shapes = dict(D_QK=d_qk, D_V=d_v, BLOCK_DQ=triton.next_power_of_2(d_qk), BLOCK_DV=triton.next_power_of_2(d_v))
    launch(_cell_sums_kernel, (B * H * S * J,))(
        k_ext, v_ext, bias_ext, k_order, cells, H, S, J, block, sizes.k_cluster_size,
        k_ext.stride(0), k_ext.stride(1), v_ext.stride(0), v_ext.stride(1), bias_ext.stride(0),
        k_order.stride(0), k_order.stride(1), BLOCK_K=BLOCK_KEYS, **shapes,
    )
    block_c = min(BLOCK_CLUSTERS, triton.next_power_of_2(C))
    launch(_summary_rows_kernel, (B * H * S * triton.cdiv(C, block_c),))(
        k_ext, v_ext, bias_ext, cells, M, H, S, J, C, block, sizes.k_cluster_size,
        k_ext.stride(0), k_ext.stride(1), v_ext.stride(0), v_ext.stride(1), bias_ext.stride(0),
        BLOCK_C=block_c, MASK_LOGIT=HUB_MASK_LOGIT, **shapes,
    )


def fold_summary_grads(dk_acc: torch.Tensor, dv_acc: torch.Tensor, bias_ext: torch.Tensor, k_order: torch.Tensor,
                       sizes: SmyrfSizes) -> None:
    """Add to the float32 gradient rows [0, M) of dk_acc and dv_acc, in place, what every key with
    w = 1 receives through the summary means whose gradients are in the rows after M (see the module
    docstring). Counts are read back from bias_ext's summary rows (`write_summaries`' offsets). Two
    launches; on meta tensors none. Deterministic: no atomics.

    Time O(B H C S (DQ + d_v)) to read the summary gradients, O(B H M) to invert the orders,
    O(B H M (DQ + d_v)) gathered reads of the (small, cached) cell gradients and O(B M (DQ + d_v))
    to update the rows; memory: float32 B H S J (DQ + d_v) and int32 B H M scratches."""
    B, H, M, J = _check(dk_acc, dv_acc, bias_ext, k_order, sizes)
    if dk_acc.dtype != torch.float32 or dv_acc.dtype != torch.float32:
        raise TypeError(f"gradient accumulators must be float32, got {dk_acc.dtype}, {dv_acc.dtype}")
    S, C, block = sizes.n_summaries, sizes.n_clusters, M // sizes.n_summaries
    d_qk, d_v = dk_acc.shape[-1], dv_acc.shape[-1]
    cells = torch.empty(B, H, S, J, d_qk + d_v, dtype=torch.float32, device=dk_acc.device)
    inverse = torch.empty(B, H, M, dtype=torch.int32, device=dk_acc.device)
    shapes = dict(D_QK=d_qk, D_V=d_v, BLOCK_DQ=triton.next_power_of_2(d_qk), BLOCK_DV=triton.next_power_of_2(d_v))
    launch(_cell_grads_kernel, (B * H * S,))(
        dk_acc, dv_acc, bias_ext, k_order, cells, inverse, M, H, S, J, C, block, sizes.k_cluster_size,
        dk_acc.stride(0), dk_acc.stride(1), dv_acc.stride(0), dv_acc.stride(1), bias_ext.stride(0),
        k_order.stride(0), k_order.stride(1), inverse.stride(0), inverse.stride(1),
        BLOCK_C=min(BLOCK_CLUSTERS, triton.next_power_of_2(C)), BLOCK_K=BLOCK_KEYS, **shapes,
    )
    launch(_fold_kernel, (B * triton.cdiv(M, BLOCK_KEYS),))(
        dk_acc, dv_acc, bias_ext, cells, inverse, M, H, S, J, block, sizes.k_cluster_size,
        dk_acc.stride(0), dk_acc.stride(1), dv_acc.stride(0), dv_acc.stride(1), bias_ext.stride(0),
        inverse.stride(0), inverse.stride(1), BLOCK_K=BLOCK_KEYS, **shapes,
    )
