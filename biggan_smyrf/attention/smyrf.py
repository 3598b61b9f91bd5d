"""SMYRF attention (Daras et al., NeurIPS 2020): balanced asymmetric-LSH clusters.

Per hash round r the queries and keys are sorted by their LSH value and cut into clusters of
q_cluster_size queries and k_cluster_size keys; exact softmax attention runs inside each cluster,
giving o_r and its logsumexp lse_r. The rounds are combined as
    out = sum_r w_r o_r,   w = softmax_r(lse_r),
which is softmax attention over the union (with multiplicity) of the keys a query met.

Cost: H = n_hashes, C = k_cluster_size. Time O(H * N * C * d) for the cluster attention plus
O(H * (N + M) log(N + M)) for the sorts. Memory O(H * (N + M) * (d_qk + d_v)) for the sorted
copies; the scores are never materialised by the CPU flash kernel (O(chunk) by the chunked one).

Gradient through the combination: d out / d lse_r adds w_r g·(o_r - out) to lse_r's gradient,
and lse_r's gradient adds P_r times that to the scores. Folded into FlashAttention's backward,
    dS_r = P_r * (dP_r - rowsum(dO_r * out)),   dO_r = w_r * g,
i.e. the usual backward with the combined `out` in place of o_r. So the whole step is one
autograd Function around the fused kernels, with no score tensor kept for the backward.
"""
from __future__ import annotations

from typing import Optional

import torch

from .checks import check_qkv, default_scale
from .config import resolve_cluster_sizes
from .hashing import Hashing, cluster_orders, make_generator
from .kernels import Kernel, attention_backward, attention_forward, pick_kernel


def smyrf_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_hashes: int,
    q_cluster_size: int,
    k_cluster_size: Optional[int] = None,
    scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    hashing: Hashing = "xbox",
    kernel: Kernel = "auto",
) -> torch.Tensor:
    """Approximate softmax(scale * q kᵀ) v with SMYRF. q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v).

    N / q_cluster_size must equal M / k_cluster_size (the number of clusters per round);
    k_cluster_size=None picks it so. Randomness comes only from `generator` (a CPU
    torch.Generator) or else from `seed` (default 0): same seed, bitwise same output.
    key_padding_mask: (B, M) bool, True = attend. hashing="random" gives the random-cluster
    baseline. With one cluster (q_cluster_size=N) the result equals dense attention.
    """
    check_qkv(q, k, v, key_padding_mask)
    if n_hashes < 1:
        raise ValueError(f"n_hashes must be >= 1, got {n_hashes}")
    (B, N, _), M = q.shape, k.shape[1]
    q_cluster_size, k_cluster_size = resolve_cluster_sizes(N, M, q_cluster_size, k_cluster_size, "smyrf_attention")
    kernel = pick_kernel(kernel, q.device, key_padding_mask is not None)

    q_order, k_order = cluster_orders(q, k, n_hashes, make_generator(generator, seed), hashing)
    qs, ks, vs = _gather(q, q_order), _gather(k, k_order), _gather(v, k_order)
    mask = None if key_padding_mask is None else key_padding_mask.gather(1, k_order.flatten(1))
    return _ClusteredAttention.apply(
        qs, ks, vs, q_order, mask, default_scale(scale, q.shape[-1]), q_cluster_size, k_cluster_size, kernel
    )


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), order: (B, H, T) -> (B, H, T, d) with x's tokens in each round's order."""
    B, H, T = order.shape
    index = order.reshape(B, H * T, 1).expand(-1, -1, x.shape[-1])
    return x.gather(1, index).view(B, H, T, x.shape[-1])


def _to_clusters(x: torch.Tensor, cluster_size: int) -> torch.Tensor:
    """(B, H, T, d) sorted tokens -> (B * H * T / cluster_size, cluster_size, d)."""
    return x.reshape(-1, cluster_size, x.shape[-1])


class _ClusteredAttention(torch.autograd.Function):
    """Cluster attention of every round, un-sorting, and the logsumexp-weighted combination."""

    @staticmethod
    def forward(ctx, qs, ks, vs, q_order, mask, scale, q_cluster_size, k_cluster_size, kernel):
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
        w_sorted = torch.softmax(lse, dim=1).gather(2, q_order)
        weighted = (w_sorted[..., None] * o_sorted.reshape(B, H, N, -1)).reshape(B, H * N, -1)
        out = weighted.new_zeros(B, N, weighted.shape[-1])
        out.scatter_add_(1, q_order.reshape(B, H * N, 1).expand_as(weighted), weighted)
        out = out.to(qs.dtype)

        ctx.save_for_backward(qs, ks, vs, q_order, mask, lse_sorted, w_sorted, out)
        ctx.config = (scale, q_cluster_size, k_cluster_size, kernel)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qs, ks, vs, q_order, mask, lse_sorted, w_sorted, out = ctx.saved_tensors
        scale, q_cluster_size, k_cluster_size, kernel = ctx.config
        B, H, N, _ = qs.shape
        index = q_order.reshape(B, H * N, 1).expand(B, H * N, out.shape[-1])
        grad_sorted = (w_sorted[..., None] * grad_out.gather(1, index).view(B, H, N, -1)).to(qs.dtype)
        out_sorted = out.gather(1, index).view(B, H, N, -1)
        cluster_mask = None if mask is None else mask.reshape(-1, k_cluster_size)
        dq, dk, dv = attention_backward(
            _to_clusters(grad_sorted, q_cluster_size),
            _to_clusters(qs, q_cluster_size), _to_clusters(ks, k_cluster_size), _to_clusters(vs, k_cluster_size),
            _to_clusters(out_sorted, q_cluster_size), lse_sorted.reshape(-1, q_cluster_size),
            scale, kernel, cluster_mask,
        )
        return dq.reshape(qs.shape), dk.reshape(ks.shape), dv.reshape(vs.shape), None, None, None, None, None, None
