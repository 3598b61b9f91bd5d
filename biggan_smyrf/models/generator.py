"""BigGAN generator: z -> 4x4 map -> residual up-blocks (attention after some) -> RGB in [-1, 1]."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention_block import SelfAttention
from .config import GeneratorConfig
from .layers import GBlock, sn_conv, sn_linear
from .spectral import normalise_together
from .specs import BOTTOM, check_attention_resolutions, generator_stages


class Generator(nn.Module):
    """G(z, y). With hierarchical z, z is split into one chunk for the 4x4 input and one per block;
    each block's batch norms are conditioned on [shared class embedding, its z chunk]."""

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = c = config
        stages = generator_stages(c.resolution, c.ch)
        check_attention_resolutions(c.attention_resolutions, stages, "G", c.resolution)
        n_chunks = len(stages) + 1 if c.hier else 1
        if c.dim_z % n_chunks:
            lower = c.dim_z // n_chunks * n_chunks
            raise ValueError(
                f"G{c.resolution}: dim_z={c.dim_z} must split into {n_chunks} equal chunks (hierarchical "
                f"z: one for the input and one per block); use e.g. {lower} or {lower + n_chunks}, or hier=false"
            )
        self.z_chunk = c.dim_z // n_chunks
        class_dim = c.shared_dim if c.shared_dim > 0 else c.n_classes
        cond_dim = class_dim + (self.z_chunk if c.hier else 0)

        self.shared = spectral_free_embedding(c.n_classes, c.shared_dim) if c.shared_dim > 0 else None
        self.linear = sn_linear(self.z_chunk, stages[0].in_ch * BOTTOM**2, c.sn_eps)
        self.blocks = nn.ModuleList()
        for i, s in enumerate(stages):
            stage = nn.ModuleList([GBlock(s.in_ch, s.out_ch, cond_dim, c.sn_eps, c.bn_eps)])
            if s.resolution in c.attention_resolutions:
                name = f"G attention at {s.resolution}px"
                stage.append(SelfAttention(s.out_ch, s.resolution, c.attention_at(s.resolution), c.sn_eps, name, seed=i))
            self.blocks.append(stage)
        self.output = nn.Sequential(
            nn.BatchNorm2d(stages[-1].out_ch, eps=c.bn_eps), nn.ReLU(), sn_conv(stages[-1].out_ch, 3, 3, c.sn_eps)
        )
        normalise_together(self)

    def class_vector(self, y: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            return self.shared(y)
        return F.one_hot(y, self.config.n_classes).float()

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if z.dim() != 2 or z.shape[1] != c.dim_z:
            raise ValueError(f"z must be (batch, {c.dim_z}), got {tuple(z.shape)}")
        if y is None:
            y = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        chunks = z.split(self.z_chunk, dim=1)
        class_vec = self.class_vector(y).to(z.dtype)
        h = self.linear(chunks[0]).view(z.shape[0], -1, BOTTOM, BOTTOM)
        for i, stage in enumerate(self.blocks):
            cond = torch.cat([class_vec, chunks[i + 1]], dim=1) if c.hier else class_vec
            h = stage[0](h, cond)
            for attention in stage[1:]:
                h = attention(h)
        return torch.tanh(self.output(h))


def spectral_free_embedding(n_classes: int, dim: int) -> nn.Embedding:
    """G's shared class embedding: orthogonal init, no spectral norm (as in BigGAN)."""
    embedding = nn.Embedding(n_classes, dim)
    nn.init.orthogonal_(embedding.weight)
    return embedding
