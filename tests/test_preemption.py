"""Signals a cluster sends (Ctrl-C, SIGTERM, SLURM's pre-timeout signal) stop a real train.py after
the G iteration in progress, with last.ckpt written; resumed, the run ends as if never stopped."""
from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from biggan_smyrf.training.checkpoint_io import partial_path
from biggan_smyrf.training.resume_check import training_state_differences

from benchmarks.checks.prewarmed import Started
from conftest import load, made_once, train
from helpers import environment
from helpers import start as train_process

LENGTH = 8
# A sample grid per G iteration: the test sees which iterations are done without asking train.py.
RUN = [f"--model.loop.max_g_iters={LENGTH}", "--model.loop.ckpt_every=1000", "--model.loop.sample_every=1",
       "--model.loop.val_every=1000"]
SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NAME": "biggan", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
         "SLURM_NODELIST": "localhost"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The run never stopped, made once for the signal tests however xdist spreads them."""
    cwd = made_once(tmp_path_factory, "preemption_uninterrupted", lambda cwd: train(cwd, "--run=r", *RUN))
    return load(cwd / "checkpoints" / "r" / "last.ckpt")


def start(cwd: Path, *args: str, env: dict | None = None) -> Started:
    """The run started in `cwd`, its output appended to cwd/log."""
    return train_process(cwd, "--run=r", *RUN, *args, log=cwd / "log", env=environment(**(env or {})))


def completed_g_iters(run: Path) -> int:
    """The last G iteration whose sample grid was written."""
    grids = sorted((run / "samples").glob("G_ema_*.png"))
    return int(grids[-1].stem.rsplit("_", 1)[1]) if grids else 0


def signal_after(proc: Started, run: Path, signum: int, g_iters: int = 2) -> int:
    """Sends `signum` once `g_iters` G iterations are done; returns how many were done then."""
    deadline = time.monotonic() + 600
    while completed_g_iters(run) < g_iters:
        assert proc.poll() is None, proc.output()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    done = completed_g_iters(run)
    proc.send_signal(signum)
    return done


def fake_scontrol(folder: Path) -> Path:
    """An `scontrol` that records its arguments, for a SLURM job without SLURM."""
    folder.mkdir()
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / 'calls'}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=["SIGINT", "SIGTERM", "SLURM"])
def test_signal_saves_the_iteration_and_the_resumed_run_ends_as_uninterrupted(tmp_path, uninterrupted, signum):
    """SIGINT (Ctrl-C), SIGTERM (scancel, preemption) and SIGUSR1 under SLURM (the
    `#SBATCH --signal=SIGUSR1@90` warning, which also requeues the job) each stop after the G
    iteration in progress with last.ckpt written and the resume command printed; resumed (under
    SLURM by the requeued job's unchanged command), the run ends bit-identical to an uninterrupted one."""
    run = tmp_path / "checkpoints" / "r"
    slurm = signum == signal.SIGUSR1
    env = {**SLURM, "PATH": f"{fake_scontrol(tmp_path / 'bin')}:{os.environ['PATH']}"} if slurm else None
    proc = start(tmp_path, env=env)
    done = signal_after(proc, run, signum)
    proc.wait(timeout=600)
    output = proc.output()
    assert proc.returncode == 128 + signum, output[-3000:]
    saved = load(run / "last.ckpt")["biggan_smyrf"]
    assert done <= saved["g_iters"] < LENGTH and saved["micro_step"] == 0  # nothing lost, a whole G iteration
    assert not partial_path(run / "last.ckpt").exists()
    stop_line = next(line for line in output.splitlines() if "resume with:" in line)
    assert f"G iteration {saved['g_iters']}" in stop_line and "--ckpt_path last" in stop_line
    if slurm:
        assert (tmp_path / "bin" / "calls").read_text().split() == ["requeue", "4242"]
        resumed = start(tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"})  # the job's command, unchanged
    else:
        resumed = start(tmp_path, "--ckpt_path=last")
    resumed.wait(timeout=600)
    assert resumed.returncode == 0, resumed.output()[-3000:]
    assert training_state_differences(uninterrupted, load(run / "last.ckpt")) == []


@pytest.mark.slow
def test_second_ctrl_c_aborts_without_touching_the_checkpoint(tmp_path):
    train(tmp_path, "--run=r", *RUN[1:], "--model.loop.max_g_iters=2")
    last = tmp_path / "checkpoints" / "r" / "last.ckpt"
    before = last.read_bytes()
    proc = start(tmp_path, "--ckpt_path=last", "--model.loop.max_g_iters=1000")
    signal_after(proc, last.parent, signal.SIGINT, g_iters=4)
    if proc.wait_for_output("Ctrl-C again", timeout=120):  # the second Ctrl-C once the first is acknowledged
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    output = proc.output()
    assert "Ctrl-C again" in output, output[-3000:]
    assert proc.returncode not in (0, 128 + signal.SIGINT), output[-3000:]
    assert last.read_bytes() == before and not partial_path(last).exists()
