"""FID / IS / KID of G_ema during validation, split across ranks; SMYRF-vs-dense diagnostics.

Each rank renders an equal share of `metrics.n_samples` images (latents of fixed indices, so every
validation scores the same z) and extracts their Inception features; the features are gathered,
rank 0 computes the metrics and broadcasts them, so every rank logs (and checkpoints on) the same
numbers. Real statistics are computed once by rank 0 (others wait at a barrier, then read the cache).
Cost per evaluation: n_samples G forwards + Inception forwards, divided by the number of ranks.
"""
from __future__ import annotations

from typing import Optional

import torch

from biggan_smyrf.inference.sampling import labels, latents, render
from biggan_smyrf.metrics import (
    MetricsConfig,
    RealStatistics,
    compute_metrics,
    create_extractor,
    extract_features,
    load_or_compute_real_stats,
    resolve_weights,
)
from biggan_smyrf.models.diagnostics import attention_diagnostics

VALIDATION_SEED = 0


class Evaluator:
    """Owns the Inception extractor and the real statistics of one run."""

    def __init__(self, cfg: MetricsConfig):
        self.cfg = cfg
        self.weights: Optional[str] = None
        self.extractor = None
        self.real: Optional[RealStatistics] = None

    def check_weights(self) -> None:
        """At start-up: fail in seconds, with instructions, if the Inception weights are unavailable."""
        self.weights = resolve_weights(self.cfg)

    def prepare(self, module) -> None:
        """Extractor and real statistics, once per run (rank 0 computes, the others read its cache)."""
        if self.extractor is None:
            self.extractor = create_extractor(self.cfg, module.device, self.weights)
        if self.real is not None or not self.cfg.needs_real:
            return
        datamodule = getattr(module.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "uint8_batches"):
            raise ValueError("metrics need the real images of an ImageDataModule; pass one, or set model.metrics.enabled=false")
        strategy = module.trainer.strategy
        if module.trainer.is_global_zero:
            self.real = self._real_stats(module, datamodule)
        strategy.barrier("biggan_smyrf.real_statistics")
        if self.real is None:
            self.real = self._real_stats(module, datamodule)  # a cache hit now

    def _real_stats(self, module, datamodule) -> RealStatistics:
        return load_or_compute_real_stats(
            self.cfg,
            datamodule.fingerprint,
            datamodule.resolution,
            lambda: datamodule.uint8_batches(self.cfg.batch_size),
            len(datamodule.images),
            module.device,
            extractor=self.extractor,
            weights_path=self.weights,
        )

    @torch.no_grad()
    def evaluate(self, module, generator: torch.nn.Module) -> dict[str, float]:
        """Metrics of `generator` (as currently configured) over n_samples images from all ranks."""
        world, rank = module.trainer.world_size, module.trainer.global_rank
        per_rank = -(-self.cfg.n_samples // world)  # ceil: every rank gathers the same shape
        config = generator.config
        z = latents(per_rank, config.dim_z, VALIDATION_SEED, start=rank * per_rank)
        y = labels(per_rank, config.n_classes, VALIDATION_SEED, start=rank * per_rank)
        batches = render(generator, z, y, self.cfg.batch_size, to_cpu=False)
        features = extract_features(self.extractor, batches, module.device)
        if world == 1:
            return compute_metrics(self.cfg, features, self.real)
        features = {name: module.all_gather(f.to(module.device)).flatten(0, 1).cpu() for name, f in features.items()}
        # Rank 0 computes (FID's 2048x2048 matrix square root would otherwise run on every rank at
        # once, fighting over the CPU cores); the others wait in the broadcast.
        scores = compute_metrics(self.cfg, features, self.real) if module.trainer.is_global_zero else None
        return module.trainer.strategy.broadcast(scores, src=0)


def log_diagnostics(module, logger_experiment) -> None:
    """Per attention block of G_ema: SMYRF error and covered mass vs dense, and the cluster map,
    with the SMYRF settings this run uses."""
    smyrf = module.smyrf_blocks()
    z, y = module.fixed_z[:2], module.fixed_y[:2]
    for d in attention_diagnostics(module.G_ema.module, smyrf, z, y).values():
        tag = f"{d.resolution}px"
        module.log(f"diag/smyrf_error_{tag}", d.error, rank_zero_only=True)
        module.log(f"diag/smyrf_mass_share_{tag}", d.mass_share, rank_zero_only=True)
        if logger_experiment is not None and hasattr(logger_experiment, "add_image"):
            logger_experiment.add_image(f"diag/clusters_{tag}", d.cluster_map, module.g_iters)
