"""Scoring outside training (sample.py --metrics, benchmarks): the extractor and the cached real
statistics of an image folder or zip, set up the same way as validation does."""
from __future__ import annotations

from typing import Optional

import torch

from biggan_smyrf.data import ImageDataModule

from .config import MetricsConfig
from .extractor import create_extractor, resolve_weights
from .real_stats import RealStatistics, load_or_compute_real_stats


def prepare_scoring(
    cfg: MetricsConfig, data_root: Optional[str], resolution: int, device: torch.device
) -> tuple[torch.nn.Module, Optional[RealStatistics]]:
    """(extractor, real statistics) for scoring generated images with `evaluate_images` against
    the images at `data_root` (None: the built-in demo faces); no statistics (None) when the
    metrics asked for need none (IS alone). Fails early, with instructions, when the Inception
    weights are missing."""
    weights = resolve_weights(cfg)
    data = ImageDataModule(root=data_root, resolution=resolution, batch_size=1, num_workers=0) if cfg.needs_real else None
    extractor = create_extractor(cfg, device, weights)
    if data is None:
        return extractor, None
    real = load_or_compute_real_stats(cfg, data.fingerprint, data.resolution, lambda: data.uint8_batches(cfg.batch_size),
                                      len(data.images), device, extractor=extractor, weights_path=weights)
    return extractor, real
