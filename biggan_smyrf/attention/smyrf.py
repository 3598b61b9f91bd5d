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
- gathered (CPU "flash", "chunked"): per-round sorted copies of q, k, v and per-round outputs,
  memory O(H * (N + M) * (d_qk + d_v)); scores never materialised by the flash kernel (O(chunk)
  by the chunked one).
- permuted ("triton", the CUDA default): Triton kernels read q, k, v through the round orders
  and merge each round's output into one float32 accumulator as they go (`triton_rounds.py`);
  the summaries' block means are summed one round at a time. Memory
  O((N + M) * (d_qk + d_v) + H * (N + M)).

Gradient through the combination: d out / d lse_r adds w_r g·(o_r - out) to lse_r's gradient,
and lse_r's gradient adds P_r times that to the scores. Folded into FlashAttention's backward,
    dS_r = P_r * (dP_r - rowsum(dO_r * out)),   dO_r = w_r * g,
i.e. the usual backward with the combined `out` in place of o_r. So the whole step is one
autograd Function around the fused kernels, with no score tensor kept for the backward. The
permuted route goes one step further: with norm_r = lse_r - log w_r, w_r P_r = exp(S_r - norm_r),
so a round's weighted output and its gradients need only norm_r, the combined output and its
gradient, all in token order (`round_normalisers`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .checks import check_qkv, default_scale
from .config import AttentionConfig
from .hashing import cluster_orders, hub_keys, make_generator
from .kernels import attention_backward, attention_forward, pick_kernel
from .summaries import (
    HUB_MASK_LOGIT, append_summaries, summarised, summary_features, summary_keys, summary_unit,
    unit_sums_through,
)



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
    (a CPU torch.Generator) or else from `seed` (default 0): same seed, bitwise same output.
    key_padding_mask: (B, M) bool, True = attend. With one cluster the result equals dense attention.
    return_intermediates: also return a `SmyrfIntermediates` (clusters and hub keys).
    """
    check_qkv(q, k, v, key_padding_mask)
    config = (config or AttentionConfig()).with_(kind="smyrf", **settings)
    (B, N, _), M = q.shape, k.shape[1]
    config.validate_for(N, M, "smyrf_attention")
    q_cluster_size, k_cluster_size = config.cluster_sizes(N, M)
    n_hub_keys, n_summaries = config.hub_keys_for(N, M), config.summaries_for(N, M)
    # The cluster kernel sees d_qk + 1 features when hub or summary keys add the logit offset.
    head_dim = max(q.shape[-1] + 1, v.shape[-1])
    kernel = pick_kernel(config.kernel, q.device, key_padding_mask is not None, q.dtype, head_dim)
    scale = default_scale(scale, q.shape[-1])
    generator = make_generator(generator, seed)

    hub = None
    if n_hub_keys:
        hub = hub_keys(q, k, n_hub_keys, config.hub_sample, scale, generator, key_padding_mask)
    q_order, k_order = cluster_orders(q, k, config.n_hashes, N // q_cluster_size, generator, config.hashing)
    plan = _Plan(q_order, k_order, hub, key_padding_mask, q_cluster_size, k_cluster_size, n_summaries, scale,
                 config.dedup == "estimate")
    out = _permuted_rounds(q, k, v, plan) if kernel == "triton" else _gathered_rounds(q, k, v, plan, kernel)
    if not return_intermediates:
        return out
    return out, SmyrfIntermediates(q_order, k_order, q_cluster_size, k_cluster_size, hub)


@dataclass
class _Plan:
    """One call's clusters and sizes, resolved; what either route needs besides q, k, v."""

    q_order: torch.Tensor  # (B, H, N)
    k_order: torch.Tensor  # (B, H, M)
    hub: Optional[torch.Tensor]  # (B, n_hub_keys) key indices
    key_padding_mask: Optional[torch.Tensor]
    q_cluster_size: int
    k_cluster_size: int
    n_summaries: int
    scale: float
    dedup: bool

    def hub_round(self, k: torch.Tensor, v: torch.Tensor):
        """(hub keys, their values, their mask), each None without hub keys."""
        if self.hub is None:
            return None, None, None
        mask = None if self.key_padding_mask is None else self.key_padding_mask.gather(1, self.hub)
        return _take(k, self.hub), _take(v, self.hub), mask


def _gathered_rounds(q, k, v, plan: _Plan, kernel: str):
    """Every round's clusters as gathered copies, the cluster kernel over them, then the round
    combination (CPU flash and chunked kernels). Memory O(H (N + M) (d_qk + d_v)) for the copies."""
    q_hashed, k_hashed = q, k
    if plan.hub is not None or plan.n_summaries:
        q_hashed, k_hashed = _with_logit_offset(q, k, plan.hub, plan.scale)
    qs, ks, vs = _gather(q_hashed, plan.q_order), _gather(k_hashed, plan.k_order), _gather(v, plan.k_order)
    mask = None if plan.key_padding_mask is None else plan.key_padding_mask.gather(1, plan.k_order.flatten(1))
    k_size = plan.k_cluster_size
    if plan.n_summaries:
        counted = _gather(summarised(k, plan.hub, plan.key_padding_mask), plan.k_order)
        ks, vs, mask = append_summaries(ks, vs, mask, counted, plan.k_cluster_size, plan.n_summaries, plan.scale)
        k_size += plan.n_summaries
    return _ClusteredAttention.apply(
        qs, ks, vs, plan.q_order, mask, q, *plan.hub_round(k, v),
        (plan.scale, plan.q_cluster_size, k_size, kernel, plan.dedup),
    )


def _permuted_rounds(q, k, v, plan: _Plan):
    """The Triton route (`triton_rounds.py`): kernels read q, k, v through the round orders and
    merge the rounds into one output as they go, so no per-round copy or output exists. Hub keys and padding
    become a logit bias; summary keys are appended after the keys, each cluster's at its own index,
    their block means summed one round at a time (`summaries.unit_sums_through`)."""
    k_order, k_cluster_size, n_summaries = plan.k_order, plan.k_cluster_size, plan.n_summaries
    B, H, M = k_order.shape
    n_clusters = M // k_cluster_size
    hub_round = plan.hub_round(k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bias = _logit_bias(k, plan.hub, plan.key_padding_mask, with_summaries=bool(n_summaries))
    k_index = k_order.view(B, H, n_clusters, k_cluster_size)
    if n_summaries:
        summary_k, summary_v, offset = _round_summaries(k, v, plan)
        k, v = torch.cat([k, summary_k.flatten(1, 3)], dim=1), torch.cat([v, summary_v.flatten(1, 3)], dim=1)
        bias = torch.cat([bias, offset.flatten(1)], dim=1)
        summary_index = M + torch.arange(H * n_clusters * n_summaries, device=k.device)
        summary_index = summary_index.view(1, H, n_clusters, n_summaries).expand(B, -1, -1, -1)
        k_index = torch.cat([k_index, summary_index], dim=3)
    return _PermutedRounds.apply(
        q, k, v, bias, plan.q_order, k_index.reshape(B, H, -1), *hub_round, (plan.scale, plan.q_cluster_size, plan.dedup)
    )


def _round_summaries(k, v, plan: _Plan):
    """Every round's summary keys, values and logit offsets (see `summaries.summary_keys`). A function
    of its own so that the float32 features (B, M, d_qk + d_v + 1) are freed before the rounds run."""
    M, k_cluster_size, n_summaries = k.shape[1], plan.k_cluster_size, plan.n_summaries
    features = summary_features(k, v, summarised(k, plan.hub, plan.key_padding_mask))
    unit_sums = unit_sums_through(plan.k_order, features, summary_unit(M, k_cluster_size, n_summaries))
    return summary_keys(unit_sums, M, k.shape[-1], k_cluster_size, n_summaries, (k.dtype, v.dtype))


def _logit_bias(k, hub, key_padding_mask, with_summaries: bool) -> Optional[torch.Tensor]:
    """(B, M) float32 logit offsets of the keys in the hashed rounds: HUB_MASK_LOGIT on hub keys
    (attended once, in the hub round), -inf on padding. None when there is nothing to add."""
    if hub is None and key_padding_mask is None and not with_summaries:
        return None
    bias = torch.zeros(k.shape[:2], dtype=torch.float32, device=k.device)
    if hub is not None:
        bias.scatter_(1, hub, HUB_MASK_LOGIT)
    if key_padding_mask is not None:
        bias.masked_fill_(~key_padding_mask, float("-inf"))
    return bias


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), index: (B, K) -> (B, K, d)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def _gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), order: (B, H, T) -> (B, H, T, d) with x's tokens in each round's order."""
    B, H, T = order.shape
    return _take(x, order.reshape(B, H * T)).view(B, H, T, x.shape[-1])


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


# The hub round is one long query run per batch element, and the kernels parallelise over runs
# (the CPU's) or over (run, key block) in the dK/dV backward (Triton's): cut the queries into runs
# that share the hub keys. CPU: 8 (2x faster on 2 cores at B=1). CUDA: 64, so that even batch 8 at
# 65,536 tokens gives the dK/dV kernel 8 x 64 x 2 programs, not one wave of 128 long ones for 132 SMs.
HUB_QUERY_PARTS = {"cpu": 8, "cuda": 64}


def _hub_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]):
    """(B, N, d) queries -> (B * P, N / P, d); hub keys, values and mask repeated P times."""
    B, N, _ = q.shape
    parts = math.gcd(N, HUB_QUERY_PARTS.get(q.device.type, 8))

    def repeat(x):
        return None if x is None else x[:, None].expand(B, parts, *x.shape[1:]).flatten(0, 1)

    return parts, q.reshape(B * parts, N // parts, -1), repeat(k), repeat(v), repeat(mask)


def _hub_round_forward(q, hub_k, hub_v, scale, kernel, hub_mask):
    B, N, _ = q.shape
    _, qp, kp, vp, mp = _hub_split(q, hub_k, hub_v, hub_mask)
    o, lse = attention_forward(qp, kp.contiguous(), vp.contiguous(), scale, kernel, mp)
    return o.reshape(B, N, -1), lse.reshape(B, N)


def _hub_round_backward(grad, q, hub_k, hub_v, out, lse, scale, kernel, hub_mask):
    B, N, _ = q.shape
    parts, qp, kp, vp, mp = _hub_split(q, hub_k, hub_v, hub_mask)
    dq, dk, dv = attention_backward(
        grad.reshape(qp.shape[0], qp.shape[1], -1), qp, kp.contiguous(), vp.contiguous(),
        out.reshape(qp.shape[0], qp.shape[1], -1), lse.reshape(qp.shape[:2]), scale, kernel, mp,
    )
    return dq.reshape(q.shape), dk.view(B, parts, *dk.shape[1:]).sum(1), dv.view(B, parts, *dv.shape[1:]).sum(1)


def _weighted(grad: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w[..., None] * grad, (B, N, d) in `dtype`: computed in float32 and written straight into
    `dtype`, the values of `(w * grad).to(dtype)` without its float32 (B, N, d) temporary, which
    was the backward's largest."""
    return torch.mul(grad, w[..., None], out=torch.empty(grad.shape, dtype=dtype, device=grad.device))


