"""SMYRF's summary keys: per cluster and round, the means of equal blocks of the round's sorted
keys outside the cluster, so that every round sees every key once -- its own cluster exactly, the
rest at block resolution (see smyrf.py). Both routes share the maths (`summary_keys`); they differ
in how the per-round block sums are taken (a sorted copy of every round at once, or one round at a
time through its order).

Cost O(H * M * (d_qk + d_v)) for the sums, O(H * N * S) extra products in the clusters.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import SmyrfSizes

# Logit offset that removes a key from a round (hub keys from the hashed rounds, empty summary
# blocks): exp(-1e4) is 0 in every float type.
HUB_MASK_LOGIT = -1e4


def summarised(k: torch.Tensor, hub: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, M, 1) weights of the keys that go into summary means: 0 for hub and padded keys."""
    weight = torch.ones(*k.shape[:2], 1, dtype=torch.promote_types(k.dtype, torch.float32), device=k.device)
    if key_padding_mask is not None:
        weight = weight * key_padding_mask[..., None]
    if hub is not None:
        weight = weight.scatter(1, hub[..., None], 0.0)
    return weight


def summary_features(k: torch.Tensor, v: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """[k w, v w, w] per key (w: `counted`, 0 for hub and padded keys), in float32 at least: a
    block's sum minus its overlap with a cluster cancels, and half precision would make that noise."""
    acc = counted.dtype
    return torch.cat([k.to(acc) * counted, v.to(acc) * counted, counted], dim=-1)


def unit_sums_through(order: torch.Tensor, features: torch.Tensor, unit: int) -> torch.Tensor:
    """(B, H, M / unit, F): per round, the sums of `features` (B, M, F, token order) over runs of
    `unit` consecutive keys in the round's `order` (B, H, M). One round at a time, so one sorted
    copy exists at once: O(B M F) memory instead of O(B H M F). (A scatter by rank would need no
    copy at all, but on a GPU its few bins -- 32 per batch element at 16k tokens -- make every
    atomic add wait for a hundred others.)
    index_select rather than gather: its backward keeps only the index, not the (B, M, F) float32
    features (gather's keeps its input for the shape)."""
    B, H, M = order.shape
    F = features.shape[-1]
    flat = features.flatten(0, 1)
    # Rows of `flat` in each round's order, rounds first so that a round's rows are one run.
    first = torch.arange(0, B * M, M, device=order.device)[:, None, None]  # each batch element's first row
    rows = (order + first).transpose(0, 1).contiguous().view(H, B * M)
    sums = [flat.index_select(0, rows[r]).view(B, M // unit, unit, F).sum(2) for r in range(H)]
    return torch.stack(sums, dim=1)


def summary_keys(unit_sums, sizes: SmyrfSizes, d_qk: int, dtypes):
    """Every cluster's n_summaries summary keys in every round: the means of equal blocks of the
    round's sorted keys, each without the keys of the cluster itself (those it attends exactly).

    unit_sums: (B, H, n_units, d_qk + d_v + 1) `summary_features` summed over each round's runs
    of `sizes.summary_unit` sorted keys. Returns keys (B, H, n_clusters, S, d_qk) and values
    (B, H, n_clusters, S, d_v) in `dtypes` and their logit offsets (B, H, n_clusters, S, 1)
    float32: log(count), or HUB_MASK_LOGIT for an empty block.
    """
    B, H, n_units, _ = unit_sums.shape
    unit, n_clusters, n_summaries = sizes.summary_unit, sizes.n_clusters, sizes.n_summaries
    k_cluster_size, block = sizes.k_cluster_size, sizes.n_keys // n_summaries
    block_sums = unit_sums.view(B, H, n_summaries, n_units // n_summaries, -1).sum(3)
    units = torch.arange(n_units, device=unit_sums.device)
    cell = units // (k_cluster_size // unit) * n_summaries + units // (block // unit)  # (cluster, block) of each unit
    own = unit_sums.new_zeros(B, H, n_clusters * n_summaries, unit_sums.shape[-1]).index_add(2, cell, unit_sums)
    sums = block_sums[:, :, None] - own.view(B, H, n_clusters, n_summaries, -1)
    # Counts are whole numbers, exact in float32 (and constants: no gradient to carry): 0 means
    # the block lies inside the cluster, and log(0) = -inf becomes HUB_MASK_LOGIT.
    count = sums[..., -1:].detach().round()
    mean = sums[..., :-1] / count.clamp_min(1)
    offset = count.log().clamp_min_(HUB_MASK_LOGIT)
    return mean[..., :d_qk].to(dtypes[0]), mean[..., d_qk:].to(dtypes[1]), offset


def append_summaries(ks, vs, mask, counted, sizes: SmyrfSizes, scale: float):
    """The gathered route's clusters with their summary keys appended: ks (B, H, M, d + 1) with
    the logit-offset feature last, vs (B, H, M, d_v), mask (B, H*M) or None -> keys, values and
    mask laid out as clusters of k_cluster_size + n_summaries."""
    B, H, M, d = ks.shape
    n_clusters, k_cluster_size, n_summaries = sizes.n_clusters, sizes.k_cluster_size, sizes.n_summaries
    unit = sizes.summary_unit
    unit_sums = summary_features(ks[..., :-1], vs, counted).view(B, H, M // unit, unit, -1).sum(3)
    summary_k, summary_v, offset = summary_keys(unit_sums, sizes, d - 1, (ks.dtype, vs.dtype))
    summary_k = torch.cat([summary_k, (offset / scale).to(ks.dtype)], dim=-1)
    ks = torch.cat([ks.view(B, H, n_clusters, k_cluster_size, d), summary_k], dim=3)
    vs = torch.cat([vs.view(B, H, n_clusters, k_cluster_size, -1), summary_v], dim=3)
    if mask is not None:
        # Summaries are never padding; an empty one is removed by its offset instead.
        always = mask.new_ones(B, H, n_clusters, n_summaries)
        mask = torch.cat([mask.view(B, H, n_clusters, k_cluster_size), always], dim=3).flatten(1)
    return ks.flatten(2, 3), vs.flatten(2, 3), mask
