"""One table of attention settings: the fields of `AttentionConfig`.

Everything else derives from it: `smyrf_attention`'s and `attend`'s defaults, the partial
`AttentionChange` that schedules, the swap API and `sample.py` apply on top of a block's settings,
sample.py's flags (with the help texts below) and LightningCLI's `--help`. A new SMYRF option is
one `setting(...)` line here plus its use in `smyrf.py`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Optional

from .cluster_attention import Kernel

AttentionKind = Literal["dense", "smyrf"]
Hashing = Literal["kd", "xbox", "random"]
Dedup = Literal["estimate", "none"]
KINDS: tuple[str, ...] = typing.get_args(AttentionKind)
HASHINGS: tuple[str, ...] = typing.get_args(Hashing)
DEDUPS: tuple[str, ...] = typing.get_args(Dedup)
KERNEL_CHOICES: tuple[str, ...] = typing.get_args(Kernel)


def setting(default: Any, help: str) -> Any:
    """A field of the table: its default and the one help text every interface shows."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AttentionConfig:
    """Attention kind and SMYRF parameters (the SMYRF fields are kept, and ignored, when kind is
    dense, so a dense <-> SMYRF swap is a one-field change). The paper's exact recipe is
    `AttentionConfig.paper(...)`; the defaults are this library's (README, "our default SMYRF")."""

    kind: AttentionKind = setting("dense", "dense (exact softmax attention) or smyrf (balanced asymmetric-LSH clusters)")
    n_hashes: int = setting(4, "SMYRF hash rounds; their outputs are combined by their logsumexps")
    q_cluster_size: int = setting(2048, "queries per cluster; must divide the number of queries")
    k_cluster_size: Optional[int] = setting(
        None, "keys per cluster; null = as many clusters as the queries (q_cluster_size * keys / queries), "
        "and it follows q_cluster_size when only that is changed")
    hashing: Hashing = setting(
        "kd", "kd (balanced k-d cells after XBOX+), xbox (the paper: one projection per round) or random (baseline)")
    n_hub_keys: Optional[int] = setting(
        None, "keys with the most estimated attention mass, attended by every query once in an extra round; "
        "null = k_cluster_size // 4, 0 = off (the paper)")
    hub_sample: int = setting(256, "queries sampled to estimate which keys are hubs")
    n_summaries: Optional[int] = setting(
        None, "summary keys per cluster and round (means of equal blocks of the hash-sorted keys outside "
        "the cluster); null = about k_cluster_size // 16, 0 = off (the paper)")
    dedup: Dedup = setting("estimate", "estimate (correct for keys met in several rounds) or none (the paper)")
    kernel: Kernel = setting(
        "auto", "how SMYRF's clusters are computed, same numbers up to rounding: auto (CPU: flash; CUDA: triton), "
        "flash (PyTorch's CPU kernel), triton (CUDA: rounds read through the sort order) or chunked (any device)")

    @classmethod
    def paper(cls, **changes) -> "AttentionConfig":
        """SMYRF exactly as published: XBOX+, one E2LSH projection per round, no hub keys,
        summaries or dedup."""
        return cls(**{**PAPER_RECIPE, **changes})

    def __post_init__(self):
        check_values(self)

    def with_(self, **changes) -> "AttentionConfig":
        """A copy with some fields changed (validated again). Changing q_cluster_size alone resets
        k_cluster_size to automatic: query and key clusters must pair up, so the old key size
        could only be wrong."""
        unknown = set(changes) - set(FIELD_NAMES)
        if unknown:
            raise TypeError(f"unknown attention settings {sorted(unknown)}; valid: {list(FIELD_NAMES)}")
        if "q_cluster_size" in changes and "k_cluster_size" not in changes:
            changes["k_cluster_size"] = None
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
            n_hubs = self.hub_keys_for(n_queries, n_keys)
            if not 0 <= n_hubs < n_keys:
                raise ValueError(f"{where}: n_hub_keys={n_hubs} must be below the {n_keys} keys (n_hub_keys must be in [0, {n_keys}))")
            check_summaries(self.summaries_for(n_queries, n_keys), n_keys, where)

    def describe(self) -> str:
        if self.kind == "dense":
            return "dense"
        k = "auto" if self.k_cluster_size is None else self.k_cluster_size
        hubs = "auto" if self.n_hub_keys is None else self.n_hub_keys
        summaries = "auto" if self.n_summaries is None else self.n_summaries
        kernel = "" if self.kernel == "auto" else f", kernel={self.kernel}"
        return (f"smyrf({self.n_hashes}x{self.q_cluster_size}q/{k}k, {self.hashing}, hubs={hubs}, "
                f"summaries={summaries}, dedup={self.dedup}{kernel})")


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(AttentionConfig))
FIELD_HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(AttentionConfig)}
PAPER_RECIPE = {"kind": "smyrf", "hashing": "xbox", "n_hub_keys": 0, "n_summaries": 0, "dedup": "none"}


def _document(cls: type, intro: str) -> None:
    """Write the table's help texts into `cls`'s docstring (LightningCLI's --help reads it)."""
    lines = [f"        {name}: {text}" for name, text in FIELD_HELP.items()]
    cls.__doc__ = f"{intro}\n\n    Attributes:\n" + "\n".join(lines) + "\n"


_document(AttentionConfig, AttentionConfig.__doc__.strip())


def check_values(config) -> None:
    """Field-by-field checks, shared by AttentionConfig and AttentionChange (None = not set)."""
    def positive(name, minimum=1):
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")

    def one_of(name, options):
        value = getattr(config, name)
        if value is not None and value not in options:
            raise ValueError(f"{'attention kind' if name == 'kind' else name} must be one of {options}, got {value!r}")

    one_of("kind", KINDS)
    one_of("hashing", HASHINGS)
    one_of("dedup", DEDUPS)
    one_of("kernel", KERNEL_CHOICES)
    for name in ("n_hashes", "q_cluster_size", "k_cluster_size", "hub_sample"):
        positive(name)
    for name in ("n_hub_keys", "n_summaries"):
        positive(name, minimum=0)


@dataclass(frozen=True)
class _Change:
    """Methods of AttentionChange (its fields are generated from AttentionConfig's below). A
    dataclass itself, so that jsonargparse sees a plain dataclass, not a class hierarchy."""

    def __post_init__(self):
        check_values(self)

    @classmethod
    def paper(cls, **changes) -> "AttentionChange":
        """Switch to the paper's exact recipe, keeping the cluster sizes (and anything in `changes`)."""
        return cls(**{**PAPER_RECIPE, **changes})

    def changes(self) -> dict[str, Any]:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def apply(self, config: AttentionConfig) -> AttentionConfig:
        return config.with_(**self.changes())

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.changes().items()) or "no change"


# Every AttentionConfig field, optional, default None = "keep the block's current value". This is
# what a schedule entry (`model.attention.eval: {kind: dense}`) or sample.py's flags mean: change
# these fields of what G was built (and trained) with, and nothing else. Generated from the table
# so the two can never disagree.
AttentionChange = dataclasses.make_dataclass(
    "AttentionChange",
    [(f.name, Optional[hint], field(default=None)) for f, hint in
     zip(fields(AttentionConfig), typing.get_type_hints(AttentionConfig).values())],
    bases=(_Change,),
    frozen=True,
)
AttentionChange.__module__ = __name__
_document(AttentionChange, "Changes to a block's attention settings: only the fields that are set (not null) change.")


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
