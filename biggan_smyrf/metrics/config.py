"""Options for FID / IS / KID evaluation. LightningCLI reads the dataclass straight from the YAML
configs and shows this docstring in `--help`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .registry import METRICS

SUPPORTED_EXTRACTORS = ("inception-v3-compat",)


@dataclass
class MetricsConfig:
    """FID, Inception Score and KID with torch-fidelity's `inception-v3-compat` extractor.

    Attributes:
        enabled: compute metrics at all. `false` skips them and never needs the Inception weights.
        n_samples: generated images per evaluation. 10,000 is cheap enough to track training; use
            50,000 for numbers to report (FID is biased upwards at small sample counts).
        n_real: real images for the reference statistics; None = the whole dataset. Part of the
            statistics' cache key, so changing it computes new statistics.
        batch_size: images per forward pass of the Inception network.
        names: the metrics to compute, from metrics/registry.py: `fid` (key `fid`), `isc`, the
            Inception Score (keys `is_mean`, `is_std`; 10 splits, fewer for tiny runs), `kid` (keys
            `kid_mean`, `kid_std`; 100 subsets).
        kid_subset_size: images per KID subset (torch-fidelity's default 1000); clamped to the
            number of generated and real images available.
        feature_extractor: torch-fidelity feature extractor; only `inception-v3-compat`, the
            standard TF-Inception port, is supported.
        weights_path: local Inception weights file (torch-fidelity's
            `weights-inception-2015-12-05-6726825d.pth`), for machines without internet. None =
            torch's hub cache, downloaded there once if missing.
        cache_dir: where real-image statistics are cached, one file per dataset, resolution,
            n_real and weights file.
    """

    enabled: bool = True
    n_samples: int = 10000
    n_real: Optional[int] = None
    batch_size: int = 64
    names: list[str] = field(default_factory=lambda: list(METRICS))
    kid_subset_size: int = 1000
    feature_extractor: str = "inception-v3-compat"
    weights_path: Optional[str] = None
    cache_dir: str = "data/cache/metrics"

    def __post_init__(self):
        # Two samples is the minimum every metric is defined for (a covariance, two IS halves,
        # the unbiased MMD estimator), so smaller values can only be typos.
        if self.n_samples < 2:
            raise ValueError(f"metrics.n_samples must be >= 2, got {self.n_samples}")
        if self.n_real is not None and self.n_real < 2:
            raise ValueError(f"metrics.n_real must be >= 2 or null (all real images), got {self.n_real}")
        if self.batch_size < 1:
            raise ValueError(f"metrics.batch_size must be >= 1, got {self.batch_size}")
        if self.kid_subset_size < 2:
            raise ValueError(f"metrics.kid_subset_size must be >= 2, got {self.kid_subset_size}")
        if self.feature_extractor not in SUPPORTED_EXTRACTORS:
            raise ValueError(
                f"metrics.feature_extractor must be one of {SUPPORTED_EXTRACTORS}, got {self.feature_extractor!r}"
            )
        unknown = [name for name in self.names if name not in METRICS]
        if unknown:
            raise ValueError(f"metrics.names: unknown metrics {unknown}; available: {list(METRICS)}")
        if self.enabled and not self.names:
            raise ValueError("metrics.enabled is true but metrics.names is empty; name one of "
                             f"{list(METRICS)} or set metrics.enabled=false")
        if not self.cache_dir:
            raise ValueError("metrics.cache_dir must be a directory path, got an empty string")

    @property
    def needs_real(self) -> bool:
        """Whether the enabled metrics compare against real images (IS alone does not)."""
        return self.enabled and any(METRICS[name].needs_real for name in self.names)

    @property
    def features(self) -> list[str]:
        """The extractor outputs the enabled metrics read."""
        return sorted({METRICS[name].feature for name in self.names})
