"""The metrics, one entry each: what they read from the extractor, whether they need real
statistics, which keys they return, and how they are computed (torch-fidelity's own functions).

Configuration (`MetricsConfig.names`), feature extraction, scoring and logging all read this
table, so a new metric is one `Metric(...)` entry here.

Only the sample-count handling is ours: torch-fidelity's defaults (10 IS splits, KID subsets of
1000) assume thousands of samples, so both are clamped for the small evaluations of smoke tests and
short runs. With enough samples every number equals `torch_fidelity.calculate_metrics` on the same
images (same splits, subsets and seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch_fidelity.defaults import DEFAULTS
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

if TYPE_CHECKING:  # annotations only: config.py reads this table to validate names
    from .config import MetricsConfig
    from .real_stats import RealStatistics

FID_FEATURE = "2048"  # pool3 features, for FID and KID
ISC_FEATURE = "logits_unbiased"  # the logits without bias, as the original IS code uses


@dataclass(frozen=True)
class Metric:
    label: str  # how messages name it
    feature: str  # the extractor output it reads
    needs_real: bool  # compares against the real statistics
    keys: tuple[str, ...]  # what `compute` returns; logged as val/<key>_<attention kind>
    compute: Callable[["MetricsConfig", torch.Tensor, Optional["RealStatistics"]], dict[str, float]]


def isc_splits(n: int) -> int:
    """torch-fidelity's 10 splits, fewer below 20 samples: a one-sample split scores exactly 1."""
    return max(1, min(DEFAULTS["isc_splits"], n // 2))


def kid_subset_size(cfg: "MetricsConfig", n_fake: int, n_real: int) -> int:
    """`cfg.kid_subset_size`, clamped to the samples available on either side."""
    return min(cfg.kid_subset_size, n_fake, n_real)


def _fid(cfg, features, real) -> dict[str, float]:
    # Argument order as calculate_metrics(input1=generated, input2=real).
    fid = fid_statistics_to_metric(fid_features_to_statistics(features), real.fid_statistics(), verbose=False)
    return {"fid": fid[KEY_METRIC_FID]}


def _isc(cfg, logits, real) -> dict[str, float]:
    isc = isc_features_to_metric(
        logits, splits=isc_splits(len(logits)), shuffle=DEFAULTS["samples_shuffle"], rng_seed=DEFAULTS["rng_seed"]
    )
    return {"is_mean": isc[KEY_METRIC_ISC_MEAN], "is_std": isc[KEY_METRIC_ISC_STD]}


def _kid(cfg, features, real) -> dict[str, float]:
    size = kid_subset_size(cfg, len(features), len(real.kid_features))
    kid = kid_features_to_metric(features, real.kid_features, kid_subset_size=size, verbose=False)
    return {"kid_mean": kid[KEY_METRIC_KID_MEAN], "kid_std": kid[KEY_METRIC_KID_STD]}


METRICS: dict[str, Metric] = {
    "fid": Metric("FID", FID_FEATURE, needs_real=True, keys=("fid",), compute=_fid),
    "isc": Metric("IS", ISC_FEATURE, needs_real=False, keys=("is_mean", "is_std"), compute=_isc),
    "kid": Metric("KID", FID_FEATURE, needs_real=True, keys=("kid_mean", "kid_std"), compute=_kid),
}
