"""BigGAN building blocks: spectrally normalised layers, conditional batch norm, residual blocks.

Every conv, linear and embedding weight is orthogonally initialised and then wrapped in spectral
norm (`spectral.py`: PyTorch's parametrization, one power iteration per training forward, as in
BigGAN).

On XLA devices nearest x2 upsampling is written as an expand whose backward sums each 2x2 block,
an op XLA lowers, so a TPU step runs without host fallbacks (`make xla-check`); it gives
bit-identical results on the CPU (tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spectral import spectral


class _Upsample2x(torch.autograd.Function):
    """Nearest-neighbour x2 upsampling of (N, C, H, W), as `F.interpolate(x, scale_factor=2.0)`.

    torch_xla lowers the forward of `F.interpolate` but not `upsample_nearest2d_backward`. Here the
    forward is an expand and the backward sums each 2x2 block of the gradient in the order of
    PyTorch's CPU and CUDA kernels (row by row, in the accumulation type), so both are bit-identical
    to `F.interpolate`; autograd's own backward of the expand would sum in another order.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, c, h2, w2 = grad.shape
        blocks = grad.reshape(n, c, h2 // 2, 2, w2 // 2, 2).to(torch.promote_types(grad.dtype, torch.float32))
        total = blocks[:, :, :, 0, :, 0] + blocks[:, :, :, 0, :, 1] + blocks[:, :, :, 1, :, 0] + blocks[:, :, :, 1, :, 1]
        return total.to(grad.dtype)


def upsample2x_expand(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling in ops XLA lowers, forward and backward (see `_Upsample2x`)."""
    if x.dim() != 4:
        raise ValueError(f"upsample2x expects (N, C, H, W), got shape {tuple(x.shape)}")
    return _Upsample2x.apply(x)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling: on XLA devices `upsample2x_expand`, elsewhere PyTorch's own kernel,
    whose backward reads the gradient once instead of summing four strided views (the same
    numbers either way)."""
    if x.device.type == "xla" or x.dim() != 4:
        return upsample2x_expand(x)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


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
        h = upsample2x(F.relu(self.bn1(x, cond)))
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(upsample2x(x))


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
