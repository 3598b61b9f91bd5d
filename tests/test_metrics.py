"""FID / IS / KID: the real torch-fidelity code path offline, with random Inception weights.

The Inception network costs ~0.25 s per image on a CPU core whatever the image size (it resizes to
299 px), so every image is extracted once in the module fixture and the tests share the features:
8 smooth "real" images and 10 uniform-noise "generated" ones, in batches of 4 (the last one partial).
"""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity

from biggan_smyrf.metrics import (
    UInt8Images,
    MetricsConfig,
    MissingWeightsError,
    RealStatistics,
    cache_key,
    compute_metrics,
    create_extractor,
    extract_features,
    load_or_compute_real_stats,
    resolve_weights,
)
from biggan_smyrf.metrics import extractor as extractor_module
from biggan_smyrf.metrics.registry import isc_splits
from biggan_smyrf.training import LoopConfig

N_REAL, N_FAKE, BATCH, RES = 8, 10, 4, 32
DEVICE = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread(single_threaded):
    """Inception passes and FID eigendecompositions, one thread each (see conftest.single_threaded)."""


def smooth_images(n: int, seed: int) -> torch.Tensor:
    coarse = torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed)).float()
    return F.interpolate(coarse, size=RES, mode="bilinear", align_corners=False).round().to(torch.uint8)


def noise_images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, RES, RES), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def batches(images: torch.Tensor, pulled: list | None = None):
    for start in range(0, len(images), BATCH):
        if pulled is not None:
            pulled.append(start)
        yield images[start : start + BATCH]



def config(setup, **overrides) -> MetricsConfig:
    options = dict(n_samples=N_FAKE, batch_size=BATCH, weights_path=setup.weights, cache_dir=str(setup.cache_dir))
    return MetricsConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, inception_weights):
    """Random weights, the extractor, real statistics (through the cache) and generated features."""
    root = tmp_path_factory.mktemp("metrics")
    s = SimpleNamespace(weights=inception_weights, cache_dir=root / "cache")
    s.real, s.fake = smooth_images(N_REAL, seed=1), noise_images(N_FAKE, seed=2)
    s.cfg = config(s)
    s.extractor = create_extractor(s.cfg, DEVICE)
    s.factory_calls, extracted = [], []

    def factory():
        s.factory_calls.append(1)
        return batches(s.real)

    def spy(*args, **kwargs):  # keeps the real images' features for the self-FID test
        extracted.append(extract_features(*args, **kwargs))
        return extracted[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extractor_module, "extract_features", spy)
        s.stats = load_or_compute_real_stats(s.cfg, "fp", RES, factory, N_REAL, DEVICE, extractor=s.extractor)
    s.real_features = extracted[0]
    s.fake_features = extract_features(s.extractor, batches(s.fake), DEVICE)
    s.ours = compute_metrics(s.cfg, s.fake_features, s.stats)
    return s


def test_features_are_informative(setup):
    """The random weights must separate images, or every check below passes trivially."""
    features = setup.fake_features["2048"]
    assert features.shape == (N_FAKE, 2048) and features.dtype == torch.float32
    assert setup.fake_features["logits_unbiased"].shape == (N_FAKE, 1008)
    assert features.std(dim=0).mean() > 0.05 * features.mean().abs()


def test_fid_of_real_against_itself_is_zero_and_against_noise_large(setup):
    self_fid = compute_metrics(config(setup, names=["fid"]), setup.real_features, setup.stats)["fid"]
    noise_fid = setup.ours["fid"]
    # Identical sets: the mean term is exactly 0 and tr(S) + tr(S) - 2 tr(sqrt(S S)) cancels except
    # for S's null space. S has rank N_REAL - 1, so ~2040 eigenvalues of S S are 0 up to rounding,
    # +-eps * lambda_max^2, and each contributes up to sqrt(eps) * lambda_max ~ 1.5e-8 tr(S) to the sum:
    # at most ~3e-5 tr(S) in all (measured: ~3e-6). Different images score ~tr(S) (noise: ~1.7 tr(S)).
    trace = float(setup.stats.sigma.trace())
    assert abs(self_fid) < 1e-4 * trace
    assert noise_fid > 0.5 * trace


