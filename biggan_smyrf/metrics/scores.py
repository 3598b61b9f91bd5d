"""FID, Inception Score and KID from extracted features, with torch-fidelity's own functions.

Only the sample-count handling is ours: torch-fidelity's defaults (10 IS splits, KID subsets of
1000) assume thousands of samples, so both are clamped for the small evaluations of smoke tests and
short runs. With enough samples every number equals `torch_fidelity.calculate_metrics` on the same
images (same splits, subsets and seeds).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from . import extractor as _extractor  # called through the module, so tests can monkeypatch it
from .config import MetricsConfig
from .real_stats import RealStatistics


def isc_splits(n: int) -> int:
    """torch-fidelity's 10 splits, fewer below 20 samples: a one-sample split scores exactly 1."""
    return max(1, min(DEFAULTS["isc_splits"], n // 2))


def kid_subset_size(cfg: MetricsConfig, n_fake: int, n_real: int) -> int:
    """`cfg.kid_subset_size`, clamped to the samples available on either side."""
    return min(cfg.kid_subset_size, n_fake, n_real)


def compute_metrics(
    cfg: MetricsConfig, fake_features: dict[str, torch.Tensor], real: Optional[RealStatistics]
) -> dict[str, float]:
    """The enabled metrics of generated-image features against real statistics.

    Keys: `fid`, `is_mean`, `is_std`, `kid_mean`, `kid_std` (only those enabled). `fake_features` is
    `extract_features`' output; `real` may be None when only IS is enabled.
    """
    out: dict[str, float] = {}
    if cfg.isc:
        logits = fake_features[_extractor.ISC_FEATURE]
        isc = isc_features_to_metric(
            logits, splits=isc_splits(len(logits)), shuffle=DEFAULTS["samples_shuffle"], rng_seed=DEFAULTS["rng_seed"]
        )
        out["is_mean"], out["is_std"] = isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]
    if cfg.fid or cfg.kid:
        if real is None:
            raise ValueError("FID and KID need real statistics (load_or_compute_real_stats)")
        features = fake_features[_extractor.FID_FEATURE]
        if len(features) < 2:
            raise ValueError(f"FID and KID need at least 2 generated images, got {len(features)}")
    if cfg.fid:
        # Argument order as calculate_metrics(input1=generated, input2=real).
        fid = fid_statistics_to_metric(fid_features_to_statistics(features), real.fid_statistics(), verbose=False)
        out["fid"] = fid[KEY_METRIC_FID]
    if cfg.kid:
        size = kid_subset_size(cfg, len(features), len(real.kid_features))
        kid = kid_features_to_metric(features, real.kid_features, kid_subset_size=size, verbose=False)
        out["kid_mean"], out["kid_std"] = kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD]
    return out


def evaluate_images(
    cfg: MetricsConfig,
    fake_batches: Iterable[torch.Tensor],
    real: Optional[RealStatistics],
    extractor: torch.nn.Module,
    device: torch.device,
) -> dict[str, float]:
    """`extract_features` on generated uint8 (B, 3, H, W) batches, then `compute_metrics`."""
    return compute_metrics(cfg, _extractor.extract_features(extractor, fake_batches, device), real)
