"""sample.py and the Python sampling API, on a checkpoint from the shared demo training run."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from biggan_smyrf import AttentionChange, AttentionConfig, export_generator, generate, interpolate, load_generator
from biggan_smyrf.errors import DEBUG_ENV
from biggan_smyrf.inference import CheckpointError
from biggan_smyrf.inference.cli import main as sample_main
from biggan_smyrf.models import attention_configs

from conftest import ROOT


@pytest.fixture(scope="module")
def ckpt(demo_run, tmp_path_factory):
    """The demo checkpoint with attention opened up (gamma = 0.5), so attention changes the images."""
    state = torch.load(demo_run / "checkpoints" / "demo" / "last.ckpt", weights_only=True)
    for key in state["state_dict"]:
        if key.endswith(".gamma"):
            state["state_dict"][key] = torch.tensor(0.5)
    path = tmp_path_factory.mktemp("ckpt") / "open.ckpt"
    torch.save(state, path)
    return path


def sample_py(*args, check=True) -> subprocess.CompletedProcess:
    """sample.py run as a script."""
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sample(*args, check=True) -> subprocess.CompletedProcess:
    """sample.py's entry point (what the script calls) in this process, with the exit status and the
    output the script would give: each start of the script costs seconds of imports, so the script
    itself runs once (test_grid_individual_and_npz_outputs) and the other calls run here."""
    argv, out, err = [str(a) for a in args], io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.pop(DEBUG_ENV, None)  # a traceback instead of the error line only when asked, as for the script
        try:
            sample_main(argv)
            code = 0
        except SystemExit as exit:  # what the interpreter makes of sys.exit(code) at the end of the script
            code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
    proc = subprocess.CompletedProcess(["sample.py", *argv], code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_grid_individual_and_npz_outputs(ckpt, tmp_path):
    sample_py("--ckpt", ckpt, "--out", tmp_path, "--n", 6, "--nrow", 3, "--grid")
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)  # 32 px images, 2 px padding
    sample("--ckpt", ckpt, "--out", tmp_path / "ind", "--n", 5, "--individual", "--batch-size", 2)
    files = sorted((tmp_path / "ind").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    assert all(Image.open(f).size == (32, 32) for f in files)
    sample("--ckpt", ckpt, "--out", tmp_path, "--n", 4, "--npz")
    arr = np.load(tmp_path / "samples.npz")["arr_0"]
    assert arr.shape == (4, 32, 32, 3) and arr.dtype == np.uint8
    # The npz and the individual files are the same samples (same seed; batch sizes 32 and 2 may
    # round a pixel differently, the convolutions sum in another order).
    individual = np.stack([np.asarray(Image.open(f)) for f in files[:4]]).astype(int)
    assert np.abs(arr.astype(int) - individual).max() <= 1


def test_individual_files_are_resumable_and_outputs_not_overwritten(ckpt, tmp_path):
    sample("--ckpt", ckpt, "--out", tmp_path, "--n", 2, "--individual")
    first = (tmp_path / "000000.png").stat().st_mtime_ns
    proc = sample("--ckpt", ckpt, "--out", tmp_path, "--n", 3, "--individual")
    assert "1 images" in proc.stdout and "2 already there" in proc.stdout
    assert (tmp_path / "000000.png").stat().st_mtime_ns == first
    sample("--ckpt", ckpt, "--out", tmp_path, "--n", 2)
    proc = sample("--ckpt", ckpt, "--out", tmp_path, "--n", 2, check=False)
    assert proc.returncode != 0 and "--overwrite" in proc.stderr


def test_same_seed_same_images_any_batch_size(ckpt):
    G = load_generator(ckpt)
    a = generate(G, 5, seed=3, batch_size=5)
    b = generate(G, 5, seed=3, batch_size=2)
    assert (a.int() - b.int()).abs().max() <= 1  # at most float rounding of another batch shape
    assert (generate(G, 3, seed=3).int() - a[:3].int()).abs().max() <= 1
    assert torch.equal(generate(G, 5, seed=3, batch_size=5), a)  # bitwise repeatable
    assert not torch.equal(generate(G, 5, seed=4), a)


def test_dense_and_smyrf_on_the_same_checkpoint_are_close_but_different(ckpt):
    dense = generate(load_generator(ckpt, attention=AttentionConfig(kind="dense")), 8, seed=0).float()
    G = load_generator(ckpt, attention=AttentionConfig(kind="smyrf", n_hashes=1, q_cluster_size=64))
    assert {c.kind for c in attention_configs(G).values()} == {"smyrf"}
    smyrf = generate(G, 8, seed=0).float()
    diff = (smyrf - dense).abs().mean()
    spread = (dense - dense.mean(0)).abs().mean()  # how different two unrelated samples are
    assert 0 < diff < 0.5 * spread


def test_default_attention_is_the_runs_eval_attention(ckpt):
    # The demo config trains with SMYRF and evaluates dense.
    assert {c.kind for c in attention_configs(load_generator(ckpt)).values()} == {"dense"}


def test_smyrf_starts_from_the_checkpoints_own_settings(ckpt, tmp_path):
    """The demo trained with SMYRF 2 x 256 (1,024 queries): `--attention smyrf` alone must use
    those, not the library's 4 x 2048, and each flag changes one field only."""
    trained = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=256)
    assert set(attention_configs(load_generator(ckpt, attention="smyrf")).values()) == {trained}
    paper = AttentionChange.paper()
    assert set(attention_configs(load_generator(ckpt, attention="paper")).values()) == {paper.apply(trained)}
    eight = AttentionChange(kind="smyrf", n_hashes=8)
    assert set(attention_configs(load_generator(ckpt, attention=eight)).values()) == {trained.with_(n_hashes=8)}
    sample("--ckpt", ckpt, "--out", tmp_path, "--n", 2, "--attention", "smyrf")
    sample("--ckpt", ckpt, "--out", tmp_path / "paper", "--n", 2, "--attention", "paper", "--n-hashes", 3)
    # An exported generator keeps the run's SMYRF settings too, though it was exported dense.
    exported = export_generator(load_generator(ckpt), tmp_path / "G.pt")
    assert set(attention_configs(load_generator(exported, attention="smyrf")).values()) == {trained}


