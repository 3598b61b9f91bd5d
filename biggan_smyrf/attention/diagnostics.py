"""How far SMYRF is from dense attention on given q, k, v, read off what SMYRF actually did.

- `error`: ‖out_smyrf − out_dense‖ / ‖out_dense‖;
- `mass_share`: the share of dense attention mass that SMYRF's clusters (and hub keys) cover
  exactly (1 = nothing missed); summary keys see the rest only as block means, so with summaries
  `error` can be small although this share is low;
- `query_clusters`: the cluster of every query of the first batch element in round 1.
The clusters come from the SMYRF call itself (`return_intermediates`), never from replaying its
random draws. Cost: one dense and one SMYRF attention, plus the mass share in query chunks of
O(chunk · M) memory. Runs on the inputs' device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .checks import default_scale
from .config import AttentionConfig
from .dense import dense_attention
from .smyrf import SmyrfIntermediates, smyrf_attention

QUERY_CHUNK = 1024


@dataclass
class AttentionDiagnosis:
    error: float
    mass_share: float
    query_clusters: torch.Tensor  # (N,) int64 on the CPU: round 1, first batch element


@torch.no_grad()
def diagnose(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: AttentionConfig, *,
             scale: Optional[float] = None, generator: Optional[torch.Generator] = None) -> AttentionDiagnosis:
    """SMYRF (`config`) against dense attention on q: (B, N, d), k: (B, M, d), v: (B, M, d_v)."""
    if config.kind != "smyrf":
        raise ValueError(f"diagnose compares SMYRF with dense attention; got kind={config.kind!r}")
    q, k, v = q.float(), k.float(), v.float()
    dense = dense_attention(q, k, v, scale=scale)
    approx, did = smyrf_attention(q, k, v, config, scale=scale, generator=generator, return_intermediates=True)
    scale = default_scale(scale, q.shape[-1])
    return AttentionDiagnosis(
        error=((approx - dense).norm() / dense.norm()).item(),
        mass_share=covered_mass(q[:1], k[:1], did, scale),
        query_clusters=did.query_clusters()[0, 0].cpu(),
    )


def covered_mass(q: torch.Tensor, k: torch.Tensor, did: SmyrfIntermediates, scale: float) -> float:
    """Mean over the queries of q (the first len(q) batch elements of the SMYRF call) of the dense
    attention mass on keys that share a cluster with the query in some round, or are hub keys."""
    B, N = q.shape[:2]
    q_ids, k_ids = did.query_clusters()[:B], did.key_clusters()[:B]
    hub = None
    if did.hub_keys is not None:
        hub = torch.zeros(B, 1, k.shape[1], dtype=torch.bool, device=k.device)
        hub.scatter_(2, did.hub_keys[:B, None, :], True)
    total = torch.zeros((), dtype=torch.float64, device=q.device)
    for start in range(0, N, QUERY_CHUNK):
        rows = slice(start, start + QUERY_CHUNK)
        probs = torch.softmax(scale * q[:, rows] @ k.transpose(1, 2), dim=-1)
        same = (q_ids[:, :, rows, None] == k_ids[:, :, None, :]).any(dim=1)
        if hub is not None:
            same |= hub
        total += (probs * same).sum()
    return total.item() / (B * N)
