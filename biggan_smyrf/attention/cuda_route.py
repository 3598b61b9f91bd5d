"""SMYRF's permuted route, the CUDA default (kernel "triton"): rounds read through the sort orders.

Triton kernels (`triton/rounds.py`) read q, k, v in token order through each round's cluster
orders and merge every round's output into one float32 accumulator as they go, so no per-round
copy or output exists: memory O((N + M) (d_qk + d_v) + H (N + M)) where the gathered route
(`gathered_route.py`) needs O(H (N + M) (d_qk + d_v)). Hub keys and padding become a logit bias;
summary keys are appended after the keys, their block means summed one round at a time. The hub
round runs through the "triton" cluster kernel (`plan.py`). Backward: with norm_r = lse_r - log w_r
(`plan.round_normalisers`), a round's weighted probabilities are exp(S_r - norm_r), so the kernels
need only norm, the combined output and its gradient, all in token order (see `smyrf.py`).

This module imports triton: `smyrf.py` imports it only once this route is chosen.
"""
from __future__ import annotations

from typing import Optional

import torch

from .cluster_attention import pad_features
from .plan import Plan, hub_round_backward, hub_round_forward, round_normalisers, weighted
from .summaries import HUB_MASK_LOGIT, summarised, summary_features, summary_keys, unit_sums_through
from .triton.blocks import head_block, row_dot
from .triton.rounds import Rounds


def permuted_rounds(q, k, v, plan: Plan):
    """The Triton route (`triton/rounds.py`): kernels read q, k, v through the round orders and
    merge the rounds into one output as they go, so no per-round copy or output exists. Hub keys and padding
    become a logit bias; summary keys are appended after the keys, each cluster's at its own index,
    their block means summed one round at a time (`summaries.unit_sums_through`)."""
    k_order, sizes = plan.k_order, plan.sizes
    B, H, M = k_order.shape
    n_clusters, k_cluster_size, n_summaries = sizes.n_clusters, sizes.k_cluster_size, sizes.n_summaries
    # q and k padded to the kernels' 16 features (zeros change no logit; autograd slices the padding
    # off their gradients): 32-byte rows in bf16 that every kernel, the hub round's too, reads in
    # 16-byte vectors. It takes the place of the contiguous copy of BigGAN's channels-first views.
    d_qk = head_block(q.shape[-1])
    q, k, v = pad_features(q, d_qk), pad_features(k, d_qk), v.contiguous()
    hub_round = plan.hub_round(k, v)
    bias = _logit_bias(k, plan.hub, plan.key_padding_mask, with_summaries=bool(n_summaries))
    k_index = k_order.view(B, H, n_clusters, k_cluster_size)
    if n_summaries:
        summary_k, summary_v, offset = _round_summaries(k, v, plan)
        k, v = torch.cat([k, summary_k.flatten(1, 3)], dim=1), torch.cat([v, summary_v.flatten(1, 3)], dim=1)
        bias = torch.cat([bias, offset.flatten(1)], dim=1)
        summary_index = torch.arange(M, M + H * n_clusters * n_summaries, device=k.device)
        summary_index = summary_index.view(1, H, n_clusters, n_summaries).expand(B, -1, -1, -1)
        k_index = torch.cat([k_index, summary_index], dim=3)
    return _PermutedRounds.apply(
        q, k, v, bias, plan.q_order, k_index.reshape(B, H, -1), *hub_round, (plan.scale, sizes, plan.dedup)
    )


def _round_summaries(k, v, plan: Plan):
    """Every round's summary keys, values and logit offsets (see `summaries.summary_keys`). A function
    of its own so that the float32 features (B, M, d_qk + d_v + 1) are freed before the rounds run."""
    features = summary_features(k, v, summarised(k, plan.hub, plan.key_padding_mask))
    unit_sums = unit_sums_through(plan.k_order, features, plan.sizes.summary_unit)
    return summary_keys(unit_sums, plan.sizes, k.shape[-1], (k.dtype, v.dtype))


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


class _PermutedRounds(torch.autograd.Function):
    """The hashed rounds through `triton.rounds.Rounds` (merged into one float32 output as they
    go), the hub round through the cluster kernel, then their weighted sum. Backward: the hashed
    rounds' kernels take the combined output's gradient in token order; the hub round's is the
    gathered route's."""

    @staticmethod
    def forward(ctx, q, k, v, bias, q_order, k_index, hub_k, hub_v, hub_mask, config):
        scale, sizes, dedup = config
        rounds = Rounds(q, k, v, bias, q_order, k_index, sizes, scale)
        out, lse = rounds.forward()  # the hashed rounds, weighted softmax_r(lse_r) among themselves
        o_hub = lse_hub = None
        if hub_k is not None:
            o_hub, lse_hub = hub_round_forward(q, hub_k, hub_v, scale, "triton", hub_mask)
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
        q, k, v, bias, q_order, k_index, norm, out, hub_k, hub_v, hub_mask, lse_hub, w_hub = ctx.saved_tensors
        scale, sizes, _ = ctx.config
        rounds = Rounds(q, k, v, bias, q_order, k_index, sizes, scale)
        delta = row_dot(grad_out, out)
        dq_hub = d_hub_k = d_hub_v = None
        if hub_k is not None:
            # Before the hashed rounds: its weighted gradient (B, N, d_v) is freed before their
            # float32 accumulators exist, so the two never add up in the peak.
            grad_hub = weighted(grad_out, w_hub, q.dtype)
            dq_hub, d_hub_k, d_hub_v = hub_round_backward(grad_hub, q, hub_k, hub_v, out, lse_hub, scale, "triton", hub_mask)
            del grad_hub
        dq, dk, dv = rounds.backward(grad_out, norm, delta)
        if dq_hub is not None:
            dq += dq_hub
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, d_hub_k, d_hub_v, None, None
