"""The Inception feature extractor: finding its weights offline-safely, building it, running it.

torch-fidelity downloads the Inception weights the first time its extractor is built, which on a
machine without internet fails only when the first evaluation starts, possibly hours into a run.
`resolve_weights` is meant to be called at start-up instead: it finds the weights (a configured
file, or torch-fidelity's own download location), downloads them once if allowed, and otherwise
fails immediately with instructions. The extractor is then always built from a local file.
"""
from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.utils import create_feature_extractor

from biggan_smyrf.atomic import replacing

from .config import MetricsConfig

WEIGHTS_URL = URL_INCEPTION_V3
# torch.hub names a downloaded checkpoint after the URL's last component, and torch-fidelity loads
# it with `load_state_dict_from_url`, so this is where its own download lands.
WEIGHTS_FILENAME = os.path.basename(urllib.parse.urlparse(WEIGHTS_URL).path)
# Seconds a connect or read may stall, not a cap on the whole 91 MB transfer: an offline machine
# fails within this, a slow but working connection still completes.
DOWNLOAD_TIMEOUT_S = 15.0


class MissingWeightsError(RuntimeError):
    """The Inception weights are neither configured nor downloadable."""


def default_weights_path() -> Path:
    """Where torch-fidelity itself keeps the weights: `<torch hub dir>/checkpoints/<file name>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def download_weights(destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download the weights to `destination` atomically (see biggan_smyrf/atomic.py), checking the
    hash prefix in the file name."""
    expected_prefix = torch.hub.HASH_REGEX.search(WEIGHTS_FILENAME).group(1)
    digest = hashlib.sha256()
    with replacing(destination) as temp:
        with open(temp, "wb") as out, urllib.request.urlopen(WEIGHTS_URL, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(expected_prefix):
            raise OSError(f"downloaded file has sha256 {digest.hexdigest()[:8]}..., expected {expected_prefix}...")


def _instructions(reason: str, target: Path) -> str:
    return (
        f"{reason}\n"
        f"FID/IS/KID need torch-fidelity's Inception weights. To fix this, either:\n"
        f"  1. download {WEIGHTS_URL}\n"
        f"     (on a machine with internet if need be) and save it as {target}, or\n"
        f"  2. point to it where you have it: train.py --model.metrics.weights_path=/path/to/{WEIGHTS_FILENAME}\n"
        f"     (sample.py --weights-path ...), or\n"
        f"  3. turn metrics off: train.py --model.metrics.enabled=false."
    )


def resolve_weights(cfg: MetricsConfig) -> Optional[str]:
    """The local Inception weights file to use, or None when metrics are disabled.

    Call this at start-up: it raises `MissingWeightsError` within seconds when the weights are
    configured but missing, or absent from the default location and not downloadable.
    """
    if not cfg.enabled:
        return None
    if cfg.weights_path is not None:
        path = Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(_instructions(f"metrics.weights_path={cfg.weights_path} does not exist.", path))
        return str(path)
    default = default_weights_path()
    if default.is_file():
        return str(default)
    try:
        download_weights(default)
    except Exception as error:  # offline, firewalled, disk full, bad hash: all mean the same to the user
        where = f"{default} (torch-fidelity's default location)"
        reason = f"Inception weights not found at {where}; download failed: {error}"
        raise MissingWeightsError(_instructions(reason, default)) from error
    return str(default)


def create_extractor(cfg: MetricsConfig, device: torch.device, weights_path: Optional[str] = None) -> torch.nn.Module:
    """torch-fidelity's extractor for `cfg.feature_extractor`, in eval mode on `device`.

    `weights_path` defaults to `resolve_weights(cfg)`. The module is built on the CPU and moved with
    `.to(device)` rather than torch-fidelity's `cuda=True`, which would pick the current CUDA device
    instead of `device` (wrong for `cuda:1` under DDP).
    """
    device = torch.device(device)
    weights_path = weights_path or resolve_weights(cfg)
    if weights_path is None:
        raise ValueError("metrics are disabled (metrics.enabled=false); no feature extractor to create")
    extractor = create_feature_extractor(
        cfg.feature_extractor,
        cfg.features,
        cuda=False,
        feature_extractor_weights_path=weights_path,
        verbose=False,
    )
    return extractor.to(device)


def _check_batch(batch: torch.Tensor) -> None:
    if not (torch.is_tensor(batch) and batch.dtype == torch.uint8 and batch.dim() == 4 and batch.shape[1] == 3):
        got = f"{batch.dtype} {tuple(batch.shape)}" if torch.is_tensor(batch) else type(batch).__name__
        raise ValueError(f"expected uint8 image batches of shape (B, 3, H, W) with values 0..255, got {got}")


@torch.no_grad()
def extract_features(
    extractor: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device, limit: Optional[int] = None
) -> dict[str, torch.Tensor]:
    """Run `extractor` over uint8 (B, 3, H, W) batches; features per name, concatenated on the CPU.

    Features are float32, as torch-fidelity returns them (its metrics cast where they need float64).
    `limit` stops after that many images, truncating the last batch.
    """
    chunks: dict[str, list[torch.Tensor]] = {}
    seen = 0
    for batch in batches:
        _check_batch(batch)
        if limit is not None:
            batch = batch[: limit - seen]
        seen += len(batch)
        outputs = extractor.convert_features_tuple_to_dict(extractor(batch.to(device, non_blocking=True)))
        for name, value in outputs.items():
            chunks.setdefault(name, []).append(value.cpu())
        if limit is not None and seen >= limit:
            break  # before asking the iterator for another batch it may have to load
    if not chunks:
        raise ValueError("no images to extract features from")
    return {name: torch.cat(values) for name, values in chunks.items()}


class UInt8Images(Dataset):
    """uint8 (N, 3, H, W) images as what torch-fidelity's own API takes: a Dataset of (3, H, W)
    tensors, e.g. to check our numbers with `torch_fidelity.calculate_metrics`."""

    def __init__(self, images: torch.Tensor):
        _check_batch(images)
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]
