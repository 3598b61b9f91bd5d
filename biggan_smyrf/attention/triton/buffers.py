"""The permuted route's token-order buffers: its inputs laid out for the kernels, its gradients cut back.

`route_inputs` writes, in one launch, what every kernel of `cuda_route.py` reads: q padded to the
kernels' head width (zeros change no logit: 12 features become 16, 32-byte rows that load in
16-byte vectors), the keys and values at the top of buffers that leave room for rows appended after
them (the summary keys), and the keys' logit bias (0, or -inf for padding). It reads q, k, v through
their strides, so BigGAN's channels-first views need no contiguous copy first.

`route_gradients` writes, in one launch, the three gradients autograd gets back from the route's
float32 accumulators: the padding columns and the appended rows cut off, cast to the inputs' dtypes.

Each is one pass over its tensors: O(B (N + M) (d_qk + d_v)) time and memory traffic, one launch
(aten would need a pad, a copy, a fill and a cast per tensor).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .blocks import head_block
from .launches import launch

ROWS = 64  # rows per program: 64 x 16 features of q, or 64 x (16 + 64) of k and v, in registers


@triton.jit
def _rows_of(pid, n_q_blocks, n_k_blocks, BLOCK: tl.constexpr):
    """(batch, whether the rows are queries, row offsets) of this program: each batch element's
    query blocks, then its key blocks."""
    per_batch = n_q_blocks + n_k_blocks
    b = (pid // per_batch).to(tl.int64)
    block = pid % per_batch
    is_query = block < n_q_blocks
    first = tl.where(is_query, block, block - n_q_blocks) * BLOCK
    return b, is_query, first + tl.arange(0, BLOCK)


@triton.jit
def _copy_rows(SRC, DST, b, rows, n_rows, stride_sb, stride_sn, stride_sd, stride_db, stride_dn,
               n_cols: tl.constexpr, dst_cols: tl.constexpr, BLOCK_D: tl.constexpr):
    """DST[b, rows, :dst_cols] = SRC[b, rows, :n_cols], zeros past n_cols, cast to DST's dtype."""
    offs_d = tl.arange(0, BLOCK_D)
    inside = rows < n_rows
    x = tl.load(SRC + b * stride_sb + rows[:, None] * stride_sn + offs_d[None, :] * stride_sd,
                mask=inside[:, None] & (offs_d[None, :] < n_cols), other=0.0)
    tl.store(DST + b * stride_db + rows[:, None] * stride_dn + offs_d[None, :], x,
             mask=inside[:, None] & (offs_d[None, :] < dst_cols))


