"""Structured q/k/v families for measuring how well SMYRF approximates dense attention.

Random Gaussian q/k give nearly uniform attention that any clustering approximates equally
(badly); trained BigGAN attention is peaky and spatially structured. These families imitate that,
so accuracy numbers in tests and benchmarks mean something. All take an explicit generator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rescale_logits(q: torch.Tensor, k: torch.Tensor, logit_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale q and k alike so that the logits q·k have the requested standard deviation."""
    std = torch.einsum("bnd,bmd->bnm", q[:, :256], k).std()
    factor = (logit_std / std).sqrt()
    return q * factor, k * factor


def gaussian_qkv(batch: int, n: int, m: int, d_qk: int, d_v: int, generator: torch.Generator):
    """Unstructured N(0, 1) inputs."""
    return tuple(torch.randn(batch, t, d, generator=generator) for t, d in ((n, d_qk), (m, d_qk), (m, d_v)))


def clustered_qkv(
    batch: int, n: int, m: int, d_qk: int, d_v: int, generator: torch.Generator,
    n_centers: int = 16, noise: float = 0.3, logit_std: float = 9.0,
):
    """Queries and keys scattered around shared centres: each query mostly attends to its centre's keys."""
    centers = torch.randn(batch, n_centers, d_qk, generator=generator)

    def around(t: int) -> torch.Tensor:
        which = torch.randint(n_centers, (batch, t), generator=generator)
        picked = centers.gather(1, which[..., None].expand(-1, -1, d_qk))
        return picked + noise * torch.randn(batch, t, d_qk, generator=generator)

    q, k = _rescale_logits(around(n), around(m), logit_std)
    return q, k, torch.randn(batch, m, d_v, generator=generator)


def smooth_feature_qkv(
    batch: int, side: int, d_qk: int, d_v: int, generator: torch.Generator,
    channels: int = 64, smoothness: int = 7, correlation: float = 0.8, logit_std: float = 9.0,
    value_mean: float = 0.0,
):
    """BigGAN-like attention inputs from a spatially smooth feature map.

    A low-pass-filtered random map (batch, channels, side, side) is projected by correlated query
    and key matrices (1x1 convs); keys and values are 2x2 max-pooled as in BigGAN. N = side²,
    M = side²/4. logit_std ~ 9 imitates a trained G's peaky maps, ~ 1.5 a young G's spread-out
    ones; value_mean adds a per-channel offset to the values, in units of their std (real
    feature maps have one: in a young G it carries ~80% of the values' norm).
    """
    f = torch.randn(batch, channels, side, side, generator=generator)
    blur = torch.ones(channels, 1, smoothness, smoothness) / smoothness**2
    for _ in range(2):
        f = F.conv2d(f, blur, padding=smoothness // 2, groups=channels)
    f = f / f.std()
    w_q = torch.randn(d_qk, channels, generator=generator)
    w_k = correlation * w_q + (1 - correlation**2) ** 0.5 * torch.randn(d_qk, channels, generator=generator)
    w_v = torch.randn(d_v, channels, generator=generator)

    def project(w: torch.Tensor, pool: bool) -> torch.Tensor:
        x = torch.einsum("oc,bchw->bohw", w, f)
        if pool:
            x = F.max_pool2d(x, 2)
        return x.flatten(2).transpose(1, 2)

    q, k = _rescale_logits(project(w_q, False), project(w_k, True), logit_std)
    v = project(w_v, True)
    offset = value_mean * v.std() * torch.randn(d_v, generator=generator)
    return q, k, v + offset


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """|approx - exact| / |exact| over the whole tensor (Frobenius norms)."""
    return ((approx.double() - exact.double()).norm() / exact.double().norm()).item()
