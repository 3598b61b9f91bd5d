"""How far SMYRF is from dense attention on the current model, block by block.

For each attention block, on one fixed batch and without gradients:
- `error`: ‖out_smyrf − out_dense‖ / ‖out_dense‖ of the block's attention output;
- `mass_share`: the share of dense attention mass that SMYRF's clusters (and hub keys) cover
  exactly (1 = nothing missed); summary keys see the rest only as block means, so with summaries
  `error` can be small although this share is low;
- `cluster_map`: each query pixel of the first image coloured by its cluster in round 1 (the
  SMYRF paper's cluster visualisation).
The clusters are recomputed with the same generator seed as the SMYRF call, so they are the
clusters that produced `error`. Cost: one dense and one SMYRF attention per block, plus the
mass share in query chunks of O(chunk · M) memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biggan_smyrf.attention import AttentionConfig, attend
from biggan_smyrf.attention.hashing import cluster_orders, hub_keys
from biggan_smyrf.models import attention, attention_blocks, capture_qkv

QUERY_CHUNK = 1024


@dataclass
class BlockDiagnostics:
    resolution: int
    error: float
    mass_share: float
    cluster_map: torch.Tensor  # uint8 (3, H, W)


def cluster_ids(q, k, config: AttentionConfig, generator: torch.Generator):
    """Per round, the cluster of every query (B, H, N) and key (B, H, M); and the hub keys or None."""
    (B, N, _), M = q.shape, k.shape[1]
    q_size, k_size = config.cluster_sizes(N, M)
    n_hubs = config.hub_keys_for(N, M)
    hubs = hub_keys(q, k, n_hubs, config.hub_sample, 1.0, generator) if n_hubs else None
    q_order, k_order = cluster_orders(q, k, config.n_hashes, N // q_size, generator, config.hashing)
    q_ids = torch.empty_like(q_order).scatter_(2, q_order, torch.arange(N).expand_as(q_order) // q_size)
    k_ids = torch.empty_like(k_order).scatter_(2, k_order, torch.arange(M).expand_as(k_order) // k_size)
    return q_ids, k_ids, hubs


def covered_mass(q, k, q_ids, k_ids, hubs) -> float:
    """Mean over queries of the dense attention mass on keys sharing a cluster (or hubs)."""
    total, N = 0.0, q.shape[1]
    for start in range(0, N, QUERY_CHUNK):
        probs = torch.softmax(q[:, start:start + QUERY_CHUNK].float() @ k.float().transpose(1, 2), dim=-1)
        same = (q_ids[:, :, start:start + QUERY_CHUNK, None] == k_ids[:, :, None, :]).any(dim=1)
        if hubs is not None:
            same |= torch.zeros_like(same[:, :1]).scatter_(2, hubs[:, None, :], True)
        total += (probs * same).sum().item()
    return total / (q.shape[0] * N)


def colour_clusters(ids: torch.Tensor, resolution: int, min_size: int = 128) -> torch.Tensor:
    """Cluster ids of one round (N,) -> a uint8 RGB image with a fixed random colour per cluster."""
    palette = torch.randint(40, 256, (int(ids.max()) + 1, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    image = palette[ids].T.reshape(3, resolution, resolution)
    factor = max(1, min_size // resolution)
    return F.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0].to(torch.uint8)


@torch.no_grad()
def attention_diagnostics(generator: nn.Module, smyrf: AttentionConfig, z: torch.Tensor, y: torch.Tensor) -> dict[str, BlockDiagnostics]:
    """Diagnostics of every attention block of `generator` (run in dense mode) for SMYRF `smyrf`."""
    if smyrf.kind != "smyrf":
        raise ValueError(f"attention_diagnostics compares SMYRF with dense; got kind={smyrf.kind!r}")
    with attention(generator, "dense"), capture_qkv(generator) as captured:
        generator(z, y)
    blocks = attention_blocks(generator)
    results = {}
    for name, [(q, k, v)] in captured.items():
        block = blocks[name]
        q, k, v = q.float(), k.float(), v.float()
        dense = attend(q, k, v, AttentionConfig(kind="dense"), scale=1.0)
        config = smyrf
        config.validate_for(q.shape[1], k.shape[1], where=block.describe_place())
        approx = attend(q, k, v, config, scale=1.0, generator=torch.Generator().manual_seed(block.seed))
        q_ids, k_ids, hubs = cluster_ids(q, k, config, torch.Generator().manual_seed(block.seed))
        results[name] = BlockDiagnostics(
            resolution=block.resolution,
            error=((approx - dense).norm() / dense.norm()).item(),
            mass_share=covered_mass(q[:1], k[:1], q_ids[:1], k_ids[:1], None if hubs is None else hubs[:1]),
            cluster_map=colour_clusters(q_ids[0, 0], block.resolution),
        )
    return results