def log_participation(lse: torch.Tensor) -> torch.Tensor:
    """log((sum_r e^l_r)^2 / sum_r e^(2 l_r)) over dim 1: log of the effective number of rounds."""
    return 2 * torch.logsumexp(lse, dim=1, keepdim=True) - torch.logsumexp(2 * lse, dim=1, keepdim=True)


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
            o_hub, lse_hub = _hub_round_forward(q, hub_k, hub_v, scale, kernel, hub_mask)
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
            grad_hub = _weighted(grad_out, w_hub, q.dtype)
            dq, d_hub_k, d_hub_v = _hub_round_backward(grad_hub, q, hub_k, hub_v, out, lse_hub, scale, kernel, hub_mask)
        return (
            dqs.reshape(qs.shape), dks.reshape(ks.shape), dvs.reshape(vs.shape), None, None,
            dq, d_hub_k, d_hub_v, None, None,
        )


def round_normalisers(lse: torch.Tensor, lse_hub: Optional[torch.Tensor], dedup: bool):
    """norm_r = lse_r - log w_r, (B, H, N), and the hub round's weight w_hub (B, N) or None.

    exp(s - norm_r) = w_r exp(s - lse_r): a round's probabilities already carrying its weight,
    which is all the permuted backward needs of the combination. The weights are the gathered
    route's (softmax over the rounds' logsumexps, dedup-corrected against the hub round). A round
    whose cluster held only masked keys (lse = -inf) gets norm = +inf: it adds nothing.
    """
    H = lse.shape[1]
    logits = lse
    if lse_hub is not None:
        if dedup and H > 1:
            logits = lse - log_participation(lse)
        logits = torch.cat([logits, lse_hub[:, None].to(lse.dtype)], dim=1)
    log_w = torch.log_softmax(logits, dim=1)
    norm = torch.where(torch.isneginf(lse), torch.inf, lse - log_w[:, :H])
    return norm.contiguous(), None if lse_hub is None else log_w[:, H].exp()


