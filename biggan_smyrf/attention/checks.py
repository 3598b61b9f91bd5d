"""Input checks shared by dense and SMYRF attention: fail early, say what to change."""
from __future__ import annotations

from typing import Optional

import torch


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor]) -> None:
    """q: (B, N, d_qk), k: (B, M, d_qk), v: (B, M, d_v), key_padding_mask: (B, M) bool, True = attend."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be (batch, tokens, dim), got shape {tuple(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k need the same feature dim, got {q.shape[2]} and {k.shape[2]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v need the same number of tokens, got {k.shape[1]} and {v.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != k.shape[:2]:
            raise ValueError(
                f"key_padding_mask must be (batch, keys) = {tuple(k.shape[:2])}, got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (True = attend), got {key_padding_mask.dtype}")


def default_scale(scale: Optional[float], d_qk: int) -> float:
    """Transformer convention when unspecified; BigGAN passes scale=1.0 explicitly."""
    return d_qk**-0.5 if scale is None else float(scale)
