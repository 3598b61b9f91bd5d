"""SMYRF's clustering: asymmetric transform, LSH projections, balanced cuts by sorting.

Everything here runs without gradients and in float32 (half-precision norms would make the
XBOX+ radicand negative). Cost per round: O((N + M) * d) for the projection and
O((N + M) log(N + M)) for the sort; memory O(n_hashes * (N + M)) for the orders.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import HASHINGS, Hashing


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
    global RNG is never touched, then copied to `device` asynchronously (`to_device`). E2LSH's offset b and bucket width r only shift and scale the
    projection, so they do not change the sort order and are left out.
    """
    return to_device(torch.randn(dim, n_hashes, generator=generator), device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU draw moved to `device` without making the host wait: on CUDA a plain copy from pageable
    memory synchronises with the GPU (once per SMYRF call, inside every training step); from pinned
    memory it is an asynchronous copy that the allocator keeps alive until it is done."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def cluster_orders(
    q: torch.Tensor,
    k: torch.Tensor,
    n_hashes: int,
    n_clusters: int,
    generator: torch.Generator,
    hashing: Hashing = "kd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per round, an ordering of queries and of keys whose consecutive runs are the clusters.

    Returns q_order (B, n_hashes, N) and k_order (B, n_hashes, M), int64 token indices. Cutting
    q_order into n_clusters runs of N / n_clusters and k_order into runs of M / n_clusters gives
    balanced clusters: every cluster has exactly its size, none is empty, none crosses a batch
    element. The hashings:
      "xbox"   the paper's recipe: XBOX+, one E2LSH projection per round, sort, cut.
      "kd"     XBOX+, then a balanced k-d split per round: cut into f equal parts along a random
               direction, then each part along its own direction, for each prime factor f of
               n_clusters. Cells are compact instead of thin slabs, so neighbours share a
               cluster more often. Same O((N + M) log(N + M)) cost per level.
      "random" random balanced clusters of the same sizes: the baseline any hashing must beat.
    """
    if hashing == "random":
        (B, N), M = q.shape[:2], k.shape[1]
        keys = to_device(torch.rand(B, n_hashes, N + M, generator=generator), q.device)
        return keys[..., :N].argsort(-1), keys[..., N:].argsort(-1)
    q_ext, k_ext = xbox_plus(q, k)
    if hashing == "xbox":
        a = random_projections(q_ext.shape[-1], n_hashes, generator, q.device)
        q_order = torch.argsort(q_ext @ a, dim=1).transpose(1, 2)
        k_order = torch.argsort(k_ext @ a, dim=1).transpose(1, 2)
        return q_order.contiguous(), k_order.contiguous()
    if hashing == "kd":
        q_order = _identity_orders(q_ext, n_hashes)
        k_order = _identity_orders(k_ext, n_hashes)
        nodes = 1
        for factor in prime_factors(n_clusters):
            # One direction per (round, node), shared by the node's queries and keys.
            a = to_device(torch.randn(n_hashes, nodes, q_ext.shape[-1], generator=generator), q.device)
            q_order = _sort_within_nodes(q_ext, q_order, a)
            k_order = _sort_within_nodes(k_ext, k_order, a)
            nodes *= factor
        return q_order, k_order
    raise ValueError(f"hashing must be one of {HASHINGS}, got {hashing!r}")


def prime_factors(n: int) -> list[int]:
    """Largest first: the widest split happens at the root, where directions see the most points."""
    factors, f = [], 2
    while f * f <= n:
        while n % f == 0:
            factors.append(f)
            n //= f
        f += 1
    if n > 1:
        factors.append(n)
    return sorted(factors, reverse=True)


def _identity_orders(x: torch.Tensor, n_hashes: int) -> torch.Tensor:
    B, T = x.shape[:2]
    return torch.arange(T, device=x.device).expand(B, n_hashes, T).contiguous()


def _sort_within_nodes(x: torch.Tensor, order: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Re-sort each node's run of `order` by the projection on that node's direction.

    x: (B, T, D), order: (B, H, T) current cut into `nodes` equal runs, directions: (H, nodes, D).
    Afterwards every run, cut into `factor` equal pieces, gives the children of that node.
    """
    B, H, T = order.shape
    nodes = directions.shape[1]
    # Project every point on every direction of this level (H * nodes columns, cheap), then pick
    # each point's own node's value: one float gathered per point instead of its D features.
    projections = torch.einsum("btd,hnd->bhnt", x, directions)
    runs = order.view(B, H, nodes, T // nodes)
    within = projections.gather(3, runs).argsort(dim=-1)
    return runs.gather(-1, within).view(B, H, T)


@torch.no_grad()
def hub_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    n_hub: int,
    n_sample: int,
    scale: float,
    generator: torch.Generator,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The n_hub keys that receive the most attention mass from a random sample of queries.

    Peaky attention maps (BigGAN's) send much of all mass to a few keys; giving every query those
    keys exactly once removes the largest error of any clustering. Cost O(n_sample * M * d) time;
    the sampled queries' probabilities are summed a chunk at a time, so memory stays within
    HUB_SCORES floats (at batch 32 and 65,536 tokens all 256 at once would be 0.5 GiB of logits
    plus as much again for their softmax). Returns (B, n_hub) key indices.
    """
    (B, N, _), M = q.shape, k.shape[1]
    pick = to_device(torch.randperm(N, generator=generator)[: min(n_sample, N)], q.device)
    sampled, keys = q[:, pick].float(), k.float()
    mass = keys.new_zeros(B, M)
    step = max(1, HUB_SCORES // (B * M))
    for start in range(0, sampled.shape[1], step):
        logits = scale * torch.einsum("bsd,bmd->bsm", sampled[:, start:start + step], keys)
        if key_padding_mask is not None:
            logits = logits.masked_fill(~key_padding_mask[:, None, :], float("-inf"))
        mass += torch.softmax(logits, dim=-1).nan_to_num(0.0).sum(1)
    return mass.topk(n_hub, dim=-1).indices


# Scores hub_keys holds at once: 2^22 float32 = 16 MiB (at batch 1 and 16,384 keys, all 256 queries).
HUB_SCORES = 1 << 22


def make_generator(generator: Optional[torch.Generator], seed: Optional[int]) -> torch.Generator:
    """The caller's CPU generator, or a fresh one seeded with `seed` (default 0)."""
    if generator is not None:
        if generator.device.type != "cpu":
            raise ValueError("SMYRF draws its projections on the CPU: pass a CPU torch.Generator")
        return generator
    return torch.Generator().manual_seed(0 if seed is None else seed)
