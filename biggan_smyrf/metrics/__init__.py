"""FID / IS / KID for generated images, with torch-fidelity's `inception-v3-compat` extractor.

Typical use: at start-up `resolve_weights(cfg)` (fails in seconds when the Inception weights are
unavailable offline); once, `create_extractor` and `load_or_compute_real_stats` (cached on disk);
per evaluation, `evaluate_images(cfg, uint8_batches, real, extractor, device)`. Outside training,
`prepare_scoring` does the once-only steps for an image folder.
"""
from .config import MetricsConfig
from .extractor import (
    MissingWeightsError,
    UInt8Images,
    create_extractor,
    default_weights_path,
    download_weights,
    extract_features,
    resolve_weights,
)
from .real_stats import RealStatistics, cache_key, load_or_compute_real_stats
from .scores import compute_metrics, evaluate_images
from .standalone import prepare_scoring

__all__ = [
    "MetricsConfig",
    "MissingWeightsError",
    "RealStatistics",
    "UInt8Images",
    "cache_key",
    "compute_metrics",
    "create_extractor",
    "default_weights_path",
    "download_weights",
    "evaluate_images",
    "extract_features",
    "load_or_compute_real_stats",
    "prepare_scoring",
    "resolve_weights",
]
