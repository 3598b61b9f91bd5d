"""Metrics inside training: both attention kinds logged, the wiring check against standalone
torch-fidelity, real statistics reused across validations and runs, the start-up weights check."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch_fidelity

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.data import ImageDataModule
from biggan_smyrf.inference.sampling import labels, latents, render
from biggan_smyrf.metrics import MetricsConfig, UInt8Images
from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig, using_attention
from biggan_smyrf.training import AttentionSchedule, BigGAN, EMAConfig, LoopConfig, OptimConfig
from conftest import DEMO, FAST

N_SAMPLES, N_REAL = 4, 4  # Inception costs ~0.4 s per image on 2 cores
pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def weights(inception_weights):
    return inception_weights



def module(weights, cache_dir) -> BigGAN:
    smyrf = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=256)
    return BigGAN(
        generator=GeneratorConfig(resolution=32, ch=8, attention_resolutions=[32], attention=smyrf),
        discriminator=DiscriminatorConfig(resolution=32, ch=8, attention_resolutions=[]),
        optim=OptimConfig(num_d_steps=1),
        ema=EMAConfig(decay=0.9, start=1),
        attention=AttentionSchedule(compare=AttentionConfig(kind="dense")),
        loop=LoopConfig(max_g_iters=1, log_every=1, sample_every=100, ckpt_every=100, val_every=2, n_samples=4),
        metrics=MetricsConfig(n_samples=N_SAMPLES, n_real=N_REAL, batch_size=4, kid_subset_size=N_SAMPLES,
                              weights_path=weights, cache_dir=str(cache_dir)),
    )


def trainer(tmp_path, steps_per_validation) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        val_check_interval=steps_per_validation, check_val_every_n_epoch=None, limit_val_batches=1,
        num_sanity_val_steps=0,
    )


def test_validation_logs_both_kinds_matching_standalone_torch_fidelity(weights, tmp_path, monkeypatch):
    reads = []
    original = ImageDataModule.uint8_batches
    monkeypatch.setattr(ImageDataModule, "uint8_batches", lambda self, *a, **k: reads.append(1) or original(self, *a, **k))
    data = ImageDataModule(resolution=32, batch_size=4, num_workers=0)
    gan = module(weights, tmp_path / "stats")
    t = trainer(tmp_path, steps_per_validation=100)  # no validation inside fit: each one costs FIDs
    t.fit(gan, datamodule=data)
    assert gan.g_iters == 1
    # One G iteration leaves attention's gain at ~0, so both kinds could render the same uint8
    # images and the FIDs could tie on some machines; open attention up so the kinds must differ.
    with torch.no_grad():
        for name, param in gan.G_ema.module.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
    [validated] = t.validate(gan, datamodule=data)
    for kind in ("smyrf", "dense"):
        assert {f"val/fid_{kind}", f"val/is_mean_{kind}", f"val/kid_mean_{kind}"} <= set(validated)
    assert validated["val/fid_smyrf"] != validated["val/fid_dense"]  # same weights, different attention
    assert "diag/smyrf_error_32px" in validated and 0 < validated["diag/smyrf_mass_share_32px"] <= 1
    assert len(reads) == 1  # real statistics: computed at the first validation, reused after

    # The wiring check: the same G_ema samples and real images through torch-fidelity directly.
    G = gan.G_ema.module
    z, y = latents(N_SAMPLES, G.config.dim_z, 0), labels(N_SAMPLES, G.config.n_classes, 0)
    real = torch.from_numpy(data.images[:N_REAL]).permute(0, 3, 1, 2).contiguous()
    with using_attention(G, "dense"):
        fake = torch.cat(list(render(G, z, y, batch_size=4)))
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(fake), input2=UInt8Images(real), cuda=False, fid=True, batch_size=4,
        feature_extractor_weights_path=weights, cache=False, save_cpu_ram=True, verbose=False,
    )
    assert validated["val/fid_dense"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-4)

    # A new run on the same data reads the cached statistics instead of the images.
    reads.clear()
    again = module(weights, tmp_path / "stats")
    trainer(tmp_path, steps_per_validation=2).validate(again, datamodule=data)
    assert reads == [] and again.evaluator.real.n == N_REAL


def test_missing_weights_stop_training_at_start_up(run_dir, capsys):
    """train.py's entry point in-process (what it does before training is under test, not the process)."""
    from biggan_smyrf.cli import main as train_main

    with pytest.raises(SystemExit) as exit:
        train_main(["--config", str(DEMO), *FAST, "--run=offline", "--model.metrics.enabled=true",
                    f"--model.metrics.weights_path={run_dir / 'nowhere.pth'}"])
    assert exit.value.code not in (0, None)
    captured = capsys.readouterr()
    out = f"{exit.value.code if isinstance(exit.value.code, str) else ''}{captured.err}{captured.out}"
    assert "nowhere.pth does not exist" in out and "metrics.enabled=false" in out
    assert not (run_dir / "checkpoints" / "offline" / "last.ckpt").exists()


def test_sample_py_metrics_of_a_checkpoint(weights, demo_run, tmp_path, monkeypatch):
    import json

    from biggan_smyrf.inference.cli import main

    monkeypatch.chdir(tmp_path)  # the real-statistics cache goes to ./data/cache/metrics
    ckpt = demo_run / "checkpoints" / "demo" / "last.ckpt"
    args = ["--ckpt", str(ckpt), "--out", "eval", "--metrics", "--n", "4", "--n-real", "4", "--batch-size", "4",
            "--weights-path", weights, "--attention", "dense"]
    main(args)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"fid", "is_mean", "kid_mean"} <= set(report) and report["n_real"] == 4
    assert report["attention"] == {"blocks.2.1": "dense"}
    assert len(list((tmp_path / "data" / "cache" / "metrics").iterdir())) == 1
    with pytest.raises(SystemExit, match="does not exist"):
        main(args[:-4] + ["--overwrite", "--weights-path", str(tmp_path / "missing.pth")])