def test_truncation_reduces_sample_variance(ckpt):
    G = load_generator(ckpt)
    full = generate(G, 16, seed=1).float()
    truncated = generate(G, 16, seed=1, truncation=0.2).float()
    assert truncated.std(0).mean() < full.std(0).mean()


def test_interpolation_endpoints_are_the_seeds_samples(ckpt, tmp_path):
    G = load_generator(ckpt)
    for spherical in (False, True):
        path = interpolate(G, 3, 7, steps=5, spherical=spherical)
        assert path.shape == (5, 3, 32, 32)
        # A batch of 5 vs a batch of 1: equal up to float rounding, at most 1 in 8 bits.
        assert (path[0].int() - generate(G, 1, seed=3)[0].int()).abs().max() <= 1
        assert (path[-1].int() - generate(G, 1, seed=7)[0].int()).abs().max() <= 1
        assert not torch.equal(path[2], path[0])
    sample("--ckpt", ckpt, "--out", tmp_path, "--interpolate", 3, 7, "--steps", 4, "--slerp", "--frames")
    assert len(list(tmp_path.glob("interp_3_7_slerp_*.png"))) == 4


def test_raw_g_and_exported_generator(ckpt, tmp_path):
    ema, raw = load_generator(ckpt), load_generator(ckpt, ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(ema.state_dict().values(), raw.state_dict().values()))
    exported = export_generator(ema, tmp_path / "G.pt")
    assert torch.equal(generate(load_generator(exported), 2, seed=0), generate(ema, 2, seed=0))


def test_error_cases(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not written by torch.save"):
        load_generator(tmp_path / "text.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x80\x02 a pickle header, then garbage")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_generator(tmp_path / "corrupt.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a biggan_smyrf checkpoint"):
        load_generator(tmp_path / "other.ckpt")
    proc = sample("--ckpt", ckpt, "--out", tmp_path, "--attention", "smyrf", "--q-cluster-size", 100, check=False)
    assert proc.returncode != 0 and "Sizes that fit" in proc.stderr
    proc = sample("--ckpt", ckpt, "--out", tmp_path, "--attention", "smyrf", "--q-cluster-size", 256, "--n-summaries", 7, check=False)
    assert proc.returncode != 0 and "n_summaries=7 must be 0 or divide the 256 keys" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = sample("--ckpt", ckpt, "--out", blocker / "sub", check=False)
    assert proc.returncode != 0 and "cannot write to output directory" in proc.stderr
    proc = sample("--ckpt", ckpt, "--out", tmp_path, "--n-hashes", 2, check=False)
    assert "without --attention" in proc.stderr


def test_class_conditional_sampling(tmp_path):
    from biggan_smyrf.models import Generator, GeneratorConfig

    G = Generator(GeneratorConfig(resolution=32, ch=8, n_classes=3, attention_resolutions=[])).eval()
    path = export_generator(G, tmp_path / "G.pt")
    G = load_generator(path)
    zeros, twos = generate(G, 2, seed=0, class_id=0), generate(G, 2, seed=0, class_id=2)
    assert not torch.equal(zeros, twos)  # same z, other class
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        generate(G, 1, class_id=3)
