"""What both SMYRF routes share: the plan of one call, the hub round and the round combination.

`Plan` is one call's clusters and sizes, resolved by `smyrf.py`; the gathered route
(`gathered_route.py`) and the permuted route (`cuda_route.py`) take it with q, k, v. The hub round
(every query against the hub keys) runs through the cluster kernel on either route, so its forward
and backward live here, with the round weights (`log_participation` for dedup, `round_normalisers`
for the permuted route's backward, `weighted` for the hub round's share of the gradient). A module
of its own so that neither route reaches into the other, and free of triton.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .cluster_attention import attention_backward, attention_forward
from .config import SmyrfSizes


@dataclass
class Plan:
    """One call's clusters and sizes, resolved; what either route needs besides q, k, v."""

    q_order: torch.Tensor  # (B, H, N)
    k_order: torch.Tensor  # (B, H, M)
    hub: Optional[torch.Tensor]  # (B, n_hub_keys) key indices
    key_padding_mask: Optional[torch.Tensor]
    sizes: SmyrfSizes
    scale: float
    dedup: bool

    def hub_round(self, k: torch.Tensor, v: torch.Tensor):
        """(hub keys, their values, their mask), each None without hub keys."""
        if self.hub is None:
            return None, None, None
        mask = None if self.key_padding_mask is None else self.key_padding_mask.gather(1, self.hub)
        return take(k, self.hub), take(v, self.hub), mask


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: (B, T, d), index: (B, K) -> (B, K, d)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


# The hub round is one long query run per batch element, and the kernels parallelise over runs
# (the CPU's) or over (run, key block) in the dK/dV backward (Triton's): cut the queries into runs
# that share the hub keys. CPU: 8 (2x faster on 2 cores at B=1). CUDA: 64, so that even batch 8 at
# 65,536 tokens gives the dK/dV kernel 8 x 64 x 2 programs, not one wave of 128 long ones for 132 SMs.
HUB_QUERY_PARTS = {"cpu": 8, "cuda": 64}


def hub_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], kernel: str):
    """(B, N, d) queries -> (B * P, N / P, d). The "triton" kernel reads one copy of the hub keys,
    values and mask per batch element for its P query runs (as they are); the other kernels get
    them repeated P times, contiguous."""
    B, N, _ = q.shape
    parts = math.gcd(N, HUB_QUERY_PARTS.get(q.device.type, 8))

    def repeat(x):
        if x is None or kernel == "triton":
            return x
        return x[:, None].expand(B, parts, *x.shape[1:]).flatten(0, 1).contiguous()

    return parts, q.reshape(B * parts, N // parts, -1), repeat(k), repeat(v), repeat(mask)


def hub_round_forward(q, hub_k, hub_v, scale, kernel, hub_mask):
    """Every query against the hub keys: (out (B, N, d_v), lse (B, N)). One launch with "triton"."""
    B, N, _ = q.shape
    _, qp, kp, vp, mp = hub_split(q, hub_k, hub_v, hub_mask, kernel)
    o, lse = attention_forward(qp, kp, vp, scale, kernel, mp)
    return o.reshape(B, N, -1), lse.reshape(B, N)


def hub_round_backward(grad, q, hub_k, hub_v, out, lse, scale, kernel, hub_mask):
    """The hub round's gradients: (dq (B, N, d_qk), d_hub_k (B, n_hub, d_qk), d_hub_v (B, n_hub, d_v)).
    (The CUDA route adds them into its own accumulators instead: `cuda_route.hub_round_backward_into`.)"""
    B, N, _ = q.shape
    parts, qp, kp, vp, mp = hub_split(q, hub_k, hub_v, hub_mask, kernel)
    G, Lq = qp.shape[:2]
    dq, dk, dv = attention_backward(
        grad.reshape(G, Lq, -1), qp, kp, vp, out.reshape(G, Lq, -1), lse.reshape(G, Lq), scale, kernel, mp,
    )
    return dq.reshape(q.shape), dk.view(B, parts, *dk.shape[1:]).sum(1), dv.view(B, parts, *dv.shape[1:]).sum(1)


def weighted(grad: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w[..., None] * grad, (B, N, d) in `dtype`: computed in float32 and written straight into
    `dtype`, the values of `(w * grad).to(dtype)` without its float32 (B, N, d) temporary, which
    was the backward's largest."""
    return torch.mul(grad, w[..., None], out=torch.empty(grad.shape, dtype=dtype, device=grad.device))


def log_participation(lse: torch.Tensor) -> torch.Tensor:
    """log((sum_r e^l_r)^2 / sum_r e^(2 l_r)) over dim 1: log of the effective number of rounds;
    0 where no round saw a key (every l_r = -inf), whose rounds then carry no weight at all."""
    first = torch.logsumexp(lse, dim=1, keepdim=True)
    return torch.where(first.isneginf(), 0.0, 2 * first - torch.logsumexp(2 * lse, dim=1, keepdim=True))


def round_normalisers(lse: torch.Tensor, lse_hub: Optional[torch.Tensor], dedup: bool):
    """norm (B, H, N) with exp(s - norm) = w_r exp(s - lse_r), and the hub round's weight w_hub
    (B, N) or None.

    exp(s - norm) is a round's probabilities already carrying its weight, which is all the permuted
    backward needs of the combination. The weights are the gathered route's: w_r = softmax over
    the rounds' logsumexps, each lowered by the dedup correction lp (the same for every round)
    against the hub round. So log w_r = lse_r - lp - L with L = logsumexp(lse - lp, lse_hub), and
    norm = lse_r - log w_r = lp + L is one value per query, for every round: a (B, 1, N) tensor
    seen as (B, H, N). Where every round's cluster held only masked keys (L = -inf), norm = +inf:
    those rounds add nothing.
    """
    H = lse.shape[1]
    hashed = torch.logsumexp(lse, dim=1, keepdim=True)
    if lse_hub is None:
        return hashed.nan_to_num_(neginf=torch.inf).expand_as(lse), None
    lp = None
    if dedup and H > 1:
        lp = log_participation(lse)
        hashed = hashed - lp
    total = torch.logaddexp(hashed, lse_hub[:, None].to(lse.dtype))
    w_hub = torch.exp(lse_hub - total[:, 0])
    norm = total if lp is None else total + lp
    return norm.nan_to_num_(neginf=torch.inf).expand_as(lse), w_hub
