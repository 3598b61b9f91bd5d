"""SMYRF's clustering: asymmetric transform, LSH projections, balanced cuts by sorting.

Everything here runs without gradients and in float32 (half-precision norms would make the
XBOX+ radicand negative). Cost per round: O((N + M) * d) for the projection and
O((N + M) log(N + M)) for the sort; memory O(n_hashes * (N + M)) for the orders.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

Hashing = Literal["xbox", "random"]


def xbox_plus(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """XBOX+ (SMYRF eq. 7): map maximum inner product search to nearest neighbour search.

    q: (B, N, d), k: (B, M, d) -> (B, N, d + 2), (B, M, d + 2). With MQ, MK the largest query and
    key norms of each batch element, q -> [q, 0, sqrt(MQ²+MK²-|q|²)], k -> [k, sqrt(MQ²+MK²-|k|²), 0].
    Every transformed vector then has norm sqrt(MQ²+MK²), so |q' - k'|² = const - 2 q·k.
    """
    q, k = q.float(), k.float()
    q_sq = q.pow(2).sum(-1, keepdim=True)
    k_sq = k.pow(2).sum(-1, keepdim=True)
    total = q_sq.amax(dim=1, keepdim=True) + k_sq.amax(dim=1, keepdim=True)
    # The clamp guards against tiny negative radicands from rounding (fp16/bf16 inputs).
    q_ext = torch.sqrt((total - q_sq).clamp_min(0))
    k_ext = torch.sqrt((total - k_sq).clamp_min(0))
    zeros_q, zeros_k = torch.zeros_like(q_sq), torch.zeros_like(k_sq)
    return torch.cat([q, zeros_q, q_ext], dim=-1), torch.cat([k, k_ext, zeros_k], dim=-1)


def random_projections(dim: int, n_hashes: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """E2LSH directions a ~ N(0, I), (dim, n_hashes).

    Drawn on the CPU from the caller's generator, so results do not depend on the device and the
    global RNG is never touched. E2LSH's offset b and bucket width r only shift and scale the
    projection, so they do not change the sort order and are left out.
    """
    return torch.randn(dim, n_hashes, generator=generator).to(device)


@torch.no_grad()
def cluster_orders(
    q: torch.Tensor,
    k: torch.Tensor,
    n_hashes: int,
    generator: torch.Generator,
    hashing: Hashing = "xbox",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per round, an ordering of queries and of keys whose consecutive runs are the clusters.

    Returns q_order (B, n_hashes, N) and k_order (B, n_hashes, M), int64 token indices. Cutting
    q_order into runs of q_cluster_size and k_order into runs of k_cluster_size gives balanced
    clusters: every cluster has exactly its size, none is empty, none crosses a batch element.
    hashing="random" gives random balanced clusters of the same sizes, the baseline SMYRF must beat.
    """
    if hashing == "xbox":
        q_ext, k_ext = xbox_plus(q, k)
        a = random_projections(q_ext.shape[-1], n_hashes, generator, q.device)
        q_order = torch.argsort(q_ext @ a, dim=1).transpose(1, 2)
        k_order = torch.argsort(k_ext @ a, dim=1).transpose(1, 2)
        return q_order.contiguous(), k_order.contiguous()
    if hashing == "random":
        (B, N), M = q.shape[:2], k.shape[1]
        keys = torch.rand(B, n_hashes, N + M, generator=generator).to(q.device)
        return keys[..., :N].argsort(-1), keys[..., N:].argsort(-1)
    raise ValueError(f"hashing must be 'xbox' or 'random', got {hashing!r}")


def make_generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
    """The caller's CPU generator, or a fresh one seeded with `seed` (default 0)."""
    if generator is not None:
        if generator.device.type != "cpu":
            raise ValueError("SMYRF draws its projections on the CPU: pass a CPU torch.Generator")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else seed)
