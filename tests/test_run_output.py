"""What a training run prints: a progress bar counting G iterations, and end-of-run hints that run as printed."""
from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from biggan_smyrf import cli as train_cli

from conftest import DEMO, FAST


@pytest.mark.slow
def test_progress_bar_counts_g_iterations_and_the_hints_run_as_printed(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    caplog.set_level(logging.INFO)
    # Epochs of 2 batches, one G iteration each: the 3 G iterations span two epochs.
    train_cli.main(["--config", str(DEMO), *FAST, "--trainer.enable_progress_bar=true", "--run=bar",
                    "--trainer.limit_train_batches=2", "--model.optim.num_d_steps=1", "--model.loop.max_g_iters=3"])
    bar = capsys.readouterr().out.replace("\r", "\n").splitlines()
    training = [line for line in bar if line.startswith("training:")]
    assert training and "3/3 G it" in training[-1], bar[-5:]
    assert any("2/3 G it" in line for line in training)  # counted across the epoch boundary, not reset
    assert not any("Epoch" in line for line in bar)

    [hint] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("finished at G iteration 3")]
    sample = shlex.split(hint.split("more images: ")[1])
    assert Path(sample[0]).samefile(sys.executable) and Path(sample[1]).name == "sample.py"
    done = subprocess.run([*sample, "--n", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (tmp_path / "checkpoints" / "bar" / "samples" / "grid.png").is_file(), done.stderr
    tensorboard = shlex.split(hint.split("TensorBoard: ")[1].split(";")[0])
    assert tensorboard[-2:] == ["--logdir", "checkpoints/bar/tb"]
    assert subprocess.run([*tensorboard[:-2], "--help"], capture_output=True, timeout=120).returncode == 0
