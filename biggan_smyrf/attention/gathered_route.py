"""SMYRF's gathered route: every round's clusters as sorted copies, the cluster kernel over them.

The route of the CPU kernels ("flash", "chunked"; "chunked" also on any other device): per-round
sorted copies of q, k, v (and of the summary keys), `cluster_attention.py` inside every cluster,
then the rounds un-sorted and combined by their logsumexps, all in one autograd Function whose
backward is the cluster kernel's with the combined output in FlashAttention's D (see `smyrf.py`).
Hub keys and the summary keys' log(count) enter as one extra feature (`_with_logit_offset`).
Memory O(H (N + M) (d_qk + d_v)) for the copies and per-round outputs; the permuted route
(`cuda_route.py`) computes the same without them.
"""
from __future__ import annotations

from typing import Optional

import torch

from .cluster_attention import attention_backward, attention_forward
from .plan import Plan, hub_round_backward, hub_round_forward, log_participation, take, weighted
from .summaries import HUB_MASK_LOGIT, append_summaries, summarised


def gathered_rounds(q, k, v, plan: Plan, kernel: str):
    """Every round's clusters as gathered copies, the cluster kernel over them, then the round
    combination (CPU flash and chunked kernels). Memory O(H (N + M) (d_qk + d_v)) for the copies."""
    q_hashed, k_hashed = q, k
    if plan.hub is not None or plan.n_summaries:
        q_hashed, k_hashed = _with_logit_offset(q, k, plan.hub, plan.scale)
    qs, ks, vs = gather(q_hashed, plan.q_order), gather(k_hashed, plan.k_order), gather(v, plan.k_order)
    mask = None if plan.key_padding_mask is None else plan.key_padding_mask.gather(1, plan.k_order.flatten(1))
    k_size = plan.k_cluster_size
    if plan.n_summaries:
        counted = gather(summarised(k, plan.hub, plan.key_padding_mask), plan.k_order)
        ks, vs, mask = append_summaries(ks, vs, mask, counted, plan.k_cluster_size, plan.n_summaries, plan.scale)
        k_size += plan.n_summaries
    return _ClusteredAttention.apply(
        qs, ks, vs, plan.q_order, mask, q, *plan.hub_round(k, v),
        (plan.scale, plan.q_cluster_size, k_size, kernel, plan.dedup),
    )


def gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), order: (B, H, T) -> (B, H, T, d) with x's tokens in each round's order."""
    B, H, T = order.shape
    return take(x, order.reshape(B, H * T)).view(B, H, T, x.shape[-1])


def _with_logit_offset(q: torch.Tensor, k: torch.Tensor, hub: Optional[torch.Tensor], scale: float):
    """Append a feature (1 for queries, a logit offset / scale for keys) that adds the offset to
    every logit with that key: HUB_MASK_LOGIT removes hub keys from the hashed rounds; summary keys
    carry log(count) there. Costs one feature, which the flash kernels' padding usually absorbs."""
    offset = torch.zeros(*k.shape[:2], 1, dtype=k.dtype, device=k.device)
    if hub is not None:
        offset.scatter_(1, hub[..., None], HUB_MASK_LOGIT / scale)
    ones = torch.ones(*q.shape[:2], 1, dtype=q.dtype, device=q.device)
    return torch.cat([q, ones], dim=-1), torch.cat([k, offset], dim=-1)


def _to_clusters(x: torch.Tensor, cluster_size: int) -> torch.Tensor:
    """(B, H, T, d) sorted tokens -> (B * H * T / cluster_size, cluster_size, d)."""
    return x.reshape(-1, cluster_size, x.shape[-1])


class _ClusteredAttention(torch.autograd.Function):
    """Cluster attention of every round (+ the hub round), un-sorting, and the combination."""

    @staticmethod
    def forward(ctx, qs, ks, vs, q_order, mask, q, hub_k, hub_v, hub_mask, config):
        scale, q_cluster_size, k_cluster_size, kernel, dedup = config
        B, H, N, _ = qs.shape
        cluster_mask = None if mask is None else mask.reshape(-1, k_cluster_size)
        o_sorted, lse_sorted = attention_forward(
            _to_clusters(qs, q_cluster_size), _to_clusters(ks, k_cluster_size), _to_clusters(vs, k_cluster_size),
            scale, kernel, cluster_mask,
        )
        lse_sorted = lse_sorted.reshape(B, H, N)
        # Round weights softmax_r(lse_r) need each token's rounds side by side: un-sort only the
        # (B, H, N) logsumexps, then scatter-add the weighted outputs straight into token order,
        # which never holds an un-sorted (B, H, N, d_v) copy.
        lse = torch.empty_like(lse_sorted).scatter_(2, q_order, lse_sorted)
        o_hub = lse_hub = w_hub = None
        if hub_k is not None:
            o_hub, lse_hub = hub_round_forward(q, hub_k, hub_v, scale, kernel, hub_mask)
            if dedup and H > 1:
                lse = lse - log_participation(lse)
            w = torch.softmax(torch.cat([lse, lse_hub[:, None].to(lse.dtype)], dim=1), dim=1)
            w, w_hub = w[:, :H], w[:, H]
        else:
            w = torch.softmax(lse, dim=1)
        w_sorted = w.gather(2, q_order)
        weighted = (w_sorted[..., None] * o_sorted.reshape(B, H, N, -1)).reshape(B, H * N, -1)
        out = weighted.new_zeros(B, N, weighted.shape[-1])
        out.scatter_add_(1, q_order.reshape(B, H * N, 1).expand_as(weighted), weighted)
        if o_hub is not None:
            out += w_hub[..., None] * o_hub.to(out.dtype)
        out = out.to(qs.dtype)

        ctx.save_for_backward(qs, ks, vs, q_order, mask, lse_sorted, w_sorted, out, q, hub_k, hub_v, hub_mask, lse_hub, w_hub)
        ctx.config = config
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qs, ks, vs, q_order, mask, lse_sorted, w_sorted, out, q, hub_k, hub_v, hub_mask, lse_hub, w_hub = ctx.saved_tensors
        scale, q_cluster_size, k_cluster_size, kernel, _ = ctx.config
        B, H, N, _ = qs.shape
        index = q_order.reshape(B, H * N, 1).expand(B, H * N, out.shape[-1])
        grad_sorted = (w_sorted[..., None] * grad_out.gather(1, index).view(B, H, N, -1)).to(qs.dtype)
        out_sorted = out.gather(1, index).view(B, H, N, -1)
        cluster_mask = None if mask is None else mask.reshape(-1, k_cluster_size)
        dqs, dks, dvs = attention_backward(
            _to_clusters(grad_sorted, q_cluster_size),
            _to_clusters(qs, q_cluster_size), _to_clusters(ks, k_cluster_size), _to_clusters(vs, k_cluster_size),
            _to_clusters(out_sorted, q_cluster_size), lse_sorted.reshape(-1, q_cluster_size),
            scale, kernel, cluster_mask,
        )
        dq = d_hub_k = d_hub_v = None
        if hub_k is not None:
            grad_hub = weighted(grad_out, w_hub, q.dtype)
            dq, d_hub_k, d_hub_v = hub_round_backward(grad_hub, q, hub_k, hub_v, out, lse_hub, scale, kernel, hub_mask)
        return (
            dqs.reshape(qs.shape), dks.reshape(ks.shape), dvs.reshape(vs.shape), None, None,
            dq, d_hub_k, d_hub_v, None, None,
        )
