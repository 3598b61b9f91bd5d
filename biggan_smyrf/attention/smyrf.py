"""SMYRF attention (Daras et al., NeurIPS 2020): balanced asymmetric-LSH clusters.

Per hash round r the queries and keys are ordered by their hash and cut into clusters of
q_cluster_size queries and k_cluster_size keys; exact softmax attention runs inside each cluster,
giving o_r and its logsumexp lse_r. The rounds are combined as
    out = sum_r w_r o_r,   w = softmax_r(lse_r),
which is softmax attention over the union (with multiplicity) of the keys a query met.

Beyond the paper (each measured in benchmarks/accuracy.py; the paper's recipe is
hashing="xbox", n_hub_keys=0, n_summaries=0, dedup="none"):
- hashing="kd": balanced k-d cells instead of slabs along one projection (see hashing.py).
- Hub keys: the n_hub_keys keys with the most estimated attention mass are attended by every
  query in one extra "round" and masked out of the hashed rounds, so each query sees them
  exactly once. Cost O(N * n_hub_keys).
- Summary keys (n_summaries = S per cluster): a round's clusters see only their own keys, so the
  attention mass on all other keys is lost -- the dominant error when attention is spread out
  (a young model, or heads that average). Each round's sorted keys are cut into S equal blocks;
  every cluster also attends to the S block means *minus its own keys* (key = mean of the block's
  remaining keys, value = mean of their values, logit + log(count)), so each round sees every
  key once: its own cluster exactly, the rest at block resolution. Blocks follow the hash order,
  so their keys are similar and exp(q . mean) is a good stand-in for their mean exp(q . k). Hub
  keys and padded keys are left out of the means. Cost O(H * N * S) products + O(H * M * d) for
  the means; differentiable (the means are ordinary autograd ops).
- dedup="estimate": a key met in several hashed rounds would count several times against the hub
  round; each query's hashed rounds are down-weighted by the participation ratio of their
  logsumexps, (sum_r e^lse_r)^2 / sum_r e^(2 lse_r), an estimate of how many rounds saw the same
  keys (exactly n_hashes when all rounds agree, as they do when summaries make every round a full
  estimate of spread-out attention). The correction is treated as a constant in the backward.
  With no hub keys it cancels out and changes nothing.

Cost: H = n_hashes, C = k_cluster_size. Time O(H * N * (C + S) * d) for the cluster attention plus
O(H * (N + M) log(N + M)) for the sorts. Two routes compute the same thing:
- gathered (CPU "flash", "chunked"; `gathered_route.py`): per-round sorted copies of q, k, v and
  per-round outputs, memory O(H * (N + M) * (d_qk + d_v)); scores never materialised by the flash
  kernel (O(chunk) by the chunked one).
- permuted ("triton", the CUDA default; `cuda_route.py`): Triton kernels read q, k, v through the
  round orders and merge each round's output into one float32 accumulator as they go
  (`triton/rounds.py`); the summaries' block means are summed one round at a time. Memory
  O((N + M) * (d_qk + d_v) + H * (N + M)).

Gradient through the combination: d out / d lse_r adds w_r g·(o_r - out) to lse_r's gradient,
and lse_r's gradient adds P_r times that to the scores. Folded into FlashAttention's backward,
    dS_r = P_r * (dP_r - rowsum(dO_r * out)),   dO_r = w_r * g,
i.e. the usual backward with the combined `out` in place of o_r. So the whole step is one
autograd Function around the fused kernels, with no score tensor kept for the backward. The
permuted route goes one step further: with norm_r = lse_r - log w_r, w_r P_r = exp(S_r - norm_r),
so a round's weighted output and its gradients need only norm_r, the combined output and its
gradient, all in token order (`plan.round_normalisers`).

This module is the public entry point: it validates, resolves the call's clusters into a `Plan`
(`plan.py`, with the hub round both routes share) and picks the route; the routes live in
`gathered_route.py` and `cuda_route.py`, the per-cluster attention in `cluster_attention.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .checks import check_qkv, default_scale
from .cluster_attention import pick_kernel
from .config import AttentionConfig
from .gathered_route import gathered_rounds
from .hashing import cluster_orders, device_generator, hub_keys
from .plan import Plan


@dataclass
class SmyrfIntermediates:
    """What one SMYRF call did, for diagnostics (`return_intermediates=True`): the clusters of
    every round as orders whose consecutive runs are the clusters, and the hub keys."""

    q_order: torch.Tensor  # (B, n_hashes, N) query indices, cluster by cluster
    k_order: torch.Tensor  # (B, n_hashes, M)
    q_cluster_size: int
    k_cluster_size: int
    hub_keys: Optional[torch.Tensor]  # (B, n_hub_keys) key indices, or None

    def query_clusters(self) -> torch.Tensor:
        """(B, n_hashes, N): the cluster of every query in every round."""
        return _cluster_of(self.q_order, self.q_cluster_size)

    def key_clusters(self) -> torch.Tensor:
        """(B, n_hashes, M): the cluster of every key in every round."""
        return _cluster_of(self.k_order, self.k_cluster_size)


def _cluster_of(order: torch.Tensor, size: int) -> torch.Tensor:
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(2, order, positions // size)


def smyrf_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: Optional[AttentionConfig] = None,
    *,
    scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    seed: Optional[int] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    return_intermediates: bool = False,
    **settings,
):
    """Approximate softmax(scale * q kᵀ) v with SMYRF. q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v).

    The SMYRF parameters are `config`'s (default: `AttentionConfig()`, the library's defaults;
    `AttentionConfig.paper(...)` is the published recipe) with `settings` -- any AttentionConfig
    fields, e.g. n_hashes=4, q_cluster_size=2048, kernel="chunked" -- changed on top. N / q_cluster_size must equal
    M / k_cluster_size (the number of clusters per round). Randomness comes only from `generator`
    (on q's device, or a CPU torch.Generator, which then seeds one there) or else from `seed`
    (default 0): same seed, same device, bitwise same output.
    key_padding_mask: (B, M) bool, True = attend. With one cluster the result equals dense attention.
    return_intermediates: also return a `SmyrfIntermediates` (clusters and hub keys).
    """
    check_qkv(q, k, v, key_padding_mask)
    config = (config or AttentionConfig()).with_(kind="smyrf", **settings)
    sizes = config.resolve(q.shape[1], k.shape[1], "smyrf_attention")
    # The cluster kernel sees d_qk + 1 features when hub or summary keys add the logit offset.
    head_dim = max(q.shape[-1] + 1, v.shape[-1])
    kernel = pick_kernel(config.kernel, q.device, key_padding_mask is not None, q.dtype, head_dim)
    scale = default_scale(scale, q.shape[-1])
    generator = device_generator(generator, seed, q)

    hub = None
    if sizes.n_hub_keys:
        hub = hub_keys(q, k, sizes.n_hub_keys, config.hub_sample, scale, generator, key_padding_mask, kernel)
    hash_into = _triton_cluster_orders if kernel == "triton" else cluster_orders
    q_order, k_order = hash_into(q, k, sizes.n_hashes, sizes.n_clusters, generator, config.hashing)
    plan = Plan(q_order, k_order, hub, key_padding_mask, sizes, scale, config.dedup == "estimate")
    out = _permuted_rounds(q, k, v, plan) if kernel == "triton" else gathered_rounds(q, k, v, plan, kernel)
    if not return_intermediates:
        return out
    return out, SmyrfIntermediates(q_order, k_order, sizes.q_cluster_size, sizes.k_cluster_size, hub)


def _triton_cluster_orders(*args):
    """`cluster_orders` in a few Triton launches (the same orders); triton is imported only here."""
    from .triton.hashing import cluster_orders as triton_cluster_orders

    return triton_cluster_orders(*args)


def _permuted_rounds(q, k, v, plan: Plan):
    """The CUDA route, imported here because it imports triton, which is optional and only
    reached once kernel "triton" was picked (and so found usable)."""
    from .cuda_route import permuted_rounds

    return permuted_rounds(q, k, v, plan)
