"""SMYRF's permuted route, the CUDA default (kernel "triton"): rounds read through the sort orders.

Triton kernels (`triton/rounds.py`) read q, k, v in token order through each round's cluster
orders and merge every round's output into one float32 accumulator as they go, so no per-round
copy or output exists: memory O((N + M) (d_qk + d_v) + H (N + M)) where the gathered route
(`gathered_route.py`) needs O(H (N + M) (d_qk + d_v)). Hub keys and padding become a logit bias;
summary keys are rows appended after the keys (`triton/summaries.py`). The hub round runs through
the "triton" cluster kernel (`plan.py`). Backward: with norm_r = lse_r - log w_r (the combination
of `plan.round_normalisers`, fused in `triton/combine.py`), a round's weighted probabilities are
exp(S_r - norm_r), so the kernels need only norm, the combined output and its gradient, all in
token order (see `smyrf.py`).

The whole call is one autograd Function with a written-out backward, and every step between the
kernels is a kernel too (`triton/buffers.py` lays the inputs out and cuts the gradients back), so
a forward + backward launches a fixed, small number of kernels whatever the sizes (counted by
`benchmarks/host_cost.py`), with no host->device copy or sync.

This module imports triton: `smyrf.py` imports it only once this route is chosen.
"""
from __future__ import annotations

import torch

from .plan import Plan, hub_round_forward, hub_split, weighted
from .summaries import HUB_MASK_LOGIT
from .triton.blocks import row_dot
from .triton import clusters
from .triton.buffers import gradient_accumulators, route_gradients, route_inputs
from .triton.combine import combine_rounds
from .triton.hub import add_hub_gradients
from .triton.rounds import Rounds
from .triton.summaries import fold_summary_grads, write_summaries


def permuted_rounds(q, k, v, plan: Plan):
    """SMYRF's rounds on the CUDA route: one autograd Function around the kernels (module docstring)."""
    return _PermutedRounds.apply(q, k, v, plan)


def _prepared(q, k, v, plan: Plan):
    """The kernels' buffers in token order (`triton.buffers.route_inputs`): q padded to the kernels'
    head width; keys, values and their logit bias with every round's summary rows appended after
    the keys (`triton.summaries.write_summaries`, a cluster's at its own index); the bias holds
    HUB_MASK_LOGIT on hub keys (attended once, in the hub round) and -inf on padding. And k_index,
    each round's clusters of key rows: the round's order, then the cluster's summary rows."""
    sizes, hub = plan.sizes, plan.hub
    B, H, M = plan.k_order.shape
    n_clusters, n_summaries = sizes.n_clusters, sizes.n_summaries
    extra = H * n_clusters * n_summaries
    q, k, v, bias = route_inputs(q, k, v, plan.key_padding_mask, extra, with_bias=hub is not None or bool(n_summaries))
    if hub is not None:
        bias.scatter_(1, hub, HUB_MASK_LOGIT)
    k_index = plan.k_order
    if n_summaries:
        write_summaries(k, v, bias, plan.k_order, sizes)
        rows = torch.arange(M, M + extra, device=k.device).view(1, H, n_clusters, n_summaries).expand(B, -1, -1, -1)
        k_index = torch.cat([plan.k_order.view(B, H, n_clusters, -1), rows], dim=3).view(B, H, -1)
    return q, k, v, bias, k_index


def hub_round_backward_into(grad, q, hub_k, hub_v, out, lse, scale, hub_mask, hub, dq_acc, dk_acc, dv_acc):
    """The hub round's gradients (`plan.hub_round_backward`) added into the route's float32
    accumulators: dq into dq_acc (B, N, d_qk, contiguous), the hub keys' dK and dV into dk_acc /
    dv_acc (B, M', d) at their token rows `hub` (B, n_hub). Launches: the row dot, the cluster
    backward (one kernel, two in deterministic mode) and one that sums the P query runs' key
    gradients into dk_acc and dv_acc."""
    _, qp, kp, vp, mp = hub_split(q, hub_k, hub_v, hub_mask, "triton")
    G, Lq = qp.shape[:2]
    # Key gradients per query run in float32, so that the sum over the runs rounds once.
    _, dk, dv = clusters.backward(grad.reshape(G, Lq, -1), qp, kp, vp, out.reshape(G, Lq, -1), lse.reshape(G, Lq),
                                  scale, mp, dq_acc=dq_acc.view(G, Lq, -1), key_grad_dtype=torch.float32)
    add_hub_gradients(dk, dv, hub, dk_acc, dv_acc)


class _PermutedRounds(torch.autograd.Function):
    """The hashed rounds through `triton.rounds.Rounds` (merged into one float32 accumulator as they
    go), the hub round through the cluster kernel, then both combined in one kernel
    (`triton.combine`). The backward is written out, not traced: the hashed rounds' kernels take the
    combined output's gradient in token order, the hub round's is the gathered route's, the summary
    rows' gradients are folded into the keys they average (`triton.summaries.fold_summary_grads`),
    all added into one set of float32 accumulators that one kernel cuts back to the inputs' shapes
    and dtypes (`triton.buffers`). So a call launches the same few kernels at any size."""

    @staticmethod
    def forward(ctx, q, k, v, plan: Plan):
        scale, sizes = plan.scale, plan.sizes
        dtypes, d_qk, M = (q.dtype, k.dtype, v.dtype), q.shape[-1], k.shape[1]
        q_pad, k_ext, v_ext, bias, k_index = _prepared(q, k, v, plan)
        rounds = Rounds(q_pad, k_ext, v_ext, bias, plan.q_order, k_index, sizes, scale)
        out_acc, run_sum, lse = rounds.forward(normalise=False)
        o_hub = lse_hub = None
        hub_k, hub_v, hub_mask = plan.hub_round(k_ext, v_ext)
        if hub_k is not None:
            o_hub, lse_hub = hub_round_forward(q_pad, hub_k, hub_v, scale, "triton", hub_mask)
        out, norm, w_hub = combine_rounds(out_acc, run_sum, lse, o_hub, lse_hub, plan.dedup, q.dtype)
        del out_acc, run_sum, lse
        ctx.save_for_backward(q_pad, k_ext, v_ext, bias, plan.q_order, k_index, plan.k_order, norm, out,
                              hub_k, hub_v, hub_mask, plan.hub, lse_hub, w_hub)
        ctx.config = (scale, sizes, dtypes, d_qk, M)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, q_order, k_index, k_order, norm, out, hub_k, hub_v, hub_mask, hub, lse_hub, w_hub = ctx.saved_tensors
        scale, sizes, dtypes, d_qk, M = ctx.config
        grad_out = grad_out.to(q.dtype).contiguous()
        delta = row_dot(grad_out, out)
        dq, dk, dv = gradient_accumulators(q.shape[0], q.shape[1], k.shape[1], q.shape[-1], v.shape[-1], q.device)
        if hub_k is not None:
            # Before the hashed rounds: its weighted gradient (B, N, d_v) is freed before they run.
            # The hub keys' rows get their gradient at `hub`, added to the accumulators like the rest.
            grad_hub = weighted(grad_out, w_hub, q.dtype)
            hub_round_backward_into(grad_hub, q, hub_k, hub_v, out, lse_hub, scale, hub_mask, hub, dq, dk, dv)
            del grad_hub
        Rounds(q, k, v, bias, q_order, k_index, sizes, scale).backward(grad_out, norm, delta, into=(dq, dk, dv))
        if sizes.n_summaries:
            fold_summary_grads(dk, dv, bias, k_order, sizes)
        return (*route_gradients(dq, dk, dv, d_qk, M, dtypes), None)
