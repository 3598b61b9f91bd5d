"""Exact resume and fault tolerance: data order, RNG streams, atomic checkpoint writes, kills."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from biggan_smyrf.cli import main as train_main
from biggan_smyrf.cli import with_atomic_checkpoints
from biggan_smyrf.data import ImageDataModule
from biggan_smyrf.data.sampler import ResumableSampler
from biggan_smyrf.training import LoopConfig
from biggan_smyrf.training.checkpoint_io import AtomicCheckpointIO, partial_path
from biggan_smyrf.training.resume_check import training_state_differences
from biggan_smyrf.training.state import attention_generators

from benchmarks.checks import prewarmed
from conftest import DEMO, FAST, ROOT, load, made_once, train
from helpers import fit, tiny_module

DATA = list(range(50))  # the sampler only needs a length


def consume(sampler: ResumableSampler, batches: int) -> list:
    """What a training loop sees in `batches` batches: new iterations at epoch ends, position advanced per batch."""
    seen = []
    while len(seen) < batches * sampler.batch_size:
        for i, draw in enumerate(iter(sampler)):
            seen.append(draw)
            if (i + 1) % sampler.batch_size == 0:
                sampler.position += 1
                if len(seen) == batches * sampler.batch_size:
                    break
    return seen


def test_sampler_resumed_at_any_batch_continues_the_uninterrupted_order():
    uninterrupted = consume(ResumableSampler(DATA, batch_size=4, flip=True, seed=3), 30)  # 12 batches an epoch
    for stop in (1, 5, 12, 13, 20):
        first = consume(ResumableSampler(DATA, batch_size=4, flip=True, seed=3), stop)
        rest = consume(ResumableSampler(DATA, batch_size=4, flip=True, seed=3, position=stop), 30 - stop)
        assert first + rest == uninterrupted, stop


def test_sampler_order_follows_seed_and_epoch_only():
    sampler = ResumableSampler(DATA, batch_size=4, seed=0)
    sampler.set_epoch(7)  # Lightning's epoch count is ignored
    assert sampler.draws(0) == ResumableSampler(DATA, batch_size=4, seed=0).draws(0)
    assert sampler.draws(0) != sampler.draws(1) and sampler.draws(0) != ResumableSampler(DATA, 4, seed=1).draws(0)
    indices = [i for i, _ in sampler.draws(0)]
    assert len(indices) == 48 and len(set(indices)) == 48  # 12 full batches, no repeats, tail dropped
    assert list(iter(sampler)) == sampler.draws(0)  # no global RNG involved: iterating twice gives the same
    assert list(iter(sampler)) == sampler.draws(0)


def test_sampler_gives_each_rank_its_own_share_of_the_same_epoch():
    ranks = [ResumableSampler(DATA, batch_size=4, flip=True, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [[i for i, _ in s.draws(0)] for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 24 and not set(shares[0]) & set(shares[1])
    with pytest.raises(ValueError, match="batch_size"):
        ResumableSampler(DATA, batch_size=26, num_replicas=2, rank=0)


def trainer_stub(training: bool = True) -> SimpleNamespace:
    return SimpleNamespace(training=training, world_size=1, global_rank=0)


def test_datamodule_counts_consumed_batches_and_resumes_there():
    data = ImageDataModule(resolution=32, batch_size=16, num_workers=0)
    data.trainer = trainer_stub()
    data.train_dataloader()
    for _ in range(9):
        data.on_after_batch_transfer(None, 0)
    data.trainer.training = False  # validation batches are not training data
    data.on_after_batch_transfer(None, 0)
    state = data.state_dict()
    assert state == {"batches_consumed": 9, "batches_per_epoch": 6}  # 100 demo images // 16

    resumed = ImageDataModule(resolution=32, batch_size=16, num_workers=0)
    resumed.trainer = trainer_stub()
    resumed.load_state_dict(state)
    sampler = resumed.train_dataloader().sampler
    assert sampler.position == 9 and list(sampler) == sampler.draws(1)[3 * 16 :]

    other_batch_size = ImageDataModule(resolution=32, batch_size=8, num_workers=0)
    other_batch_size.trainer = trainer_stub()
    other_batch_size.load_state_dict(state)
    assert other_batch_size.train_dataloader().sampler.position == 2 * 12  # the next epoch's start


def test_validation_leaves_the_training_random_streams_where_they_were():
    module = tiny_module()
    generators = list(attention_generators(module).values())
    torch.manual_seed(5)
    before = torch.get_rng_state(), [g.get_state() for g in generators]
    module.on_validation_start()
    torch.randn(100)
    torch.randn(10, generator=generators[0])
    module.on_validation_end()
    assert torch.equal(torch.get_rng_state(), before[0])
    assert all(torch.equal(g.get_state(), s) for g, s in zip(generators, before[1]))


KILLED_MID_WRITE = """
import os, signal, sys, torch
from biggan_smyrf.training import LoopConfig
from biggan_smyrf.training.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"weights": torch.zeros(1000)}, path)