def test_matches_torch_fidelity_standalone(setup):
    """The wiring check: our split of the pipeline gives calculate_metrics' numbers on the same images."""
    ours = setup.ours
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(setup.fake),
        input2=UInt8Images(setup.real),
        cuda=False,
        fid=True,
        isc=True,
        kid=True,
        batch_size=BATCH,
        feature_extractor_weights_path=setup.weights,
        isc_splits=isc_splits(N_FAKE),  # ours clamps the default 10 to 5 for 10 images
        kid_subset_size=min(N_FAKE, N_REAL),  # ours clamps the default 1000 to 8
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes; does not change the numbers
        verbose=False,
    )
    # Same extractor on the same batches in the same order, same float64 maths, same seeds: the
    # results agree to rounding; the tolerances leave room for BLAS thread scheduling.
    assert ours["fid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-4)
    assert ours["is_mean"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-5)
    assert ours["is_std"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_ISC_STD], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-4)
    assert ours["kid_std"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_STD], rel=1e-4)
    # Not degenerate: IS is 1 when the logits carry no information (at most 2 with 2 images per split).
    assert ours["is_mean"] > 1.1 and ours["kid_mean"] > 0


def test_sample_counts_are_clamped_for_small_runs():
    # A split of one sample scores exactly 1, so IS keeps at least two per split.
    assert [isc_splits(n) for n in (2, 3, 10, 19, 20, 50000)] == [1, 1, 5, 9, 10, 10]


def test_only_enabled_metrics_are_returned(setup):
    assert set(compute_metrics(config(setup, names=["isc"]), setup.fake_features, None)) == {"is_mean", "is_std"}
    assert set(compute_metrics(config(setup, names=["kid"]), setup.fake_features, setup.stats)) == {
        "kid_mean",
        "kid_std",
    }


def test_a_new_metric_is_one_registry_entry(setup, monkeypatch):
    """Config, extraction, scoring and the run summary all read the registry."""
    from biggan_smyrf.metrics.registry import METRICS, Metric
    from biggan_smyrf.training.callbacks import describe_metrics

    def mean_logit(cfg, logits, real):
        return {"mean_logit": float(logits.mean())}

    monkeypatch.setitem(METRICS, "mean_logit", Metric("mean logit", "logits_unbiased", False, ("mean_logit",), mean_logit))
    cfg = config(setup, names=["fid", "mean_logit"])
    assert cfg.features == ["2048", "logits_unbiased"] and cfg.needs_real
    scores = compute_metrics(cfg, setup.fake_features, setup.stats)
    assert scores["mean_logit"] == pytest.approx(float(setup.fake_features["logits_unbiased"].mean()))
    assert set(scores) == {"fid", "mean_logit"}

    class Module:  # what describe_metrics reads of the LightningModule
        metrics_cfg, loop_cfg = cfg, LoopConfig(val_every=7)
        kind_tag, evaluated_phases = staticmethod(lambda phase: "dense"), staticmethod(lambda: ["eval"])

    assert "FID/mean logit of" in describe_metrics(Module())


def test_real_stats_are_computed_once_then_loaded(setup, monkeypatch):
    assert len(setup.factory_calls) == 1
    path = Path(setup.cfg.cache_dir) / f"{setup.stats.key}.pt"
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]

    def fail(*args, **kwargs):
        raise AssertionError("the cached statistics should have been loaded")

    monkeypatch.setattr(extractor_module, "extract_features", fail)
    monkeypatch.setattr(extractor_module, "create_extractor", fail)
    again = load_or_compute_real_stats(setup.cfg, "fp", RES, fail, N_REAL, DEVICE)
    assert len(setup.factory_calls) == 1
    assert again.n == N_REAL and again.key == setup.stats.key
    for name in ("mu", "sigma", "kid_features"):
        assert torch.equal(getattr(again, name), getattr(setup.stats, name))
    assert again.mu.dtype == torch.float32 and again.sigma.dtype == torch.float64  # as torch-fidelity computes them


def test_n_real_limits_the_images_read(setup):
    pulled = []
    cfg = config(setup, n_real=3)
    factory = lambda: batches(setup.real, pulled)  # noqa: E731
    stats = load_or_compute_real_stats(cfg, "fp", RES, factory, N_REAL, DEVICE, setup.extractor)
    assert stats.n == 3 and len(pulled) == 1  # the first batch, truncated; the next never loaded
    assert stats.key != setup.stats.key
    expected = setup.real_features["2048"][:3].mean(dim=0)
    torch.testing.assert_close(stats.mu, expected, rtol=1e-4, atol=1e-5)  # a batch of 3, not 4: not bit-equal


