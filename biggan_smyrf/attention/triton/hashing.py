"""SMYRF's clustering (`hashing.cluster_orders`) on the CUDA route: XBOX+ and the sorts in few launches.

The torch version (`..hashing`, the CPU path and the reference) builds the XBOX+ tokens (about a dozen
ops), one product per level, then per level an argsort of queries and one of keys and, below the
root, gathers around them. Here the same orders come from:
  1. `_maxima_kernel`: per batch element the largest squared query and key norm (XBOX+'s MQ², MK²,
     which every token's transform needs: a grid-wide reduction, so a launch of its own);
  2. one `torch.randn` of every direction -- the torch version's call, so one generator state
     gives both versions the same directions and hence the same clusters;
  3. "kd", per level, `_level_kernel` + one `torch.sort`. For every position of the current order
     the kernel reads its token (the previous level's sorted key carries it: no gather),
     transforms it with XBOX+ in float32 on the fly (nothing of size tokens x features is
     written), projects it on its node's direction and writes one int64 key
        segment and node | order-preserving bits of the float32 projection | token index,
     so one sort of queries and keys together orders every node's run by projection while queries
     never mix with keys and every run stays where it is (its node is in the high bits). Last,
     `_tokens_kernel` takes the token indices out of the sorted keys as contiguous q and k orders;
  3'. "xbox", one level of one node: `_xbox_kernel` writes the float32 projections of queries and
     of keys as two rows padded with +inf to the longer, so that one argsort gives both orders as
     they are, without the final kernel.

Launches: "kd" 1 + 1 + 2 per level + 1 = 2 * levels + 3, levels = the prime factors of n_clusters
(8 clusters: 9, 16: 11); "xbox" 4. Cost: the maxima read q and k once, O(B (N + M) d), in 2 B
programs; each level reads every position's token, O(B H (N + M) d) in random order below the
root, and sorts B H rows of N + M int64 keys (8 bytes where the torch version's argsorts sort
float32, in two calls); xbox sorts B H rows of 2 max(N, M) float32. Memory O(B H (N + M)) int64.

Queries and keys are read in their dtype through their strides (BigGAN passes channels-first
views), converted to float32 in registers. Ties between projections are broken by token index
("kd") or by the sort, there by the argsort; and the products sum in another order, so
projections equal to the last bits may swap: only such near ties can give different clusters.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import hashing as torch_hashing
from .launches import launch

# Features held per program of the level kernels (positions x padded d: 256 positions at BigGAN's
# d_qk = 12) and per step of the maxima loop, so that d up to 64 stays in registers; keys per
# program of the last kernel.
LEVEL_FEATURES, MAXIMA_FEATURES, TOKENS_BLOCK = 4096, 8192, 1024
FLOAT_BITS = 32


@triton.jit
def _features(Q, K, b, token, is_q, valid, stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd,
              d, BLOCK_D: tl.constexpr):
    """(BLOCK, BLOCK_D) float32 features of query or key `token` of batch element b, and their
    squared norms. Both kernels read tokens through this, so MQ² and |x|² round alike."""
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols[None, :] < d
    token = token.to(tl.int64)
    qx = tl.load(Q + b * stride_qb + token[:, None] * stride_qn + cols[None, :] * stride_qd,
                 mask=(valid & is_q)[:, None] & col_ok, other=0.0)
    kx = tl.load(K + b * stride_kb + token[:, None] * stride_kn + cols[None, :] * stride_kd,
                 mask=(valid & ~is_q)[:, None] & col_ok, other=0.0)
    x = qx.to(tl.float32) + kx.to(tl.float32)
    return x, tl.sum(x * x, axis=1)


@triton.jit
def _maxima_kernel(Q, K, MAXIMA, N, M, stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd,
                   d, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """MAXIMA[b, 0] = max |q|², MAXIMA[b, 1] = max |k|² over batch element b's tokens; grid (B, 2)."""
    b = tl.program_id(0).to(tl.int64)
    segment = tl.program_id(1)
    is_q = tl.full((BLOCK,), segment == 0, tl.int1)
    length = tl.where(segment == 0, N, M)
    best = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, length, BLOCK):
        token = start + tl.arange(0, BLOCK)
        _, sq = _features(Q, K, b, token, is_q, token < length, stride_qb, stride_qn, stride_qd,
                          stride_kb, stride_kn, stride_kd, d, BLOCK_D)
        best = tl.maximum(best, sq)
    tl.store(MAXIMA + b * 2 + segment, tl.max(best, axis=0))