def save_half_then_die(obj, f):
    f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
io.save_checkpoint({"weights": torch.ones(1000)}, path)
"""


@pytest.mark.slow
def test_checkpoint_write_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    path, script = tmp_path / "run" / "last.ckpt", tmp_path / "killed_mid_write.py"
    script.write_text(KILLED_MID_WRITE)
    proc = prewarmed.run(script, [str(path)], ROOT, timeout=120)  # a process of its own (helpers.train)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert torch.equal(torch.load(path)["weights"], torch.zeros(1000))  # the old checkpoint, whole
    assert partial_path(path).exists()  # the torn write went to the side file
    AtomicCheckpointIO().save_checkpoint({"weights": torch.ones(1000)}, path)
    assert torch.equal(torch.load(path)["weights"], torch.ones(1000)) and not partial_path(path).exists()


def test_a_failed_checkpoint_write_says_so_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"weights": torch.zeros(10)}, path)

    def disk_full(obj, f):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=f"could not write {path} .*file write failed.*; {path} is unchanged"):
        AtomicCheckpointIO().save_checkpoint({"weights": torch.ones(10)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["weights"], torch.zeros(10)) and not partial_path(path).exists()


def test_train_py_writes_checkpoints_atomically_unless_told_otherwise():
    assert [type(p) for p in with_atomic_checkpoints(None)] == [AtomicCheckpointIO]
    own = AtomicCheckpointIO()
    assert with_atomic_checkpoints([own]) == [own] and with_atomic_checkpoints("bf16-mixed")[0] == "bf16-mixed"


@pytest.mark.slow
def test_run_stopped_and_resumed_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Demo config stopped at G iteration 8 (mid-epoch: 12 batches an epoch, 2 per G iteration)
    and resumed to 16: every tensor of the checkpoint, counters and data position as uninterrupted."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    train(whole, "--run=r", "--model.loop.max_g_iters=16")
    train(stopped, "--run=r", "--model.loop.max_g_iters=8")
    train(stopped, "--run=r", "--ckpt_path=last", "--model.loop.max_g_iters=16")
    uninterrupted, resumed = (load(d / "checkpoints" / "r" / "last.ckpt") for d in (whole, stopped))
    assert training_state_differences(uninterrupted, resumed) == []
    assert resumed["biggan_smyrf"]["g_iters"] == 16 and resumed["ImageDataModule"]["batches_consumed"] == 32
    assert len(resumed["optimizer_states"]) == 2 and any(k.startswith("G_ema.") for k in resumed["state_dict"])
    # Resuming the finished run with the same length trains nothing more.
    train(stopped, "--run=r", "--ckpt_path=last", "--model.loop.max_g_iters=16")
    assert training_state_differences(resumed, load(stopped / "checkpoints" / "r" / "last.ckpt")) == []


@pytest.mark.slow
def test_ten_kills_lose_nothing(tmp_path):
    """benchmarks/checks/faults.py at a small size: 10 SIGKILLs, some mid-write, then a SIGTERM and a SIGINT,
    each resumed; the end state equals the uninterrupted run's, no checkpoint was ever unreadable
    and the signals lost no G iteration."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.checks.faults", "--kills=10", "--sigterms=1", "--sigints=1",
         "--g-iters=30", "--ckpt-every=1",
         f"--workdir={tmp_path / 'runs'}", f"--results-dir={tmp_path}"],
        capture_output=True, text=True, timeout=1500, cwd=ROOT,
    )
    results = json.loads((tmp_path / "faults-cpu.json").read_text())["meta"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results["kills"] == 10 and results["unreadable_checkpoints"] == 0
    assert results["kills_during_a_write"] >= 1
    assert results["final_g_iters"] == 30 and results["values_different_from_uninterrupted"] == 0
    assert results["signal_stops"] == 2 and results["signal_stops_not_ok"] == 0 and results["g_iters_lost_to_signals"] == 0


def test_deterministic_mode_trains_smyrf_without_a_nondeterministic_op(tmp_path):
    """`--trainer.deterministic true` (torch.use_deterministic_algorithms) raises on any op that has
    no deterministic implementation; G with SMYRF, D and G_ema must train under it."""
    module = tiny_module(loop=LoopConfig(max_g_iters=1, sample_every=100, ckpt_every=100, val_every=100, n_samples=4))
    try:
        fit(module, tmp_path, deterministic=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert module.g_iters == 1


@pytest.mark.slow
def test_run_resumed_after_an_attention_switch_with_adaptive_augmentation_ends_bit_identical(tmp_path):
    """The demo trains dense for 6 G iterations, then SMYRF as built, with DiffAugment at an
    adaptive p adjusted every 3 G iterations; stopped at 8 (after the switch, mid-interval) and
    resumed to 16, it ends with the uninterrupted run's every tensor, p and sign statistic."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = ["--run=r", "--model.attention.train=[{from: 0, kind: dense}, {from: 6}]",
              "--model.augment.policy=[color, translation, cutout]", "--model.augment.adaptive=true",
              "--model.augment.p=0.2", "--model.augment.interval=3", "--model.augment.speed_kimg=1"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    train(whole, *recipe, "--model.loop.max_g_iters=16")
    train(stopped, *recipe, "--model.loop.max_g_iters=8")
    train(stopped, *recipe, "--ckpt_path=last", "--model.loop.max_g_iters=16")
    uninterrupted, resumed = (load(d / "checkpoints" / "r" / "last.ckpt") for d in (whole, stopped))
    assert training_state_differences(uninterrupted, resumed) == []
    state = resumed["biggan_smyrf"]
    assert state["attention_stages"]["train"] == 1 and state["augment"]["p"] != 0.2  # both were at work
    events = EventAccumulator(str(whole / "checkpoints" / "r" / "tb"))
    events.Reload()
    stages = {e.step: e.value for e in events.Scalars("train/attention_stage")}
    assert stages == {step: float(step > 6) for step in range(1, 17)}  # G iteration 6 is logged at step 7
    assert len(events.Scalars("train/augment_p")) == 16 and "train/loss_d_dense" in events.Tags()["scalars"]
    printed = yaml.safe_load(print_config(*recipe))["model"]
    assert printed["attention"]["train"] == [{"from": 0, "kind": "dense"}, {"from": 6}]
    assert printed["augment"]["policy"] == ["color", "translation", "cutout"] and printed["augment"]["adaptive"] is True


def print_config(*args: str) -> str:
    """What `train.py <args> --print_config` prints, from train.py's entry point in-process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        train_main(["--config", str(DEMO), *FAST, *args, "--print_config"])
    assert exit.value.code in (0, None), exit.value.code
    return out.getvalue()


def scalar_steps(tb: Path) -> dict[str, list[int]]:
    """The steps TensorBoard shows for each scalar (it drops points a resumed run purged)."""
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A run checkpointed at G iteration 2 and continued to 4, then as if that continuation had been
    killed before its next checkpoint: resumed from the iteration-2 checkpoint again, to 5, once with
    `--ckpt_path last` and once, in a copy, with the checkpoint's path. Made once for all xdist workers."""
    folder = made_once(tmp_path_factory, "resumed_runs", make_resumed_runs)
    return folder / "by_last" / "checkpoints" / "r", folder / "by_file" / "checkpoints" / "r"


def make_resumed_runs(folder: Path) -> None:
    by_last, by_file = folder / "by_last", folder / "by_file"
    by_last.mkdir(), by_file.mkdir()
    common = ["--run=r", "--model.loop.ckpt_every=1000", "--model.loop.sample_every=1000", "--model.loop.val_every=1000"]
    train(by_last, *common, "--model.loop.max_g_iters=2")
    run = by_last / "checkpoints" / "r"
    shutil.copytree(run, by_file / "checkpoints" / "r")
    shutil.copy(run / "last.ckpt", by_last / "at2.ckpt")
    train(by_last, *common, "--ckpt_path=last", "--model.loop.max_g_iters=4")
    shutil.copy(by_last / "at2.ckpt", run / "last.ckpt")
    train(by_last, *common, "--ckpt_path=last", "--model.loop.max_g_iters=5")
    path = by_file / "checkpoints" / "r" / "last.ckpt"
    train(by_file, *common, f"--ckpt_path={path}", "--model.loop.max_g_iters=5")


@pytest.mark.slow
def test_ckpt_path_file_and_last_resume_alike_with_the_command_line_applied(resumed_runs):
    by_last, by_file = (load(run / "last.ckpt") for run in resumed_runs)
    assert by_file["biggan_smyrf"]["g_iters"] == by_last["biggan_smyrf"]["g_iters"] == 5  # the new length applies
    assert by_file["hyper_parameters"]["loop"]["max_g_iters"] == 5
    assert training_state_differences(by_last, by_file) == []


@pytest.mark.slow
def test_resumed_run_shows_one_point_per_scalar_and_g_iteration(resumed_runs):
    run, _ = resumed_runs
    steps = scalar_steps(run / "tb")
    assert "train/lr_g" in steps and len(list((run / "tb").glob("events.*"))) == 3
    for tag, seen in steps.items():
        if tag.startswith("train/"):
            assert seen == [1, 2, 3, 4, 5], (tag, seen)