def test_cache_key_covers_everything_the_statistics_depend_on(setup, tmp_path):
    weights_a, weights_b, copy_a = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "copy" / "a.pth"
    weights_a.write_bytes(b"weights a")
    weights_b.write_bytes(b"weights b")
    copy_a.parent.mkdir()
    copy_a.write_bytes(b"weights a")
    cfg = setup.cfg
    base = cache_key("fp", 128, 1000, cfg, str(weights_a))
    variants = [
        cache_key("fp2", 128, 1000, cfg, str(weights_a)),
        cache_key("fp", 256, 1000, cfg, str(weights_a)),
        cache_key("fp", 128, 999, cfg, str(weights_a)),
        cache_key("fp", 128, 1000, cfg, str(weights_b)),
        cache_key("fp", 128, 1000, cfg, None),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    assert cache_key("fp", 128, 1000, cfg, str(copy_a)) == base  # file contents, not location
    # Settings that do not change the statistics do not invalidate them.
    assert cache_key("fp", 128, 1000, config(setup, n_samples=50000, names=["fid"]), str(weights_a)) == base


def test_missing_weights_path_says_how_to_fix_it(tmp_path):
    cfg = MetricsConfig(weights_path=str(tmp_path / "nowhere.pth"))
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights(cfg)
    message = str(error.value)
    assert str(tmp_path / "nowhere.pth") in message
    assert extractor_module.WEIGHTS_URL in message
    assert "metrics.weights_path=/path/to/" in message and "metrics.enabled=false" in message


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """torch's hub dir in tmp, and any download attempt fails as on a machine without internet."""
    attempts = []

    def urlopen(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(extractor_module.urllib.request, "urlopen", urlopen)
    return attempts


def test_absent_default_weights_try_one_download_then_say_how_to_fix_it(offline, tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        resolve_weights(MetricsConfig())
    default = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert offline == [extractor_module.WEIGHTS_URL]
    message = str(error.value)
    url = extractor_module.WEIGHTS_URL
    for part in (str(default), url, "name resolution", "metrics.weights_path=", "metrics.enabled=false"):
        assert part in message
    assert os.listdir(default.parent) == []  # no partial download left behind


def test_weights_found_without_download(offline, tmp_path):
    default = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    default.parent.mkdir(parents=True)
    default.write_bytes(b"weights")
    assert resolve_weights(MetricsConfig()) == str(default)
    assert resolve_weights(MetricsConfig(enabled=False, weights_path="/nowhere")) is None
    assert offline == []


def test_download_with_wrong_hash_is_rejected(monkeypatch, tmp_path):
    class Response:
        def __init__(self):
            self.chunks = [b"not the inception weights", b""]

        def read(self, size):
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(extractor_module.urllib.request, "urlopen", lambda url, timeout: Response())
    destination = tmp_path / "weights.pth"
    with pytest.raises(OSError, match="sha256"):
        extractor_module.download_weights(destination)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "options",
    [
        {"n_samples": 1},
        {"n_real": 0},
        {"batch_size": 0},
        {"kid_subset_size": 1},
        {"feature_extractor": "vgg16"},
        {"names": []},
        {"names": ["fid", "precision"]},
    ],
)
def test_config_rejects_bad_values(options):
    with pytest.raises(ValueError, match="metrics"):
        MetricsConfig(**options)


def test_extract_features_rejects_non_uint8_images():
    with pytest.raises(ValueError, match=r"uint8 image batches of shape \(B, 3, H, W\)"):
        extract_features(None, [torch.rand(2, 3, 8, 8)], DEVICE)
    with pytest.raises(ValueError, match="uint8"):
        extract_features(None, [torch.zeros(2, 8, 8, 3, dtype=torch.uint8)], DEVICE)


def test_real_statistics_keep_a_bounded_kid_pool(monkeypatch):
    monkeypatch.setattr("biggan_smyrf.metrics.real_stats.KID_MAX_REAL", 5)
    features = torch.randn(8, 4)
    stats = RealStatistics.from_features(features)
    assert stats.n == 8 and stats.kid_features.shape == (5, 4)
    np.testing.assert_allclose(stats.mu.numpy(), features.mean(dim=0).numpy(), rtol=1e-6)


def test_unreadable_or_foreign_cache_files_are_ignored(setup, tmp_path):
    from biggan_smyrf.metrics.real_stats import _load

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="recomputing"):
        assert _load(garbage, "key") is None
    path = Path(setup.cfg.cache_dir) / f"{setup.stats.key}.pt"
    with pytest.warns(UserWarning, match="holds statistics for key"):
        assert _load(path, "another key") is None