@triton.jit
def _projection(Q, K, MAXIMA, DIRECTION, b, token, is_q, valid, stride_qb, stride_qn, stride_qd,
                stride_kb, stride_kn, stride_kd, stride_a_feature, d, BLOCK_D: tl.constexpr):
    """XBOX+ of each token (queries [q, 0, ext], keys [k, ext, 0], ext = sqrt(MQ² + MK² - |x|²), the
    radicand clamped at 0 against rounding as in `hashing.xbox_plus`), in float32, projected on
    its own direction (DIRECTION: a pointer per token, features at stride_a_feature)."""
    x, sq = _features(Q, K, b, token, is_q, valid, stride_qb, stride_qn, stride_qd,
                      stride_kb, stride_kn, stride_kd, d, BLOCK_D)
    total = tl.load(MAXIMA + b * 2) + tl.load(MAXIMA + b * 2 + 1)
    ext = tl.sqrt(tl.maximum(total - sq, 0.0))
    cols = tl.arange(0, BLOCK_D)
    a = tl.load(DIRECTION[:, None] + cols[None, :] * stride_a_feature, mask=valid[:, None] & (cols[None, :] < d),
                other=0.0)
    a_ext = tl.load(DIRECTION + tl.where(is_q, d + 1, d) * stride_a_feature, mask=valid, other=0.0)
    return tl.sum(x * a.to(tl.float32), axis=1) + ext * a_ext.to(tl.float32)


