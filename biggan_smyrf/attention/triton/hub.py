"""Triton kernels of the hub keys' own bookkeeping: choosing them, and handing their gradients back.

- `key_mass`: the attention mass softmax(scale q_pick kᵀ) gives each key, summed over a sample of
  queries (what `hashing.key_mass` computes through the cluster kernels), in two launches: one
  program per (batch element, block of sampled queries) finds each sampled query's logsumexp over
  all keys (online, no values), then one per (batch element, block of keys) sums exp(s - lse) over
  the sampled queries and writes its keys' mass. The sampled rows are read through the `pick`
  index in q's own dtype (no gathered or float32 copies; dots accumulate in float32), each mass
  element has one writer (no atomics, no zeroed buffer). Cost: 2 S M d multiply-adds and 2 S M
  exponentials for S sampled queries and M keys per batch element; memory O(B (S + M)) float32.
- `add_hub_gradients`: the hub round's per-query-run key gradients (B P, n_hub, d) summed over the
  P runs and added into the caller's float32 dK and dV buffers at the hub keys' token rows, both
  in one launch. Hub keys are distinct within a batch element, so each row has one writer and a
  plain read-add-write is safe and repeatable.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .blocks import (
    INTERPRETED, LOG2E, block_size, check_inputs, cluster_and_block, dot, fp32_dot_precision, head_block,
)
from .launches import launch

# (sampled queries, keys, num_warps) per program. Score tiles only (no values, no accumulators
# beyond a row or column of sums), so 64 x 64 at 4 warps is light; the sample (256 by default)
# makes B * 4 logsumexp programs, each over all keys.
BLOCKS = {"lse": (32, 64, 4), "mass": (64, 64, 4)}


@triton.jit
def _sampled_queries(Q, PICK, b, offs_s, S, stride_qb, stride_qn, stride_qd, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The (BLOCK_S, BLOCK_D) rows q[b, pick[offs_s]], zeros past S and past the D features."""
    rows = offs_s < S
    token = tl.load(PICK + offs_s, mask=rows, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    inside = rows[:, None] & (offs_d[None, :] < D)
    return tl.load(Q + b * stride_qb + token[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=inside, other=0.0)


@triton.jit
def _keys(K, MASK, b, offs_n, M, stride_kb, stride_kn, stride_kd, stride_mb, stride_mn,
          D: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr):
    """(keys (BLOCK_N, BLOCK_D), logit offsets (BLOCK_N,)): 0 on attended keys, -inf past M and on
    masked ones."""
    cols = offs_n < M
    offs_d = tl.arange(0, BLOCK_D)
    k = tl.load(K + b * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=cols[:, None] & (offs_d[None, :] < D), other=0.0)
    keep = cols
    if HAS_MASK:
        keep = keep & (tl.load(MASK + b * stride_mb + offs_n * stride_mn, mask=cols, other=0) != 0)
    return k, tl.where(keep, 0.0, float("-inf"))


@triton.jit
def _sample_lse_kernel(
    Q, PICK, K, MASK, LSE,
    stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd, stride_mb, stride_mn,
    S, M, scale_log2, D: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """LSE[b, i] = log2 sum_j exp2(scale_log2 q_pick[i] · k[j]) over the attended keys, -inf where
    there is none."""
    b, block = cluster_and_block(S, BLOCK_S)
    offs_s = block * BLOCK_S + tl.arange(0, BLOCK_S)
    q = _sampled_queries(Q, PICK, b, offs_s, S, stride_qb, stride_qn, stride_qd, D, BLOCK_D)
    m_i = tl.full([BLOCK_S], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_S], tl.float32)
    for start_n in range(0, M, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, key_offset = _keys(K, MASK, b, offs_n, M, stride_kb, stride_kn, stride_kd, stride_mb, stride_mn, D, BLOCK_D, HAS_MASK)
        s = dot(q, tl.trans(k), UPCAST, PRECISION) * scale_log2 + key_offset[None, :]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key attended yet: keep exp2 at 0, not NaN
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), axis=1)
        m_i = m_new
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(LSE + b * S + offs_s, lse, mask=offs_s < S)


@triton.jit
def _key_mass_kernel(
    Q, PICK, K, MASK, LSE, MASS,
    stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd, stride_mb, stride_mn,
    S, M, scale_log2, D: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """MASS[b, j] = sum_i exp2(scale_log2 q_pick[i] · k[j] - LSE[b, i]) for one block of keys."""
    b, block = cluster_and_block(M, BLOCK_N)
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    k, key_offset = _keys(K, MASK, b, offs_n, M, stride_kb, stride_kn, stride_kd, stride_mb, stride_mn, D, BLOCK_D, HAS_MASK)
    mass = tl.zeros([BLOCK_N], tl.float32)
    for start_s in range(0, S, BLOCK_S):
        offs_s = start_s + tl.arange(0, BLOCK_S)
        q = _sampled_queries(Q, PICK, b, offs_s, S, stride_qb, stride_qn, stride_qd, D, BLOCK_D)
        # Rows past S and queries with no attended key (lse = -inf) add nothing: +inf makes their P 0.
        lse = tl.load(LSE + b * S + offs_s, mask=offs_s < S, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        s_t = dot(k, tl.trans(q), UPCAST, PRECISION) * scale_log2 + key_offset[:, None]
        mass += tl.sum(tl.math.exp2(s_t - lse[None, :]), axis=1)
    tl.store(MASS + b * M + offs_n, mass, mask=offs_n < M)


def key_mass(q: torch.Tensor, pick: torch.Tensor, k: torch.Tensor, scale: float,
             key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, M) float32: the mass softmax(scale q[:, pick] kᵀ) gives each key, summed over the picked
    queries. q: (B, N, d), pick: (S,) int64 token indices (repeats count twice), k: (B, M, d) of
    q's dtype (float16, bfloat16 or float32), key_mask: (B, M) bool, True = attend, or None.
    Queries whose keys are all masked give no mass. Two launches."""
    check_inputs(q, k, k)
    (B, _, d), S, M = q.shape, pick.shape[0], k.shape[1]
    pick = pick.contiguous()
    lse = torch.empty(B, S, dtype=torch.float32, device=q.device)
    mass = torch.empty(B, M, dtype=torch.float32, device=q.device)
    if key_mask is None:
        mask, stride_mb, stride_mn = q, 0, 0  # never read
    else:
        mask = key_mask.view(torch.uint8)
        stride_mb, stride_mn = mask.stride()
    (lse_s, lse_n, lse_warps), (mass_s, mass_n, mass_warps) = BLOCKS["lse"], BLOCKS["mass"]
    arguments = (*q.stride(), *k.stride(), stride_mb, stride_mn, S, M, scale * LOG2E.value)
    constants = dict(D=d, HAS_MASK=key_mask is not None, BLOCK_D=head_block(d), UPCAST=INTERPRETED,
                     PRECISION=fp32_dot_precision())
    block_s, block_n = block_size(S, lse_s), block_size(M, lse_n)
    launch(_sample_lse_kernel, (B * triton.cdiv(S, block_s),))(
        q, pick, k, mask, lse, *arguments, **constants, BLOCK_S=block_s, BLOCK_N=block_n, num_warps=lse_warps)
    block_s, block_n = block_size(S, mass_s), block_size(M, mass_n)
    launch(_key_mass_kernel, (B * triton.cdiv(M, block_n),))(
        q, pick, k, mask, lse, mass, *arguments, **constants, BLOCK_S=block_s, BLOCK_N=block_n, num_warps=mass_warps)
    return mass


@triton.jit
def _add_hub_gradients_kernel(
    DK, DV, HUB, DK_ACC, DV_ACC,
    stride_hb, stride_hj,
    stride_kab, stride_kam, stride_kad, stride_vab, stride_vam, stride_vad,
    n_hub, parts, D_K: tl.constexpr, D_V: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """DK_ACC[b, HUB[b, j]] += sum_p DK[b P + p, j] and likewise DV into DV_ACC, for one block of
    hub keys; DK and DV contiguous (B P, n_hub, d), summed in float32 in a fixed order."""
    b, block = cluster_and_block(n_hub, BLOCK_H)
    offs_h = block * BLOCK_H + tl.arange(0, BLOCK_H)
    rows = offs_h < n_hub
    token = tl.load(HUB + b * stride_hb + offs_h * stride_hj, mask=rows, other=0)
    offs_dk, offs_dv = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_DV)
    k_inside = rows[:, None] & (offs_dk[None, :] < D_K)
    v_inside = rows[:, None] & (offs_dv[None, :] < D_V)
    dk = tl.zeros([BLOCK_H, BLOCK_DK], tl.float32)
    dv = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
    for p in range(0, parts):
        row = (b * parts + p) * n_hub + offs_h
        dk += tl.load(DK + row[:, None] * D_K + offs_dk[None, :], mask=k_inside, other=0.0).to(tl.float32)
        dv += tl.load(DV + row[:, None] * D_V + offs_dv[None, :], mask=v_inside, other=0.0).to(tl.float32)
    dk_ptrs = DK_ACC + b * stride_kab + token[:, None] * stride_kam + offs_dk[None, :] * stride_kad
    dv_ptrs = DV_ACC + b * stride_vab + token[:, None] * stride_vam + offs_dv[None, :] * stride_vad
    tl.store(dk_ptrs, tl.load(dk_ptrs, mask=k_inside, other=0.0) + dk, mask=k_inside)
    tl.store(dv_ptrs, tl.load(dv_ptrs, mask=v_inside, other=0.0) + dv, mask=v_inside)


def add_hub_gradients(dk: torch.Tensor, dv: torch.Tensor, hub: torch.Tensor,
                      dk_acc: torch.Tensor, dv_acc: torch.Tensor) -> None:
    """dk_acc[b, hub[b, j]] += sum_p dk[b P + p, j] (and dv into dv_acc) in place, one launch.
    dk: (B P, n_hub, d_k), dv: (B P, n_hub, d_v) contiguous, any float dtype; hub: (B, n_hub)
    distinct token indices per batch element; dk_acc (B, M', d_k), dv_acc (B, M', d_v) float32."""
    B, n_hub = hub.shape
    parts = dk.shape[0] // B
    if dk_acc.dtype != torch.float32 or dv_acc.dtype != torch.float32:
        raise TypeError(f"the accumulators must be float32, got {dk_acc.dtype} and {dv_acc.dtype}")
    if not (dk.is_contiguous() and dv.is_contiguous()) or dk.shape[0] != B * parts or dk.shape[-1] != dk_acc.shape[-1] \
            or dv.shape[-1] != dv_acc.shape[-1]:
        raise ValueError(f"hub gradients {tuple(dk.shape)}, {tuple(dv.shape)} do not fit hub {tuple(hub.shape)} "
                         f"and accumulators {tuple(dk_acc.shape)}, {tuple(dv_acc.shape)}")
    d_k, d_v = dk.shape[-1], dv.shape[-1]
    block_h = block_size(n_hub, 32)
    launch(_add_hub_gradients_kernel, (B * triton.cdiv(n_hub, block_h),))(
        dk, dv, hub, dk_acc, dv_acc, *hub.stride(), *dk_acc.stride(), *dv_acc.stride(), n_hub, parts,
        D_K=d_k, D_V=d_v, BLOCK_H=block_h, BLOCK_DK=head_block(d_k), BLOCK_DV=head_block(d_v),
    )
