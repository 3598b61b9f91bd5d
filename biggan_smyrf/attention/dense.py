"""Exact softmax attention.

`backend="sdpa"` goes through PyTorch's fused kernels (flash on CPU and CUDA): O(N) memory.
`backend="math"` materialises the (N, M) score matrix: O(N*M) memory, the naive reference that
the SMYRF paper compared against. Kept for benchmarks and for tests of the fused paths.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .checks import check_qkv, default_scale
from .cluster_attention import pad_features


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    backend: Literal["sdpa", "math"] = "sdpa",
) -> torch.Tensor:
    """softmax(scale * q kᵀ) v for q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v) -> (B, N, d_v).

    scale defaults to 1/sqrt(d_qk); BigGAN uses 1.0. key_padding_mask: (B, M) bool, True = attend.
    """
    check_qkv(q, k, v, key_padding_mask)
    scale = default_scale(scale, q.shape[-1])
    if backend == "math":
        return _math_attention(q, k, v, scale, key_padding_mask)
    if backend != "sdpa":
        raise ValueError(f"backend must be 'sdpa' or 'math', got {backend!r}")
    # With d_qk != d_v SDPA silently falls back to the O(N*M) math kernel (see pad_features).
    d = max(q.shape[-1], v.shape[-1])
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        pad_features(q, d)[:, None], pad_features(k, d)[:, None], pad_features(v, d)[:, None], attn_mask=mask, scale=scale
    )
    return out[:, 0, :, : v.shape[-1]]


def _math_attention(q, k, v, scale, key_padding_mask):
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, :], float("-inf"))
    acc = torch.promote_types(scores.dtype, torch.float32)  # half -> float32, float64 stays
    return torch.matmul(torch.softmax(scores.to(acc), dim=-1).to(v.dtype), v)
