"""SMYRF's clustering: asymmetric transform, LSH projections, balanced cuts by sorting.

Everything here runs without gradients and in float32 (half-precision norms would make the
XBOX+ radicand negative). Cost per round: O((N + M) * d) for the projection and
O((N + M) log(N + M)) for the sort; memory O(n_hashes * (N + M)) for the orders.

This is the CPU path and the reference: the CUDA route (kernel "triton") takes the same orders
from the same draws in 2 launches per k-d level + 3 (`triton/hashing.py`), where the ops here
issue 31 at 8 clusters (38 at 16).

Random draws happen on the tensors' device, from a generator there (`device_generator`): nothing is
copied from the host per call, so the call can be captured and replayed as a whole.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch._subclasses.fake_tensor import is_fake

from .cluster_attention import attention_backward, attention_forward
from .config import HASHINGS, Hashing


def xbox_plus(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """XBOX+ (SMYRF eq. 7): map maximum inner product search to nearest neighbour search.

    q: (B, N, d), k: (B, M, d) -> (B, N, d + 2), (B, M, d + 2). With MQ, MK the largest query and
    key norms of each batch element, q -> [q, 0, sqrt(MQ²+MK²-|q|²)], k -> [k, sqrt(MQ²+MK²-|k|²), 0].
    Every transformed vector then has norm sqrt(MQ²+MK²), so |q' - k'|² = const - 2 q·k.
    """
    x = _xbox_plus_tokens(q, k)
    return x[:, : q.shape[1]], x[:, q.shape[1]:]


def _xbox_plus_tokens(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """XBOX+ of queries and keys as one (B, N + M, d + 2) float32 tensor, queries first: each step
    is one op for both, and the hashings project both with one product."""
    N = q.shape[1]
    x = torch.cat([q, k], dim=1).float()
    sq = (x * x).sum(-1, keepdim=True)
    total = sq[:, :N].amax(dim=1, keepdim=True) + sq[:, N:].amax(dim=1, keepdim=True)
    # The clamp guards against tiny negative radicands from rounding (fp16/bf16 inputs).
    ext = (total - sq).clamp_min_(0).sqrt_()
    out = torch.cat([x, ext, ext], dim=-1)
    out[:, :N, -2].zero_()
    out[:, N:, -1].zero_()
    return out


def random_projections(dim: int, n_hashes: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """E2LSH directions a ~ N(0, I), (dim, n_hashes), drawn on `device` from `generator`. E2LSH's
    offset b and bucket width r only shift and scale the projection, so they do not change the
    sort order and are left out."""
    return draw(torch.randn, dim, n_hashes, generator=generator, device=device)


# Device types with torch.Generator objects of their own (XLA's draws come from its own seed).
GENERATOR_DEVICES = ("cpu", "cuda", "mps", "xpu")


def draw(sample, *args, generator: torch.Generator, device: torch.device, **kwargs) -> torch.Tensor:
    """sample(*args, generator=..., device=device) (torch.randn, rand, randperm): drawn where the
    generator is and copied to `device` when that has no generators (`device_generator`); tensors
    without data take the draw's shape directly."""
    if generator.device.type == device.type or device.type == "meta":
        return sample(*args, generator=generator, device=device, **kwargs)
    return sample(*args, generator=generator, device=generator.device, **kwargs).to(device)


def device_generator(generator: Optional[torch.Generator], seed: Optional[int], like: torch.Tensor) -> torch.Generator:
    """The generator SMYRF draws from on `like`'s device: the caller's if it is on that device, else
    a fresh one seeded with `seed` (default 0). A CPU generator with tensors on an accelerator (a
    model's, which checkpoints save) seeds a generator on the device with one draw on the host:
    no host->device copy, and the CPU generator's state still fixes every draw. Tensors without
    data (meta, or fake while a call is traced or counted) take draws from a CPU generator directly;
    so do devices without generators of their own (XLA's), whose draws `draw` then copies over."""
    device = like.device
    home = torch.device("cpu") if device.type not in GENERATOR_DEVICES or is_fake(like) else device
    if generator is None:
        return torch.Generator(device=home).manual_seed(0 if seed is None else seed)
    if generator.device.type == home.type:
        return generator
    if generator.device.type != "cpu":
        raise ValueError(f"SMYRF draws on {device}: pass a torch.Generator on that device or on the CPU, "
                         f"not on {generator.device}")
    return torch.Generator(device=home).manual_seed(int(torch.randint(2**62, (), generator=generator)))


