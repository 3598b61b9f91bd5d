"""Reference statistics of the real images, computed once and cached on disk.

Extracting Inception features for tens of thousands of real images takes minutes, and the result
only depends on what goes in, so it is cached under `<cache_dir>/<key>.pt`. The key is a hash of
everything the statistics depend on (see `cache_key`): any change produces a new file name, so a
stale file is never read, and files from different datasets or settings live side by side.

All features of the `n_real` images are held in memory once while computing (8 KiB per image:
240 MB for CelebA-HQ's 30,000); set `metrics.n_real` for much larger datasets.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.metric_fid import fid_features_to_statistics

from biggan_smyrf.atomic import replacing

from . import extractor as _extractor  # called through the module, so tests can monkeypatch it
from .config import MetricsConfig
from .registry import FID_FEATURE

# Bump when the cached content or its meaning changes (e.g. the KID row selection).
CACHE_FORMAT = 1
# KID compares random subsets of `kid_subset_size` (default 1000) images per side, 100 times; a pool
# of 10,000 real rows is plenty to draw from and keeps the file at 80 MB instead of 8 KiB per image.
# Below this many real images all rows are kept, and KID equals torch-fidelity's exactly.
KID_MAX_REAL = 10_000
KID_ROWS_SEED = 0

_file_hashes: dict[tuple[str, int, int], str] = {}


def file_identity(path: Optional[str]) -> str:
    """The sha256 of a file's contents (hashed once per process and file version).

    Content rather than path + size + mtime: the same weights copied to another machine or
    directory give the same key (no needless recomputation), and a file replaced in place with
    different weights of the same size never does. Hashing the 91 MB Inception file takes ~0.3 s.
    """
    if path is None:
        return f"url:{_extractor.WEIGHTS_URL}"
    stat = os.stat(path)
    memo = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _file_hashes[memo] = digest.hexdigest()
    return _file_hashes[memo]


def cache_key(fingerprint: str, resolution: int, n_real: int, cfg: MetricsConfig, weights_file: Optional[str]) -> str:
    """sha256 over everything the real statistics depend on.

    That is: the dataset fingerprint, the image resolution, the number of real images actually
    used, the feature extractor's name, the contents of its weights file (`file_identity`), the
    torch-fidelity version (its preprocessing could change) and this module's cache format.
    """
    parts = [
        f"format={CACHE_FORMAT}",
        f"fingerprint={fingerprint}",
        f"resolution={int(resolution)}",
        f"n_real={int(n_real)}",
        f"extractor={cfg.feature_extractor}",
        f"weights={file_identity(weights_file)}",
        f"torch_fidelity={torch_fidelity.__version__}",
        f"kid_max_real={KID_MAX_REAL}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass
class RealStatistics:
    """FID statistics and a pool of features for KID, for `n` real images.

    `mu` (float32) and `sigma` (float64) are exactly what torch-fidelity's
    `fid_features_to_statistics` returns, as tensors so the cache loads with `weights_only=True`.
    `kid_features` holds at most `KID_MAX_REAL` rows of the 2048-d features (a fixed random subset).
    """

    mu: torch.Tensor
    sigma: torch.Tensor
    kid_features: torch.Tensor
    n: int
    key: str = ""

    @classmethod
    def from_features(cls, features: torch.Tensor, key: str = "") -> "RealStatistics":
        stats = fid_features_to_statistics(features)
        kid_features = features
        if len(features) > KID_MAX_REAL:
            generator = torch.Generator().manual_seed(KID_ROWS_SEED)
            rows = torch.randperm(len(features), generator=generator)[:KID_MAX_REAL].sort().values
            kid_features = features[rows]
        return cls(
            mu=torch.from_numpy(stats["mu"]),
            sigma=torch.from_numpy(stats["sigma"]),
            kid_features=kid_features.clone(),
            n=len(features),
            key=key,
        )

    def fid_statistics(self) -> dict[str, np.ndarray]:
        """The statistics in the form `fid_statistics_to_metric` takes."""
        return {"mu": self.mu.numpy(), "sigma": self.sigma.numpy()}

    def state_dict(self) -> dict:
        return {
            "format": CACHE_FORMAT,
            "key": self.key,
            "n": self.n,
            "mu": self.mu,
            "sigma": self.sigma,
            "kid_features": self.kid_features,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "RealStatistics":
        if state.get("format") != CACHE_FORMAT:
            raise ValueError(f"cache format {state.get('format')}, expected {CACHE_FORMAT}")
        fields = ("mu", "sigma", "kid_features")
        return cls(**{name: state[name] for name in fields}, n=int(state["n"]), key=state["key"])


def cache_path(cfg: MetricsConfig, key: str) -> Path:
    return Path(cfg.cache_dir).expanduser() / f"{key}.pt"


def _save_atomically(stats: RealStatistics, path: Path) -> None:
    with replacing(path) as temp:
        torch.save(stats.state_dict(), temp)


def _load(path: Path, key: str) -> Optional[RealStatistics]:
    """The cached statistics, or None (with a warning) if the file is unreadable or not ours."""
    try:
        stats = RealStatistics.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        if stats.key != key:
            raise ValueError(f"it holds statistics for key {stats.key}")
        return stats
    except Exception as error:
        warnings.warn(f"ignoring unusable real-statistics cache {path} ({error}); recomputing", stacklevel=3)
        return None


def load_or_compute_real_stats(
    cfg: MetricsConfig,
    fingerprint: str,
    resolution: int,
    real_batches_factory: Callable[[], Iterable[torch.Tensor]],
    n_real_available: int,
    device: torch.device,
    extractor: Optional[torch.nn.Module] = None,
    weights_path: Optional[str] = None,
) -> RealStatistics:
    """Statistics of the first `min(cfg.n_real, n_real_available)` real images, from the cache if
    present, else computed and cached.

    `real_batches_factory()` must yield the real images in a fixed order as uint8 (B, 3, H, W)
    tensors; it is only called on a cache miss, as is `extractor` only needed (and created from
    `cfg` when not given) then. `weights_path` defaults to `resolve_weights(cfg)`.
    """
    if not cfg.enabled:
        raise ValueError("metrics are disabled (metrics.enabled=false); there are no real statistics to compute")
    n_real = n_real_available if cfg.n_real is None else min(cfg.n_real, n_real_available)
    if n_real < 2:
        raise ValueError(f"need at least 2 real images for FID/KID statistics, have {n_real}")
    weights_path = weights_path or _extractor.resolve_weights(cfg)
    key = cache_key(fingerprint, resolution, n_real, cfg, weights_path)
    path = cache_path(cfg, key)
    if path.is_file():
        stats = _load(path, key)
        if stats is not None:
            return stats

    if extractor is None:
        extractor = _extractor.create_extractor(cfg, device, weights_path)
    if FID_FEATURE not in extractor.get_requested_features_list():
        raise ValueError(f"the extractor must provide the {FID_FEATURE!r} features for real statistics")
    features = _extractor.extract_features(extractor, real_batches_factory(), device, limit=n_real)
    features = features[FID_FEATURE]
    if len(features) != n_real:
        raise ValueError(f"real_batches_factory yielded {len(features)} images, expected {n_real}")
    stats = RealStatistics.from_features(features, key)
    _save_atomically(stats, path)
    return stats
