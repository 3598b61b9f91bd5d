"""BigGAN discriminator: residual down-blocks (attention after some) -> ReLU -> global sum -> score,
plus the projection term <embed(y), h> for class-conditional data."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention_block import SelfAttention
from .config import DiscriminatorConfig
from .layers import DBlock, sn_embedding, sn_linear
from .spectral import normalise_together
from .specs import check_attention_resolutions, discriminator_stages


class Discriminator(nn.Module):
    """D(x, y) -> (batch,) scores. Train it on real and fake concatenated into one batch: spectral
    norm then runs one power iteration per step, and DDP sees one forward per backward."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = c = config
        stages = discriminator_stages(c.resolution, c.ch)
        check_attention_resolutions(c.attention_resolutions, stages, "D", c.resolution)
        self.blocks = nn.ModuleList()
        attended = set()
        for i, s in enumerate(stages):
            stage = nn.ModuleList([DBlock(s.in_ch, s.out_ch, s.resample, preactivation=i > 0, sn_eps=c.sn_eps)])
            # Several D stages can share an output size (e.g. the last two at 4x4): attend after the first.
            if s.resolution in c.attention_resolutions and s.resolution not in attended:
                attended.add(s.resolution)
                name = f"D attention at {s.resolution}px"
                stage.append(SelfAttention(s.out_ch, s.resolution, c.attention_at(s.resolution), c.sn_eps, name, seed=100 + i))
            self.blocks.append(stage)
        width = stages[-1].out_ch
        self.linear = sn_linear(width, 1, c.sn_eps)
        self.embed = sn_embedding(c.n_classes, width, c.sn_eps)
        normalise_together(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1:] != (3, c.resolution, c.resolution):
            raise ValueError(f"D{c.resolution} expects images (batch, 3, {c.resolution}, {c.resolution}), got {tuple(x.shape)}")
        if y is None:
            y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        h = x
        for stage in self.blocks:
            for layer in stage:
                h = layer(h)
        h = F.relu(h).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)
