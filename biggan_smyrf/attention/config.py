"""One typed description of "which attention, with which parameters".

The model blocks, the training schedule and `sample.py` all pass an `AttentionConfig` around;
nothing else in the code base needs to know the SMYRF parameter names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

AttentionKind = Literal["dense", "smyrf"]
KINDS = ("dense", "smyrf")


@dataclass(frozen=True)
class AttentionConfig:
    """Attention kind and SMYRF parameters.

    kind: "dense" (exact softmax attention) or "smyrf" (balanced asymmetric-LSH clusters).
    n_hashes: SMYRF hash rounds; outputs of the rounds are combined by their logsumexp.
    q_cluster_size: queries per cluster. Must divide the number of queries.
    k_cluster_size: keys per cluster. None means "same number of clusters as the queries",
        i.e. q_cluster_size * n_keys / n_queries (q_cluster_size / 4 with BigGAN's pooled keys).
    hashing: "kd" (default: balanced k-d cells after XBOX+), "xbox" (the paper: one projection
        per round), "random" (random balanced clusters, a baseline).
    n_hub_keys: keys with the most estimated attention mass that every query attends once, in an
        extra round; None = k_cluster_size // 4 (+1/16 of the products at 4 rounds), 0 = off (the paper).
    hub_sample: queries sampled to estimate which keys are hubs.
    n_summaries: summary keys per cluster and round -- means of equal blocks of the round's
        hash-sorted keys, minus the cluster's own keys -- so every round also sees the keys outside
        its cluster, coarsely; None = k_cluster_size // 16 (+1/16 of the products), 0 = off (the paper).
    dedup: "estimate" (default) corrects for keys met in several rounds; "none" = the paper.
    The paper's exact recipe: `AttentionConfig.paper(...)` (hashing="xbox", n_hub_keys=0,
    n_summaries=0, dedup="none").
    The SMYRF fields are kept (and ignored) when kind == "dense", so a dense <-> SMYRF swap is
    a one-field change.
    """

    kind: AttentionKind = "dense"
    n_hashes: int = 4
    q_cluster_size: int = 2048
    k_cluster_size: Optional[int] = None
    hashing: Literal["kd", "xbox", "random"] = "kd"
    n_hub_keys: Optional[int] = None
    hub_sample: int = 256
    n_summaries: Optional[int] = None
    dedup: Literal["estimate", "none"] = "estimate"

    @classmethod
    def paper(cls, **kwargs) -> "AttentionConfig":
        """SMYRF exactly as published: XBOX+, one E2LSH projection per round, no hub keys,
        summaries or dedup."""
        return cls(**{"kind": "smyrf", "hashing": "xbox", "n_hub_keys": 0, "n_summaries": 0, "dedup": "none", **kwargs})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_hashes < 1:
            raise ValueError(f"n_hashes must be >= 1, got {self.n_hashes}")
        if self.q_cluster_size < 1:
            raise ValueError(f"q_cluster_size must be >= 1, got {self.q_cluster_size}")
        if self.k_cluster_size is not None and self.k_cluster_size < 1:
            raise ValueError(f"k_cluster_size must be >= 1 or None, got {self.k_cluster_size}")
        if self.hashing not in ("kd", "xbox", "random"):
            raise ValueError(f"hashing must be 'kd', 'xbox' or 'random', got {self.hashing!r}")
        if self.n_hub_keys is not None and self.n_hub_keys < 0:
            raise ValueError(f"n_hub_keys must be >= 0 or None, got {self.n_hub_keys}")
        if self.n_summaries is not None and self.n_summaries < 0:
            raise ValueError(f"n_summaries must be >= 0 or None, got {self.n_summaries}")
        if self.hub_sample < 1:
            raise ValueError(f"hub_sample must be >= 1, got {self.hub_sample}")
        if self.dedup not in ("estimate", "none"):
            raise ValueError(f"dedup must be 'estimate' or 'none', got {self.dedup!r}")

    def with_(self, **changes) -> "AttentionConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def cluster_sizes(self, n_queries: int, n_keys: int, where: str = "attention") -> tuple[int, int]:
        """(q_cluster_size, k_cluster_size) for this many tokens, or a ValueError saying what fits."""
        return resolve_cluster_sizes(n_queries, n_keys, self.q_cluster_size, self.k_cluster_size, where)

    def hub_keys_for(self, n_queries: int, n_keys: int) -> int:
        """The number of hub keys at these token counts (resolves the None default)."""
        if self.n_hub_keys is not None:
            return self.n_hub_keys
        return self.cluster_sizes(n_queries, n_keys)[1] // 4

    def summaries_for(self, n_queries: int, n_keys: int) -> int:
        """Summary keys per cluster at these token counts (resolves the None default: about
        k_cluster_size // 16, lowered to a divisor of n_keys so the blocks are equal)."""
        if self.n_summaries is not None:
            return self.n_summaries
        wanted = self.cluster_sizes(n_queries, n_keys)[1] // 16
        return max((s for s in range(1, wanted + 1) if n_keys % s == 0), default=0)

    def validate_for(self, n_queries: int, n_keys: int, where: str = "attention") -> None:
        """Fail early (at model build or swap time) if SMYRF's sizes don't fit the tokens."""
        if self.kind == "smyrf":
            self.cluster_sizes(n_queries, n_keys, where)
            if self.hub_keys_for(n_queries, n_keys) >= n_keys:
                raise ValueError(f"{where}: n_hub_keys={self.n_hub_keys} must be below the {n_keys} keys")
            check_summaries(self.summaries_for(n_queries, n_keys), n_keys, where)

    def describe(self) -> str:
        if self.kind == "dense":
            return "dense"
        k = "auto" if self.k_cluster_size is None else self.k_cluster_size
        hubs = "auto" if self.n_hub_keys is None else self.n_hub_keys
        summaries = "auto" if self.n_summaries is None else self.n_summaries
        return (f"smyrf({self.n_hashes}x{self.q_cluster_size}q/{k}k, {self.hashing}, hubs={hubs}, "
                f"summaries={summaries}, dedup={self.dedup})")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def valid_q_cluster_sizes(n_queries: int, n_keys: int) -> list[int]:
    """Query cluster sizes that give a whole number of clusters for both queries and keys."""
    return [c for c in _divisors(n_queries) if n_keys % (n_queries // c) == 0]


def resolve_cluster_sizes(
    n_queries: int, n_keys: int, q_cluster_size: int, k_cluster_size: Optional[int], where: str = "attention"
) -> tuple[int, int]:
    """Check that the clusters tile queries and keys exactly; fill in the default key cluster size."""
    if q_cluster_size < 1 or (k_cluster_size is not None and k_cluster_size < 1):
        raise ValueError(f"{where}: cluster sizes must be positive, got q={q_cluster_size}, k={k_cluster_size}")

    def hint() -> str:
        sizes = [c for c in valid_q_cluster_sizes(n_queries, n_keys) if c > 1][-8:]
        pairs = ", ".join(f"{c}/{c * n_keys // n_queries}" for c in sizes)
        return f" Sizes that fit (q_cluster_size/k_cluster_size): {pairs}."

    if n_queries % q_cluster_size:
        raise ValueError(
            f"{where}: {n_queries} queries are not divisible by q_cluster_size={q_cluster_size}." + hint()
        )
    n_clusters = n_queries // q_cluster_size
    if k_cluster_size is None:
        if n_keys % n_clusters:
            raise ValueError(
                f"{where}: {n_keys} keys cannot be cut into the {n_clusters} clusters that "
                f"q_cluster_size={q_cluster_size} makes of {n_queries} queries." + hint()
            )
        k_cluster_size = n_keys // n_clusters
    elif k_cluster_size * n_clusters != n_keys:
        raise ValueError(
            f"{where}: q_cluster_size={q_cluster_size} gives {n_clusters} query clusters but "
            f"k_cluster_size={k_cluster_size} gives {n_keys / k_cluster_size:g} key clusters "
            f"({n_queries} queries, {n_keys} keys); they must be equal." + hint()
        )
    return q_cluster_size, k_cluster_size


def check_summaries(n_summaries: int, n_keys: int, where: str) -> None:
    if n_summaries < 0 or (n_summaries and n_keys % n_summaries):
        fits = [s for s in range(1, min(n_keys, 512) + 1) if n_keys % s == 0][-8:]
        raise ValueError(
            f"{where}: n_summaries={n_summaries} must be 0 or divide the {n_keys} keys "
            f"(the hash order is cut into equal blocks). Values that fit: {fits}."
        )
