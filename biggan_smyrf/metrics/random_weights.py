"""Random but informative weights for torch-fidelity's `inception-v3-compat` feature extractor.

For smoke tests of the metrics path on machines without the real weights (the test suite, the
benchmarks' dry runs): the numbers they give are meaningless, the code path is the real one.
Tests must not download the 91 MB Inception checkpoint, yet they should run the real torch-fidelity
code path (`feature_extractor_weights_path` -> `torch.load` -> strict `load_state_dict`). This writes a
state dict with exactly the keys and shapes of `FeatureExtractorInceptionV3`, taken from the module
itself, so a change in torch-fidelity's architecture shows up as a load error rather than a silent skip.

Why not the module's default init: PyTorch's conv init shrinks the activation variance ~3x per layer,
so after ~90 conv layers every feature is ~0 and every FID is 0. Here convolutions are Kaiming-normal
and each BatchNorm's running statistics are calibrated on a few random images (one train-mode pass),
so every channel is standardised as in a trained network and features vary between images. The fc
layer is random with its response to the average feature projected out (otherwise one class wins for
every image and IS is exactly 1), scaled so the logits spread by a few nats and IS is well above 1.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import feature_extractor_inceptionv3 as fe_inception

LOGIT_SPREAD = 3.0  # std of the (centred) logits over the calibration images


class _Skeleton(fe_inception.FeatureExtractorInceptionV3):
    """The extractor's architecture without its weights: `__init__` always loads a state dict, so the
    URL loader is stubbed out (no network) and the load itself skipped."""

    def load_state_dict(self, state_dict, *args, **kwargs):
        return None


def _calibration_images(generator: torch.Generator, n: int = 2, size: int = 32) -> torch.Tensor:
    """Uniform noise and smooth colour fields: two kinds of statistics for the BN layers. Few images
    suffice (each BN layer averages over the spatial positions too) and each costs ~0.25 s."""
    noise = torch.randint(0, 256, (n // 2, 3, size, size), generator=generator).float()
    coarse = torch.randint(0, 256, (n - n // 2, 3, 4, 4), generator=generator).float()
    smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return torch.cat([noise, smooth]).round().clamp(0, 255).to(torch.uint8)


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """State dict for `FeatureExtractorInceptionV3`: seeded, calibrated, deterministic."""
    generator = torch.Generator().manual_seed(seed)
    with mock.patch.object(fe_inception, "load_state_dict_from_url", return_value={}):
        module = _Skeleton("inception-v3-compat", ["2048"])
    batch_norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        for bn in batch_norms:
            bn.reset_parameters()  # affine 1/0, running stats 0/1
            bn.momentum = None  # cumulative average: after one batch the running stats are its stats
        module.train()
        (features,) = module(_calibration_images(generator))
        module.eval()

        centre = features.mean(dim=0)
        direction = centre / centre.norm()
        weight = torch.randn(module.fc.weight.shape, generator=generator, dtype=torch.float32)
        weight -= torch.outer(weight @ direction, direction)
        spread = ((features - centre) @ weight.T).std()
        module.fc.weight.copy_(weight * (LOGIT_SPREAD / spread))
        module.fc.bias.zero_()
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def write_random_inception_weights(path: Union[str, Path], seed: int = 0) -> Path:
    """Write the random state dict where torch-fidelity's `feature_extractor_weights_path` can load it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_inception_state_dict(seed), path)
    return path
