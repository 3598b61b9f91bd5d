"""Dense and SMYRF attention behind one interface.

    attend(q, k, v, AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048), scale=1.0)

q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v) -> (B, N, d_v); N != M and d_qk != d_v allowed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import AttentionChange, AttentionConfig, resolve_cluster_sizes, valid_q_cluster_sizes
from .dense import dense_attention
from .hashing import cluster_orders, xbox_plus
from .schedule import PHASES, AttentionSchedule, AttentionStage
from .smyrf import SmyrfIntermediates, smyrf_attention

__all__ = [
    "PHASES",
    "AttentionChange",
    "AttentionConfig",
    "AttentionSchedule",
    "AttentionStage",
    "SmyrfIntermediates",
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
    return_intermediates: bool = False,
):
    """Attention of the kind `config` names; the one entry point the model blocks use.

    return_intermediates: return (out, what SMYRF did: `SmyrfIntermediates`, or None for dense).
    """
    if config.kind == "dense":
        out = dense_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
        return (out, None) if return_intermediates else out
    return smyrf_attention(q, k, v, config, scale=scale, generator=generator, key_padding_mask=key_padding_mask,
                           return_intermediates=return_intermediates)
