"""The permuted route's last forward step, in one launch: its rounds combined into the output.

The hashed rounds' kernels (`rounds.py`) leave a float32 accumulator sum_r e^(lse_r - max) o_r,
its divisor sum_r e^(lse_r - max) and every round's logsumexp lse_r; the hub round leaves o_hub and
lse_hub. `combine_rounds` computes per query what `plan.round_normalisers` states in torch -- the
hashed rounds' total logsumexp, the dedup correction lp (log of the participation ratio of the
lse_r), the hub round's weight w_hub = e^(lse_hub - L) with L = logaddexp(hashed - lp, lse_hub), and
norm = L + lp, the one value per query with which every round's weighted probabilities are
exp(S - norm) in the backward -- and writes out = (1 - w_hub) o_hashed + w_hub o_hub in the inputs'
dtype. In aten that is some fifteen launches and a float32 (B, N, d_v) temporary; here one pass:
O(B N (H + d_v)) time, nothing allocated but the outputs.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .blocks import block_size, cluster_and_block, head_block
from .launches import launch


@triton.jit
def _combine_kernel(
    OUT_ACC, RUN_SUM, LSE, O_HUB, LSE_HUB, OUT, NORM, W_HUB,
    stride_ab, stride_an, stride_sb, stride_lb, stride_lh, stride_hb, stride_hn, stride_ob, stride_on,
    N, H, D_V: tl.constexpr, HAS_HUB: tl.constexpr, DEDUP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, block = cluster_and_block(N, BLOCK)
    rows = block * BLOCK + tl.arange(0, BLOCK)
    inside = rows < N
    # Logsumexps over the rounds of lse_r and of 2 lse_r (the participation ratio's two sums).
    top = tl.full([BLOCK], float("-inf"), tl.float32)
    for r in range(H):
        top = tl.maximum(top, tl.load(LSE + b * stride_lb + r * stride_lh + rows, mask=inside, other=float("-inf")))
    empty = top == float("-inf")  # every round's cluster held only masked keys
    safe = tl.where(empty, 0.0, top)
    sum1 = tl.zeros([BLOCK], tl.float32)
    sum2 = tl.zeros([BLOCK], tl.float32)
    for r in range(H):
        e = tl.exp(tl.load(LSE + b * stride_lb + r * stride_lh + rows, mask=inside, other=float("-inf")) - safe)
        sum1 += e
        sum2 += e * e
    hashed = tl.where(empty, float("-inf"), safe + tl.log(tl.where(empty, 1.0, sum1)))
    offs_dv = tl.arange(0, BLOCK_DV)
    cells = inside[:, None] & (offs_dv[None, :] < D_V)
    run_sum = tl.load(RUN_SUM + b * stride_sb + rows, mask=inside, other=1.0)
    acc = tl.load(OUT_ACC + b * stride_ab + rows[:, None] * stride_an + offs_dv[None, :], mask=cells, other=0.0)
    # run_sum is 0 only where every round's output is 0: any positive divisor keeps it 0.
    out = acc / tl.maximum(run_sum, 1.1754943508222875e-38)[:, None]
    norm = hashed
    if HAS_HUB:
        lp = tl.zeros([BLOCK], tl.float32)
        if DEDUP:
            lp = tl.where(empty, 0.0, 2 * tl.log(tl.where(empty, 1.0, sum1)) - tl.log(tl.where(empty, 1.0, sum2)))
        lse_hub = tl.load(LSE_HUB + b * N + rows, mask=inside, other=float("-inf"))
        lowered = hashed - lp
        big = tl.maximum(lowered, lse_hub)
        none = big == float("-inf")
        big_safe = tl.where(none, 0.0, big)
        total = tl.where(none, float("-inf"), big_safe + tl.log(tl.where(none, 1.0, tl.exp(lowered - big_safe) + tl.exp(lse_hub - big_safe))))
        w_hub = tl.where(none, 0.0, tl.exp(lse_hub - tl.where(none, 0.0, total)))
        tl.store(W_HUB + b * N + rows, w_hub, mask=inside)
        o_hub = tl.load(O_HUB + b * stride_hb + rows[:, None] * stride_hn + offs_dv[None, :], mask=cells, other=0.0)
        out = out * (1 - w_hub)[:, None] + o_hub.to(tl.float32) * w_hub[:, None]
        norm = total + lp
    # Where no round saw a key, norm = +inf: exp(S - norm) = 0, those rounds add nothing backward.
    tl.store(NORM + b * N + rows, tl.where(norm == float("-inf"), float("inf"), norm), mask=inside)
    tl.store(OUT + b * stride_ob + rows[:, None] * stride_on + offs_dv[None, :], out, mask=cells)


def combine_rounds(out_acc, run_sum, lse, o_hub: Optional[torch.Tensor], lse_hub: Optional[torch.Tensor],
                   dedup: bool, dtype: torch.dtype):
    """-> out (B, N, d_v) in `dtype`, norm (B, H, N) float32 (one value per query, seen H times) and
    w_hub (B, N) float32 or None. out_acc (B, N, d_v) and run_sum (B, N): the hashed rounds'
    unnormalised combination (`Rounds.forward(normalise=False)`); lse (B, H, N); o_hub (B, N, d_v)
    and lse_hub (B, N) the hub round's, or None. With a hub round the result is written over o_hub
    (its buffer is spent): no other (B, N, d_v) tensor is allocated."""
    B, H, N = lse.shape
    d_v = out_acc.shape[-1]
    has_hub = o_hub is not None
    out = o_hub if has_hub and o_hub.dtype == dtype else out_acc.new_empty(B, N, d_v, dtype=dtype)
    norm = torch.empty(B, N, dtype=torch.float32, device=lse.device)
    w_hub = torch.empty(B, N, dtype=torch.float32, device=lse.device) if has_hub else None
    hub_out = o_hub if has_hub else out_acc  # stand-in pointers, never read without HAS_HUB
    rows = block_size(N, 64)
    launch(_combine_kernel, (B * triton.cdiv(N, rows),))(
        out_acc, run_sum, lse, hub_out, lse_hub.contiguous() if has_hub else run_sum, out, norm,
        w_hub if has_hub else norm,
        out_acc.stride(0), out_acc.stride(1), run_sum.stride(0), lse.stride(0), lse.stride(1),
        hub_out.stride(0), hub_out.stride(1), out.stride(0), out.stride(1),
        N, H, D_V=d_v, HAS_HUB=has_hub, DEDUP=dedup and H > 1, BLOCK=rows, BLOCK_DV=head_block(d_v),
    )
    return out, norm[:, None].expand(B, H, N), w_hub
