"""Per-cluster attention, the step both SMYRF routes and the hub round are made of: batched
attention inside clusters that also returns the logsumexp, forward and backward, with the choice
among its implementations. A module of its own because it knows nothing of hashing or rounds.

q: (G, Lq, d), k: (G, Lk, d), v: (G, Lk, dv) for G independent clusters -> o: (G, Lq, dv) and
lse: (G, Lq) float32. The backward takes `out`, the tensor whose row-dot with the output gradient
is subtracted from the score gradient (FlashAttention's D = rowsum(dO * O)). Passing the *combined*
multi-round SMYRF output there instead of this round's output is exactly the gradient through the
logsumexp weights (see `smyrf.py`), which is why no kernel here needs a gradient for lse.

Three implementations:
- "flash": PyTorch's fused CPU flash-attention kernels (aten ops behind F.scaled_dot_product_attention).
  Never materialises scores. CPU only; no masks.
- "triton": FlashAttention-2 style Triton kernels (`triton/clusters.py`). Never materialises scores;
  key masks; d_qk and d_v kept apart; float16/bfloat16/float32. CUDA, or CPU tensors under
  Triton's interpreter (TRITON_INTERPRET=1 set before triton is imported; slow, for tests).
  SMYRF with kernel "triton" runs its hashed rounds through `cuda_route.py` instead (kernels that
  read q, k, v through the sort orders, no gathered copies) and only its hub round here.
- "chunked": plain matmuls over chunks of clusters with recomputation in the backward. Works on
  any device, dtype (float64 for gradcheck) and with key masks; memory O(chunk * Lq * Lk) for the scores.

"auto": "flash" on the CPU without masks, "triton" on CUDA for float16/bfloat16/float32 where
triton imports, "chunked" otherwise. Triton is imported only when the "triton" kernel is used or
considered (CUDA), so the package works where it is not installed.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .triton import TRITON_DTYPES, TRITON_MAX_HEAD_DIM, triton_available

Kernel = Literal["auto", "flash", "triton", "chunked"]
KERNELS = ("flash", "triton", "chunked")
# Scores held at once by the chunked kernel: 2^24 float32 = 64 MiB.
CHUNK_SCORES = 1 << 24


def pick_kernel(
    kernel: Kernel, device: torch.device, has_mask: bool, dtype: torch.dtype = torch.float32, head_dim: int = 0
) -> str:
    """The kernel to run ("auto" resolved), or a ValueError saying why the one asked for cannot.
    head_dim: the larger of d_qk and d_v as the kernel will see them."""
    if kernel == "auto":
        if device.type == "cpu":
            return "chunked" if has_mask else "flash"
        fits = dtype in TRITON_DTYPES and head_dim <= TRITON_MAX_HEAD_DIM
        return "triton" if device.type == "cuda" and fits and triton_available() else "chunked"
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be 'auto', 'flash', 'triton' or 'chunked', got {kernel!r}")
    if kernel == "flash" and (device.type != "cpu" or has_mask):
        raise ValueError("the 'flash' cluster kernel runs on the CPU without masks; use kernel='chunked'")
    if kernel == "triton":
        _check_triton_usable(device, dtype, head_dim)
    return kernel


def _check_triton_usable(device: torch.device, dtype: torch.dtype, head_dim: int) -> None:
    if not triton_available():
        raise ValueError("kernel='triton' needs the triton package (pip install triton); use kernel='chunked'")
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"kernel='triton' takes float16, bfloat16 or float32, got {dtype}; use kernel='chunked'")
    if head_dim > TRITON_MAX_HEAD_DIM:
        raise ValueError(
            f"kernel='triton' takes head dims up to {TRITON_MAX_HEAD_DIM}, got {head_dim}; use kernel='chunked'"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"kernel='triton' runs on CUDA (or the CPU interpreter), not {device.type}; use kernel='chunked'")
    if device.type == "cpu" and not _triton().INTERPRETED:
        raise ValueError(
            "kernel='triton' on CPU tensors runs only under Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported, or use kernel='flash' / 'chunked' on the CPU"
        )


def _triton():
    """The Triton cluster kernels, imported on first use (triton is optional: see triton/__init__.py)."""
    from .triton import clusters

    return clusters


def attention_forward(q, k, v, scale: float, kernel: str, key_mask: Optional[torch.Tensor] = None):
    if kernel == "flash":
        return _flash_forward(q, k, v, scale)
    if kernel == "triton":
        return _triton().forward(q, k, v, scale, key_mask)
    return _chunked_forward(q, k, v, scale, key_mask)


def attention_backward(grad, q, k, v, out, lse, scale: float, kernel: str, key_mask: Optional[torch.Tensor] = None):
    if kernel == "flash":
        return _flash_backward(grad, q, k, v, out, lse, scale)
    if kernel == "triton":
        return _triton().backward(grad, q, k, v, out, lse, scale, key_mask)
    return _chunked_backward(grad, q, k, v, out, lse, scale, key_mask)


def pad_features(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-pad the feature dim up to `dim`, contiguous. PyTorch's fused attention kernels need one
    head dim for q, k and v (d = max(d_qk, d_v); zeros change no logit, and the padding is cut off
    the output again), and the CPU flash kernel falls back to the O(N*M) math path for strided
    inputs such as BigGAN's channels-first feature maps viewed as tokens."""
    return x.contiguous() if x.shape[-1] == dim else F.pad(x, (0, dim - x.shape[-1]))