@triton.jit
def _inputs_kernel(
    Q, K, V, MASK, Q_OUT, K_OUT, V_OUT, BIAS,
    stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd, stride_vb, stride_vn, stride_vd,
    stride_mb, stride_mn, stride_qob, stride_kob, stride_vob, stride_biasb,
    N, M, n_q_blocks, n_k_blocks,
    D_QK: tl.constexpr, D_V: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, is_query, rows = _rows_of(tl.program_id(0), n_q_blocks, n_k_blocks, BLOCK)
    if is_query:
        _copy_rows(Q, Q_OUT, b, rows, N, stride_qb, stride_qn, stride_qd, stride_qob, BLOCK_DQK,
                   D_QK, BLOCK_DQK, BLOCK_DQK)
    else:
        _copy_rows(K, K_OUT, b, rows, M, stride_kb, stride_kn, stride_kd, stride_kob, BLOCK_DQK,
                   D_QK, BLOCK_DQK, BLOCK_DQK)
        _copy_rows(V, V_OUT, b, rows, M, stride_vb, stride_vn, stride_vd, stride_vob, D_V, D_V, D_V, BLOCK_DV)
        if HAS_BIAS:
            bias = tl.zeros([BLOCK], tl.float32)
            if HAS_MASK:
                keep = tl.load(MASK + b * stride_mb + rows * stride_mn, mask=rows < M, other=1)
                bias = tl.where(keep != 0, bias, float("-inf"))
            tl.store(BIAS + b * stride_biasb + rows, bias, mask=rows < M)


@triton.jit
def _gradients_kernel(
    DQ_ACC, DK_ACC, DV_ACC, DQ, DK, DV,
    stride_dqab, stride_dkab, stride_dvab, N, M, n_q_blocks, n_k_blocks,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, is_query, rows = _rows_of(tl.program_id(0), n_q_blocks, n_k_blocks, BLOCK)
    # The accumulators' rows are BLOCK_DQK / D_V wide; the gradients' D_QK / D_V, contiguous.
    if is_query:
        _copy_rows(DQ_ACC, DQ, b, rows, N, stride_dqab, BLOCK_DQK, 1, N * D_QK, D_QK, D_QK, D_QK, BLOCK_DQK)
    else:
        _copy_rows(DK_ACC, DK, b, rows, M, stride_dkab, BLOCK_DQK, 1, M * D_QK, D_QK, D_QK, D_QK, BLOCK_DQK)
        _copy_rows(DV_ACC, DV, b, rows, M, stride_dvab, D_V, 1, M * D_V, D_V, D_V, D_V, BLOCK_DV)


def _grid(B: int, N: int, M: int):
    n_q_blocks, n_k_blocks = triton.cdiv(N, ROWS), triton.cdiv(M, ROWS)
    return (B * (n_q_blocks + n_k_blocks),), n_q_blocks, n_k_blocks


def route_inputs(q, k, v, key_padding_mask: Optional[torch.Tensor], extra_rows: int, with_bias: bool):
    """-> q (B, N, W), k (B, M + extra_rows, W), v (B, M + extra_rows, d_v), bias (B, M + extra_rows)
    float32 or None: W = the kernels' head width; rows past M are left for the caller to fill;
    bias 0 on keys, -inf where key_padding_mask is False (with_bias, or a mask, asks for it)."""
    (B, N, d_qk), M, d_v = q.shape, k.shape[1], v.shape[-1]
    width = head_block(d_qk)
    q_out = q.new_empty(B, N, width)
    k_out = k.new_empty(B, M + extra_rows, width)
    v_out = v.new_empty(B, M + extra_rows, d_v)
    has_bias = with_bias or key_padding_mask is not None
    bias = torch.empty(B, M + extra_rows, dtype=torch.float32, device=q.device) if has_bias else None
    # bool tensors reach triton as int1 pointers; their bytes as uint8 are the same view, loadable.
    mask = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else q
    grid, n_q_blocks, n_k_blocks = _grid(B, N, M)
    launch(_inputs_kernel, grid)(
        q, k, v, mask, q_out, k_out, v_out, bias if has_bias else q,
        *q.stride(), *k.stride(), *v.stride(),
        *(mask.stride() if key_padding_mask is not None else (0, 0)),
        q_out.stride(0), k_out.stride(0), v_out.stride(0), bias.stride(0) if has_bias else 0,
        N, M, n_q_blocks, n_k_blocks,
        D_QK=d_qk, D_V=d_v, HAS_MASK=key_padding_mask is not None, HAS_BIAS=has_bias,
        BLOCK=ROWS, BLOCK_DQK=width, BLOCK_DV=head_block(d_v),
    )
    return q_out, k_out, v_out, bias


def gradient_accumulators(B: int, N: int, M_ext: int, width: int, d_v: int, device):
    """Zeroed float32 (B, N, width), (B, M_ext, width), (B, M_ext, d_v): one allocation, one fill."""
    sizes = (B * N * width, B * M_ext * width, B * M_ext * d_v)
    flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
    dq, dk, dv = flat.split(sizes)
    return dq.view(B, N, width), dk.view(B, M_ext, width), dv.view(B, M_ext, d_v)


def route_gradients(dq_acc, dk_acc, dv_acc, d_qk: int, M: int, dtypes):
    """-> dq (B, N, d_qk), dk (B, M, d_qk), dv (B, M, d_v) in `dtypes`, from the accumulators of
    `gradient_accumulators` (the padding columns and the rows past M dropped)."""
    (B, N, width), d_v = dq_acc.shape, dv_acc.shape[-1]
    dq = torch.empty(B, N, d_qk, dtype=dtypes[0], device=dq_acc.device)
    dk = torch.empty(B, M, d_qk, dtype=dtypes[1], device=dq_acc.device)
    dv = torch.empty(B, M, d_v, dtype=dtypes[2], device=dq_acc.device)
    grid, n_q_blocks, n_k_blocks = _grid(B, N, M)
    launch(_gradients_kernel, grid)(
        dq_acc, dk_acc, dv_acc, dq, dk, dv, dq_acc.stride(0), dk_acc.stride(0), dv_acc.stride(0),
        N, M, n_q_blocks, n_k_blocks, D_QK=d_qk, D_V=d_v, BLOCK=ROWS, BLOCK_DQK=width, BLOCK_DV=head_block(d_v),
    )
    return dq, dk, dv