class _PermutedRounds(torch.autograd.Function):
    """The hashed rounds through `triton_rounds.Rounds` (merged into one float32 output as they
    go), the hub round through the cluster kernel, then their weighted sum. Backward: the hashed
    rounds' kernels take the combined output's gradient in token order; the hub round's is the
    gathered route's."""

    @staticmethod
    def forward(ctx, q, k, v, bias, q_order, k_index, hub_k, hub_v, hub_mask, config):
        from .triton_rounds import Rounds

        scale, q_cluster_size, dedup = config
        rounds = Rounds(q, k, v, bias, q_order, k_index, q_cluster_size, scale)
        out, lse = rounds.forward()  # the hashed rounds, weighted softmax_r(lse_r) among themselves
        o_hub = lse_hub = None
        if hub_k is not None:
            o_hub, lse_hub = _hub_round_forward(q, hub_k, hub_v, scale, "triton", hub_mask)
        norm, w_hub = round_normalisers(lse, lse_hub, dedup)
        if o_hub is not None:
            # Dedup shifts every hashed round alike, so it changes only the hub round's share.
            # addcmul_ reads o_hub in its own dtype: no float32 copy of a (B, N, d_v) output.
            w = w_hub[..., None]
            out.mul_(1 - w).addcmul_(o_hub, w)
            if out.dtype != q.dtype:  # o_hub's buffer, spent, takes the result: one (B, N, d_v) less at the peak
                out = o_hub.copy_(out)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, bias, q_order, k_index, norm, out, hub_k, hub_v, hub_mask, lse_hub, w_hub)
        ctx.config = config
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from .triton_kernels import row_dot
        from .triton_rounds import Rounds

        q, k, v, bias, q_order, k_index, norm, out, hub_k, hub_v, hub_mask, lse_hub, w_hub = ctx.saved_tensors
        scale, q_cluster_size, _ = ctx.config
        rounds = Rounds(q, k, v, bias, q_order, k_index, q_cluster_size, scale)
        delta = row_dot(grad_out, out)
        dq_hub = d_hub_k = d_hub_v = None
        if hub_k is not None:
            # Before the hashed rounds: its weighted gradient (B, N, d_v) is freed before their
            # float32 accumulators exist, so the two never add up in the peak.
            grad_hub = _weighted(grad_out, w_hub, q.dtype)
            dq_hub, d_hub_k, d_hub_v = _hub_round_backward(grad_hub, q, hub_k, hub_v, out, lse_hub, scale, "triton", hub_mask)
            del grad_hub
        dq, dk, dv = rounds.backward(grad_out, norm, delta)
        if dq_hub is not None:
            dq += dq_hub
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, d_hub_k, d_hub_v, None, None
