"""Dense and SMYRF attention behind one interface.

    attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048), scale=1.0)

q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v) -> (B, N, d_v); N != M and d_qk != d_v allowed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import AttentionConfig, resolve_cluster_sizes, valid_q_cluster_sizes
from .dense import dense_attention
from .hashing import cluster_orders, xbox_plus
from .smyrf import smyrf_attention

__all__ = [
    "AttentionConfig",
    "attend",
    "cluster_orders",
    "dense_attention",
    "resolve_cluster_sizes",
    "smyrf_attention",
    "valid_q_cluster_sizes",
    "xbox_plus",
]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: AttentionConfig,
    *,
    scale: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention of the kind `config` names; the one entry point the model blocks use."""
    if config.kind == "dense":
        return dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
    return smyrf_attention(
        q, k, v,
        n_hashes=config.n_hashes,
        q_cluster_size=config.q_cluster_size,
        k_cluster_size=config.k_cluster_size,
        hashing=config.hashing,
        n_hub_keys=config.hub_keys_for(q.shape[1], k.shape[1]),
        hub_sample=config.hub_sample,
        n_summaries=config.summaries_for(q.shape[1], k.shape[1]),
        dedup=config.dedup,
        scale=scale,
        generator=generator,
        key_padding_mask=key_padding_mask,
    )
