"""SMYRF-vs-dense diagnostics for every attention block of a network, on one batch.

The network runs once with dense attention while each block's q, k, v are captured; each block's
inputs are then diagnosed with the SMYRF settings given for it (`attention.diagnostics.diagnose`),
seeded as the block seeds itself in eval mode, and its round-1 query clusters are drawn as an
image (the SMYRF paper's cluster visualisation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.attention.diagnostics import diagnose

from .capture import capture_qkv
from .swap import attention_blocks, using_attention


@dataclass
class BlockDiagnostics:
    resolution: int
    error: float
    mass_share: float
    cluster_map: torch.Tensor  # uint8 (3, H, W) on the CPU


@torch.no_grad()
def attention_diagnostics(network: nn.Module, smyrf: dict[str, AttentionConfig], *inputs) -> dict[str, BlockDiagnostics]:
    """Diagnostics of the blocks named in `smyrf` (block name -> its SMYRF settings), with the
    network run on `inputs` (e.g. z, y) in dense mode."""
    blocks = attention_blocks(network)
    unknown = set(smyrf) - set(blocks)
    if unknown:
        raise ValueError(f"no attention blocks named {sorted(unknown)}; the network has {sorted(blocks)}")
    with using_attention(network, "dense"), capture_qkv(network) as captured:
        network(*inputs)
    results = {}
    for name, config in smyrf.items():
        block = blocks[name]
        config.validate_for(block.n_queries, block.n_keys, where=block.describe_place())
        [(q, k, v)] = captured[name]
        found = diagnose(q, k, v, config, scale=1.0, generator=torch.Generator().manual_seed(block.seed))
        results[name] = BlockDiagnostics(block.resolution, found.error, found.mass_share,
                                         colour_clusters(found.query_clusters, block.resolution))
    return results


def colour_clusters(ids: torch.Tensor, resolution: int, min_size: int = 128) -> torch.Tensor:
    """Cluster ids of one round (N,) -> a uint8 RGB image with a fixed random colour per cluster."""
    palette = torch.randint(40, 256, (int(ids.max()) + 1, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    image = palette[ids.cpu()].T.reshape(3, resolution, resolution)
    factor = max(1, min_size // resolution)
    return F.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0].to(torch.uint8)