@triton.jit
def _level_kernel(KEYS, PREVIOUS, Q, K, MAXIMA, DIRECTIONS, N, M, H, nodes, run_q, run_k,
                  stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd,
                  stride_a_node, stride_a_hash, stride_a_feature, d,
                  TOKEN_BITS: tl.constexpr, FIRST: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """KEYS[b, h, p] = (group << 32 + TOKEN_BITS) | (projection bits << TOKEN_BITS) | token for every
    position p of round h's order (PREVIOUS's sorted keys; token order at the first level).
    group = node for queries, nodes + node for keys, node = p's run within its segment. Flat grid
    over (b, h, block of positions)."""
    T = N + M
    blocks = tl.cdiv(T, BLOCK)
    pid = tl.program_id(0)
    row = (pid // blocks).to(tl.int64)  # b * H + h
    b, h = row // H, row % H
    p = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
    valid = p < T
    is_q = p < N
    if FIRST:
        token = tl.where(is_q, p, p - N).to(tl.int64)
    else:
        token = tl.load(PREVIOUS + row * T + p, mask=valid, other=0) & ((1 << TOKEN_BITS) - 1)
    node = tl.where(is_q, p // run_q, (p - N) // run_k)
    direction = DIRECTIONS + node.to(tl.int64) * stride_a_node + h * stride_a_hash
    projection = _projection(Q, K, MAXIMA, direction, b, token, is_q, valid, stride_qb, stride_qn, stride_qd,
                             stride_kb, stride_kn, stride_kd, stride_a_feature, d, BLOCK_D)
    # Order-preserving integer of a float32: negative values' magnitude bits flipped (as int32),
    # then shifted to [0, 2^32).
    bits = projection.to(tl.int32, bitcast=True)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648
    group = tl.where(is_q, node, nodes + node).to(tl.int64)
    key = (group << (32 + TOKEN_BITS)) | (ordered << TOKEN_BITS) | token
    tl.store(KEYS + row * T + p, key, mask=valid)


@triton.jit
def _xbox_kernel(PROJECTIONS, Q, K, MAXIMA, DIRECTIONS, N, M, H, L,
                 stride_qb, stride_qn, stride_qd, stride_kb, stride_kn, stride_kd,
                 stride_a_hash, stride_a_feature, d, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """PROJECTIONS (B, H, 2, L): [b, h, 0, t] query t's projection on round h's direction,
    [b, h, 1, t] key t's, +inf past the N queries and M keys (so they sort last). Flat grid."""
    blocks = tl.cdiv(2 * L, BLOCK)
    pid = tl.program_id(0)
    row = (pid // blocks).to(tl.int64)
    b, h = row // H, row % H
    p = (pid % blocks) * BLOCK + tl.arange(0, BLOCK)
    is_q = p < L
    token = tl.where(is_q, p, p - L)
    valid = (p < 2 * L) & (token < tl.where(is_q, N, M))
    direction = DIRECTIONS + h * stride_a_hash + tl.zeros((BLOCK,), tl.int64)
    projection = _projection(Q, K, MAXIMA, direction, b, token, is_q, valid, stride_qb, stride_qn, stride_qd,
                             stride_kb, stride_kn, stride_kd, stride_a_feature, d, BLOCK_D)
    tl.store(PROJECTIONS + row * 2 * L + p, tl.where(valid, projection, float("inf")), mask=p < 2 * L)


@triton.jit
def _tokens_kernel(KEYS, Q_ORDER, K_ORDER, N, M, total, TOKEN_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """The token indices of the sorted keys (B * H rows of N + M), split into q and k orders."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = i < total
    token = tl.load(KEYS + i, mask=valid, other=0) & ((1 << TOKEN_BITS) - 1)
    row, p = i // (N + M), i % (N + M)
    tl.store(Q_ORDER + row * N + p, token, mask=valid & (p < N))
    tl.store(K_ORDER + row * M + (p - N), token, mask=valid & (p >= N))


@torch.no_grad()
def cluster_orders(q: torch.Tensor, k: torch.Tensor, n_hashes: int, n_clusters: int,
                   generator: torch.Generator, hashing: str = "kd") -> tuple[torch.Tensor, torch.Tensor]:
    """`hashing.cluster_orders` on the CUDA route: same arguments, same draws from `generator`, same
    orders (up to exact ties); (B, n_hashes, N) and (B, n_hashes, M) int64 with contiguous rows."""
    factors = torch_hashing.prime_factors(n_clusters)
    if hashing not in ("kd", "xbox") or (hashing == "kd" and not factors):
        return torch_hashing.cluster_orders(q, k, n_hashes, n_clusters, generator, hashing)
    (B, N, d), M = q.shape, k.shape[1]
    token_bits = max(1, (max(N, M) - 1).bit_length())
    if hashing == "kd" and (2 * math.prod(factors[:-1]) - 1).bit_length() + FLOAT_BITS + token_bits > 63:
        # Keys would not fit an int64 (past 2^27 tokens at 16 clusters): the torch version's ops.
        return torch_hashing.cluster_orders(q, k, n_hashes, n_clusters, generator, hashing)
    strides = (*q.stride(), *k.stride())
    block_d = triton.next_power_of_2(d)
    maxima = torch.empty(B, 2, dtype=torch.float32, device=q.device)
    launch(_maxima_kernel, (B, 2))(q, k, maxima, N, M, *strides, d, BLOCK=MAXIMA_FEATURES // block_d, BLOCK_D=block_d)
    if hashing == "xbox":
        return _xbox_orders(q, k, maxima, n_hashes, generator, strides, block_d)
    return _kd_orders(q, k, maxima, n_hashes, factors, generator, strides, block_d, token_bits)


def _xbox_orders(q, k, maxima, n_hashes, generator, strides, block_d):
    """One direction per round: queries' and keys' projections in two rows of one float32 tensor,
    padded to the longer with +inf, so one argsort gives both orders as they are (no composition)."""
    (B, N, d), M = q.shape, k.shape[1]
    a = torch_hashing.random_projections(d + 2, n_hashes, generator, q.device)  # (D, H)
    L, block = max(N, M), LEVEL_FEATURES // block_d
    projections = torch.empty(B, n_hashes, 2, L, dtype=torch.float32, device=q.device)
    launch(_xbox_kernel, (B * n_hashes * triton.cdiv(2 * L, block),))(
        projections, q, k, maxima, a, N, M, n_hashes, L, *strides, a.stride(1), a.stride(0), d,
        BLOCK=block, BLOCK_D=block_d,
    )
    order = projections.sort(dim=-1).indices
    return order[:, :, 0, :N], order[:, :, 1, :M]


def _kd_orders(q, k, maxima, n_hashes, factors, generator, strides, block_d, token_bits):
    """Per level one key per position of the current order, one sort; the tokens out of the last keys."""
    (B, N, d), M = q.shape, k.shape[1]
    # The torch version's one draw: every (node, round) direction of every level.
    nodes = [math.prod(factors[:level]) for level in range(len(factors))]
    directions = torch.randn(sum(nodes), n_hashes, d + 2, generator=generator, device=q.device)
    T, block = N + M, LEVEL_FEATURES // block_d
    keys = None
    for level, (n, a) in enumerate(zip(nodes, directions.split(nodes))):
        unsorted = torch.empty(B, n_hashes, T, dtype=torch.int64, device=q.device)
        launch(_level_kernel, (B * n_hashes * triton.cdiv(T, block),))(
            unsorted, unsorted if keys is None else keys, q, k, maxima, a, N, M, n_hashes, n, N // n, M // n,
            *strides, *a.stride(), d, TOKEN_BITS=token_bits, FIRST=level == 0, BLOCK=block, BLOCK_D=block_d,
        )
        keys = unsorted.sort(dim=-1).values
    q_order = torch.empty(B, n_hashes, N, dtype=torch.int64, device=q.device)
    k_order = torch.empty(B, n_hashes, M, dtype=torch.int64, device=q.device)
    launch(_tokens_kernel, (triton.cdiv(keys.numel(), TOKENS_BLOCK),))(
        keys, q_order, k_order, N, M, keys.numel(), TOKEN_BITS=token_bits, BLOCK=TOKENS_BLOCK)
    return q_order, k_order
