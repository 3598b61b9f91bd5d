"""Scores of generated-image features: every enabled metric of the registry (`registry.py`)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from . import extractor as _extractor  # called through the module, so tests can monkeypatch it
from .config import MetricsConfig
from .real_stats import RealStatistics
from .registry import METRICS


def compute_metrics(
    cfg: MetricsConfig, fake_features: dict[str, torch.Tensor], real: Optional[RealStatistics]
) -> dict[str, float]:
    """The enabled metrics (`cfg.names`) of generated-image features against real statistics.

    Keys: the enabled metrics' keys (`fid`, `is_mean`, `is_std`, `kid_mean`, `kid_std`).
    `fake_features` is `extract_features`' output; `real` may be None when no enabled metric
    needs it (IS alone).
    """
    out: dict[str, float] = {}
    for name in cfg.names:
        metric = METRICS[name]
        features = fake_features[metric.feature]
        if metric.needs_real:
            if real is None:
                raise ValueError(f"{metric.label} needs real statistics (load_or_compute_real_stats)")
            if len(features) < 2:
                raise ValueError(f"{metric.label} needs at least 2 generated images, got {len(features)}")
        out.update(metric.compute(cfg, features, real))
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