@torch.no_grad()
def cluster_orders(
    q: torch.Tensor,
    k: torch.Tensor,
    n_hashes: int,
    n_clusters: int,
    generator: torch.Generator,
    hashing: Hashing = "kd",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per round, an ordering of queries and of keys whose consecutive runs are the clusters.

    Returns q_order (B, n_hashes, N) and k_order (B, n_hashes, M), int64 token indices. Cutting
    q_order into n_clusters runs of N / n_clusters and k_order into runs of M / n_clusters gives
    balanced clusters: every cluster has exactly its size, none is empty, none crosses a batch
    element. The hashings:
      "xbox"   the paper's recipe: XBOX+, one E2LSH projection per round, sort, cut.
      "kd"     XBOX+, then a balanced k-d split per round: cut into f equal parts along a random
               direction, then each part along its own direction, for each prime factor f of
               n_clusters. Cells are compact instead of thin slabs, so neighbours share a
               cluster more often. Same O((N + M) log(N + M)) cost per level.
      "random" random balanced clusters of the same sizes: the baseline any hashing must beat.
    """
    if hashing == "random":
        (B, N), M = q.shape[:2], k.shape[1]
        keys = draw(torch.rand, B, n_hashes, N + M, generator=generator, device=q.device)
        return keys[..., :N].argsort(-1), keys[..., N:].argsort(-1)
    N = q.shape[1]
    x = _xbox_plus_tokens(q, k)
    if hashing == "xbox":
        a = random_projections(x.shape[-1], n_hashes, generator, q.device)
        projections = torch.matmul(a.t(), x.mT)  # (B, n_hashes, N + M)
        return projections[..., :N].argsort(dim=-1), projections[..., N:].argsort(dim=-1)
    if hashing == "kd":
        factors = prime_factors(n_clusters)
        if not factors:
            return _identity_orders(q, n_hashes), _identity_orders(k, n_hashes)
        # One direction per (round, node) of every level, shared by the node's queries and keys,
        # drawn at once: level l's nodes are the product of the factors before it. The first level
        # has one node, so its order is a plain sort.
        nodes = [math.prod(factors[:level]) for level in range(len(factors))]
        directions = draw(torch.randn, sum(nodes), n_hashes, x.shape[-1], generator=generator, device=q.device)
        levels = directions.split(nodes)
        first = _projections(x, levels[0])[:, :, 0]
        q_order, k_order = first[..., :N].argsort(dim=-1), first[..., N:].argsort(dim=-1)
        for a in levels[1:]:
            projections = _projections(x, a)
            q_order = _sort_within_nodes(projections[..., :N], q_order)
            k_order = _sort_within_nodes(projections[..., N:], k_order)
        return q_order, k_order
    raise ValueError(f"hashing must be one of {HASHINGS}, got {hashing!r}")


def prime_factors(n: int) -> list[int]:
    """Largest first: the widest split happens at the root, where directions see the most points."""
    factors, f = [], 2
    while f * f <= n:
        while n % f == 0:
            factors.append(f)
            n //= f
        f += 1
    if n > 1:
        factors.append(n)
    return sorted(factors, reverse=True)


def _identity_orders(x: torch.Tensor, n_hashes: int) -> torch.Tensor:
    B, T = x.shape[:2]
    return torch.arange(T, device=x.device).expand(B, n_hashes, T).contiguous()


def _projections(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """x: (B, T, D) on every direction (nodes, H, D) of a level -> (B, H, nodes, T), one product."""
    nodes, H, D = directions.shape
    return torch.matmul(directions.view(nodes * H, D), x.mT).view(x.shape[0], nodes, H, x.shape[1]).transpose(1, 2)


def _sort_within_nodes(projections: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Re-sort each node's run of `order` by the projection on that node's direction.

    projections: (B, H, nodes, T) every point on every direction of this level (cheap: H * nodes
    columns); order: (B, H, T) cut into `nodes` equal runs. Each point's own node's value is
    gathered (one float per point, not its D features). Afterwards every run, cut into `factor`
    equal pieces, gives the children of that node.
    """
    B, H, nodes, T = projections.shape
    runs = order.view(B, H, nodes, T // nodes)
    within = projections.gather(3, runs).argsort(dim=-1)
    return runs.gather(-1, within).view(B, H, T)


@torch.no_grad()
def hub_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    n_hub: int,
    n_sample: int,
    scale: float,
    generator: torch.Generator,
    key_padding_mask: Optional[torch.Tensor] = None,
    kernel: str = "chunked",
) -> torch.Tensor:
    """The n_hub keys that receive the most attention mass from a random sample of queries.

    Peaky attention maps (BigGAN's) send much of all mass to a few keys; giving every query those
    keys exactly once removes the largest error of any clustering. Returns (B, n_hub) key indices.
    Cost O(n_sample * M * d) time, memory O(B M): no (n_sample, M) score matrix exists, and the ops
    issued do not depend on the sizes. With kernel "triton", two Triton launches
    (`triton/hub.py`) that read the sampled rows through `pick` in q's dtype; otherwise float32
    copies through the cluster kernel `kernel` (`key_mass`). Both between a randperm and a topk.
    """
    N = q.shape[1]
    pick = draw(torch.randperm, N, generator=generator, device=q.device)[: min(n_sample, N)]
    if kernel == "triton":
        from .triton.hub import key_mass as sampled_key_mass  # triton is imported only where it runs

        mass = sampled_key_mass(q, pick, k, scale, key_padding_mask)
    else:
        mass = key_mass(q[:, pick].float(), k.float(), scale, kernel, key_padding_mask)
    return mass.topk(n_hub, dim=-1).indices


def key_mass(q: torch.Tensor, k: torch.Tensor, scale: float, kernel: str,
             key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, M): the attention mass softmax(scale q kᵀ) gives each key, summed over the queries.

    That is attention's value gradient for all-ones values and output gradient (dV = Pᵀ 1), so
    the cluster kernels compute it, one cluster per batch element, without the score matrix.
    Queries whose keys are all masked give no mass.
    """
    values = k.new_ones(*k.shape[:2], 1)
    out, lse = attention_forward(q, k, values, scale, kernel, key_mask)
    _, _, mass = attention_backward(torch.ones_like(out), q, k, values, out, lse, scale, kernel, key_mask)
    return mass[..., 0]
