"""BigGAN building blocks: spectrally normalised layers, conditional batch norm, residual blocks.

Every conv, linear and embedding weight is orthogonally initialised and then wrapped in PyTorch's
own spectral norm (one power iteration per training forward, as in BigGAN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def spectral(module: nn.Module, eps: float) -> nn.Module:
    """Orthogonal init, then spectral norm; BigGAN's recipe for every weight layer."""
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module, n_power_iterations=1, eps=eps)


def sn_conv(in_ch: int, out_ch: int, kernel_size: int, eps: float, bias: bool = True) -> nn.Module:
    return spectral(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=bias), eps)


def sn_linear(in_features: int, out_features: int, eps: float, bias: bool = True) -> nn.Module:
    return spectral(nn.Linear(in_features, out_features, bias=bias), eps)


def sn_embedding(n: int, dim: int, eps: float) -> nn.Module:
    return spectral(nn.Embedding(n, dim), eps)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are linear functions of a conditioning vector.

    gain = 1 + W_g c, bias = W_b c, with c = [class embedding, z chunk] in BigGAN's G.
    """

    def __init__(self, channels: int, cond_dim: int, sn_eps: float, bn_eps: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False, eps=bn_eps)
        self.gain = sn_linear(cond_dim, channels, sn_eps, bias=False)
        self.bias = sn_linear(cond_dim, channels, sn_eps, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain = 1 + self.gain(cond)[:, :, None, None]
        return self.norm(x) * gain + self.bias(cond)[:, :, None, None]


class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv, plus an upsampled 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, sn_eps: float, bn_eps: float):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(in_ch, cond_dim, sn_eps, bn_eps)
        self.conv1 = sn_conv(in_ch, out_ch, 3, sn_eps)
        self.bn2 = ConditionalBatchNorm(out_ch, cond_dim, sn_eps, bn_eps)
        self.conv2 = sn_conv(out_ch, out_ch, 3, sn_eps)
        self.shortcut = sn_conv(in_ch, out_ch, 1, sn_eps)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DBlock(nn.Module):
    """(ReLU)-conv-ReLU-conv-(avgpool), plus a 1x1 shortcut when the shape changes.

    The first D block sees the RGB image and has no pre-activation; its shortcut pools before the
    conv, the others convolve before pooling (both as in BigGAN-PyTorch).
    """

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, preactivation: bool, sn_eps: float):
        super().__init__()
        self.downsample, self.preactivation = downsample, preactivation
        self.conv1 = sn_conv(in_ch, out_ch, 3, sn_eps)
        self.conv2 = sn_conv(out_ch, out_ch, 3, sn_eps)
        self.shortcut = sn_conv(in_ch, out_ch, 1, sn_eps) if (in_ch != out_ch or downsample) else None

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.pool(self.conv2(F.relu(self.conv1(h))))
        if self.shortcut is None:
            return h + x
        if self.preactivation:
            return h + self.pool(self.shortcut(x))
        return h + self.shortcut(self.pool(x))
