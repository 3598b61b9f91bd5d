"""BigGAN's self-attention block, with the attention itself delegated to dense or SMYRF.

    q = theta(x)               (N = H*W tokens,  ch/8 features)
    k = maxpool2x2(phi(x))     (M = N/4 tokens,  ch/8 features)
    v = maxpool2x2(g(x))       (M tokens,        ch/2 features)
    x + gamma * o(attend(q, k, v))      gamma starts at 0, no 1/sqrt(d) scaling

The attention kind lives in `self.config` (an AttentionConfig), which is not a parameter or buffer:
swapping dense <-> SMYRF changes no weight and no state-dict key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biggan_smyrf.attention import AttentionConfig, attend

from .layers import sn_conv


class SelfAttention(nn.Module):
    """Self-attention over a `resolution` x `resolution` feature map of `channels` channels.

    SMYRF draws fresh hash projections at every training forward from `self.generator` (saved in
    checkpoints for exact resumes). In eval mode it re-seeds from `seed` on every call, so sampling
    is a deterministic function of the input, whatever ran before.
    """

    def __init__(self, channels: int, resolution: int, config: AttentionConfig, sn_eps: float, name: str, seed: int = 0):
        super().__init__()
        if channels < 8 or resolution % 2:
            raise ValueError(f"{name}: needs >= 8 channels and an even resolution, got {channels}, {resolution}")
        self.name, self.resolution, self.seed = name, resolution, seed
        self.theta = sn_conv(channels, channels // 8, 1, sn_eps, bias=False)
        self.phi = sn_conv(channels, channels // 8, 1, sn_eps, bias=False)
        self.g = sn_conv(channels, channels // 2, 1, sn_eps, bias=False)
        self.o = sn_conv(channels // 2, channels, 1, sn_eps, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.generator = torch.Generator().manual_seed(seed)
        self.set_config(config)

    @property
    def n_queries(self) -> int:
        return self.resolution**2

    @property
    def n_keys(self) -> int:
        return self.n_queries // 4

    def set_config(self, config: AttentionConfig) -> None:
        """Switch kind or SMYRF parameters; the sizes are checked against this block's tokens now."""
        config.validate_for(self.n_queries, self.n_keys, where=self.describe_place())
        self.config = config

    def describe_place(self) -> str:
        return f"{self.name} ({self.resolution}x{self.resolution}: {self.n_queries} queries, {self.n_keys} keys)"

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, N, ch/8), pooled keys (B, N/4, ch/8) and values (B, N/4, ch/2)."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(f"{self.name}: built for {self.resolution}x{self.resolution}, got {tuple(x.shape[-2:])}")
        q = self.theta(x).flatten(2).transpose(1, 2)
        k = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)
        v = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)
        generator = self.generator if self.training else torch.Generator().manual_seed(self.seed)
        out = attend(q, k, v, self.config, scale=1.0, generator=generator)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, *x.shape[-2:])
        return x + self.gamma * self.o(out)

    def extra_repr(self) -> str:
        return f"{self.resolution}x{self.resolution}, {self.config.describe()}"