# --- flash (CPU) -------------------------------------------------------------------------------
# Layout (batch=1, heads=G, tokens, dim): every cluster is a head.


def _pad(x: torch.Tensor, d: int) -> torch.Tensor:
    return pad_features(x, d)[None]


def _flash_forward(q, k, v, scale):
    d = max(q.shape[-1], v.shape[-1])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _pad(q, d), _pad(k, d), _pad(v, d), 0.0, False, scale=scale
    )
    return out[0, ..., : v.shape[-1]], lse[0]


def _flash_backward(grad, q, k, v, out, lse, scale):
    d = max(q.shape[-1], v.shape[-1])
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        _pad(grad, d), _pad(q, d), _pad(k, d), _pad(v, d), _pad(out, d), lse[None], 0.0, False, scale=scale
    )
    return dq[0, ..., : q.shape[-1]], dk[0, ..., : k.shape[-1]], dv[0, ..., : v.shape[-1]]


# --- chunked (any device) ----------------------------------------------------------------------


def _chunks(q: torch.Tensor, k: torch.Tensor):
    step = max(1, CHUNK_SCORES // (q.shape[1] * k.shape[1]))
    return [slice(i, i + step) for i in range(0, q.shape[0], step)]


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half inputs, float64 stays float64 (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def _scores(q, k, scale, key_mask):
    acc = _accumulate_dtype(q)
    s = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, :], float("-inf"))
    return s


def _probabilities(s, lse):
    """exp(s - lse); rows with every key masked (lse = -inf) give p = 0 instead of NaN."""
    return torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None])


def _chunked_forward(q, k, v, scale, key_mask):
    out = q.new_empty(*q.shape[:2], v.shape[-1])
    lse = q.new_empty(q.shape[:2], dtype=_accumulate_dtype(q))
    for c in _chunks(q, k):
        s = _scores(q[c], k[c], scale, None if key_mask is None else key_mask[c])
        lse[c] = torch.logsumexp(s, dim=-1)
        out[c] = torch.matmul(_probabilities(s, lse[c]), v[c].to(s.dtype)).to(v.dtype)
    return out, lse


def _chunked_backward(grad, q, k, v, out, lse, scale, key_mask):
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for c in _chunks(q, k):
        s = _scores(q[c], k[c], scale, None if key_mask is None else key_mask[c])
        p = _probabilities(s, lse[c])
        g = grad[c].to(s.dtype)
        dv[c] = torch.matmul(p.transpose(-1, -2), g).to(v.dtype)
        dp = torch.matmul(g, v[c].to(s.dtype).transpose(-1, -2))
        ds = p * (dp - (g * out[c].to(s.dtype)).sum(-1, keepdim=True)) * scale
        dq[c] = torch.matmul(ds, k[c].to(s.dtype)).to(q.dtype)
        dk[c] = torch.matmul(ds.transpose(-1, -2), q[c].to(s.dtype)).to(k.dtype)
    return dq, dk, dv
