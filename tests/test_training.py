"""The training application: train.py end to end, resume, kill and resume, schedule, EMA (DDP: test_distributed.py)."""
from __future__ import annotations

import contextlib
import io
import signal
import sys
import time

import pytest
import torch
import yaml

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.cli import main as train_main
from biggan_smyrf.models import DiscriminatorConfig, attention_blocks, attention_configs
from biggan_smyrf.training import AttentionSchedule, BigGAN, OptimConfig
from biggan_smyrf.training.ema import make_ema, update_ema

from benchmarks.checks import prewarmed
from helpers import DEMO, FAST, ROOT, environment, fit, load, tiny_module, train
from helpers import start as train_process


@pytest.mark.slow
def test_demo_config_trains_end_to_end(demo_run):
    run_dir = demo_run / "checkpoints" / "demo"
    ckpt = load(run_dir / "last.ckpt")
    state = ckpt["biggan_smyrf"]
    assert state["g_iters"] == 4
    # Lightning counts optimizer steps of both networks: num_d_steps + 1 per G iteration.
    assert ckpt["global_step"] == 4 * (ckpt["hyper_parameters"]["optim"]["num_d_steps"] + 1)
    assert any(k.startswith("G.") for k in ckpt["state_dict"]) and any(k.startswith("D.") for k in ckpt["state_dict"])
    assert any(k.startswith("G_ema.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2
    assert "torch" in state["rng"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png"))[:2] == ["G_0000002.png", "G_0000004.png"]
    assert not (demo_run / "data" / "cache").exists() or any((demo_run / "data" / "cache").iterdir())
    saved = yaml.safe_load((run_dir / "tb" / "config.yaml").read_text())
    assert saved["trainer"]["benchmark"] is True  # cuDNN autotuning unless chosen (cli.cudnn_benchmark)


@pytest.mark.slow
def test_one_tensorboard_point_per_scalar_per_step(demo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(demo_run / "checkpoints" / "demo" / "tb"))
    events.Reload()
    scalars = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["train/loss_d_smyrf"] == [1, 2, 3, 4]  # every G iteration (log_every 1), once
    assert scalars["val/d_real_dense"] == [2, 4]
    assert all(len(steps) == len(set(steps)) for steps in scalars.values()), scalars


@pytest.mark.slow
def test_resume_continues_at_the_right_step_with_optimizer_state(demo_copy):
    run_dir = demo_copy / "checkpoints" / "demo"
    before = load(run_dir / "last.ckpt")
    train(demo_copy, "--run=demo", "--ckpt_path=last", "--model.loop.max_g_iters=6", "--model.loop.ckpt_every=100", "--model.loop.val_every=100")
    after = load(run_dir / "last.ckpt")
    assert after["biggan_smyrf"]["g_iters"] == 6
    # Adam's step counters continue from the checkpoint (a fresh optimizer would be at 2).
    g_steps = lambda c: next(iter(c["optimizer_states"][0]["state"].values()))["step"].item()  # noqa: E731
    assert g_steps(before) == 4 and g_steps(after) == 6


@pytest.mark.slow
def test_existing_run_is_never_overwritten(demo_copy, run_dir, monkeypatch, capsys):
    """train.py's entry point in-process, in the run's folder: it refuses before training."""
    monkeypatch.chdir(demo_copy)
    ckpt = demo_copy / "checkpoints" / "demo" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit:
        train_main(["--config", str(DEMO), *FAST, "--run=demo", "--model.loop.max_g_iters=2"])
    assert exit.value.code not in (0, None)
    captured = capsys.readouterr()
    out = f"{exit.value.code if isinstance(exit.value.code, str) else ''}{captured.err}{captured.out}"
    assert "already exists" in out and "--ckpt_path last" in out
    assert ckpt.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    proc = train_process(tmp_path, "--run=killed", "--model.loop.max_g_iters=100000", "--model.loop.ckpt_every=1",
                         "--model.loop.val_every=100000", "--model.loop.sample_every=100000", log=tmp_path / "log")
    ckpt = tmp_path / "checkpoints" / "killed" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt.exists() and load(ckpt)["biggan_smyrf"]["g_iters"] >= 3):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # mid-training, possibly mid-write
    proc.wait()
    reached = load(ckpt)["biggan_smyrf"]["g_iters"]  # loads: never a torn file
    assert reached >= 3
    train(tmp_path, "--run=killed", "--ckpt_path=last", f"--model.loop.max_g_iters={reached + 2}")
    assert load(ckpt)["biggan_smyrf"]["g_iters"] == reached + 2


def resolved_config(config) -> dict:
    """What `train.py fit --config <config> --print_config` prints, parsed in-process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        train_main(["fit", "--config", str(config), "--print_config"])
    assert exit.value.code in (0, None), f"{config.name}: exit {exit.value.code}"
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_resolves_and_builds_its_model(config, monkeypatch):
    """Each config parses as train.py parses it, and its model builds: G's and D's attention
    blocks check their SMYRF sizes against their token counts, and the schedule's sizes are
    checked against G's, when they are constructed."""
    monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI reads sys.argv when given args too
    model = resolved_config(config)["model"]
    # train.py links D's resolution to G's (--print_config leaves linked values out).
    model["discriminator"]["resolution"] = model["generator"]["resolution"]
    with torch.device("meta"):  # shapes and checks only: no memory, no weight initialisation cost
        module = BigGAN(**model)
    assert module.G.config.resolution == module.D.config.resolution
    blocks = attention_blocks(module.G).values()
    assert sorted(b.n_queries for b in blocks) == sorted(r * r for r in model["generator"]["attention_resolutions"])
    assert model["generator"]["attention"]["kind"] in {b.config.kind for b in blocks}


# --- in-process tests --------------------------------------------------------------------------


def test_attention_schedule_trains_smyrf_and_evaluates_dense(tmp_path):
    train_cfg = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=128)
    module = tiny_module(attention=AttentionSchedule(train=train_cfg, eval=AttentionConfig(kind="dense")))
    seen = set()  # (stage, network, attention config) of every attention forward
    for name, block in module.named_modules():
        if block.__class__.__name__ == "SelfAttention":
            network = name.split(".")[0]
            block.register_forward_hook(
                lambda m, i, o, network=network: seen.add((module.trainer.state.stage.value, network, m.config))
            )
    trainer = fit(module, tmp_path)
    assert module.g_iters == 2
    train_forwards = {(net, cfg) for stage, net, cfg in seen if stage == "train"}
    val_forwards = {(net, cfg.kind) for stage, net, cfg in seen if stage == "validate"}
    assert train_forwards == {("G", train_cfg)}  # G's training forwards all used the train schedule
    assert val_forwards == {("G_ema", "dense")}  # validation and diagnostics: G_ema, exact attention
    assert {"train/loss_d_smyrf", "train/loss_g_smyrf", "val/d_real_dense", "val/d_fake_dense"} <= set(trainer.callback_metrics)
    # After training, G and G_ema are back to the attention they were built with.
    assert {c.q_cluster_size for c in attention_configs(module.G).values()} == {256}
    assert {c.q_cluster_size for c in attention_configs(module.G_ema).values()} == {256}


def test_gradient_accumulation_and_g_iteration_count(tmp_path):
    module = tiny_module(optim=OptimConfig(num_d_steps=1, accumulate=2))
    trainer = fit(module, tmp_path)
    assert module.g_iters == 2
    assert trainer.global_step == 2 * 2  # one D step + one G step per G iteration


def test_bf16_mixed_precision_with_smyrf(tmp_path):
    module = tiny_module()
    fit(module, tmp_path, precision="bf16-mixed")
    assert module.g_iters == 2
    assert all(torch.isfinite(p).all() for p in module.G.parameters())


def test_ema_copies_before_start_then_averages():
    g = torch.nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(4, 4)), torch.nn.BatchNorm1d(4))
    ema = make_ema(g, decay=0.5)
    with torch.no_grad():
        g[0].parametrizations.weight.original.add_(1.0)
    update_ema(ema, g, copy=True)
    torch.testing.assert_close(ema.module[0].parametrizations.weight.original, g[0].parametrizations.weight.original)
    before = ema.module[0].parametrizations.weight.original.clone()
    g(torch.randn(8, 4))  # train mode: moves BN stats and spectral-norm vectors
    with torch.no_grad():
        g[0].parametrizations.weight.original.add_(2.0)
    update_ema(ema, g, copy=False)
    torch.testing.assert_close(ema.module[0].parametrizations.weight.original,
                               0.5 * before + 0.5 * g[0].parametrizations.weight.original)
    torch.testing.assert_close(ema.module[1].running_mean, 0.5 * torch.zeros(4) + 0.5 * g[1].running_mean)
    u = ema.module[0].parametrizations.weight[0]._u
    torch.testing.assert_close(u.norm(), torch.tensor(1.0))


def test_mismatched_resolutions_fail_early():
    with pytest.raises(ValueError, match="set both to the training image size"):
        tiny_module(discriminator=DiscriminatorConfig(resolution=64, ch=8, attention_resolutions=[]))


def test_schedule_with_sizes_that_do_not_fit_fails_at_construction():
    with pytest.raises(ValueError, match="1024 queries"):
        tiny_module(attention=AttentionSchedule(train=AttentionConfig(kind="smyrf", q_cluster_size=300)))


@pytest.mark.slow
def test_validate_subcommand_evaluates_a_checkpoint(demo_copy):
    ckpt = demo_copy / "checkpoints" / "demo" / "last.ckpt"
    proc = prewarmed.run(ROOT / "train.py", ["validate", "--config", str(DEMO), *FAST, "--run=eval", f"--ckpt_path={ckpt}"],
                         demo_copy, environment(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/d_real_dense" in proc.stdout and "diag/smyrf_error_32px" in proc.stdout


def test_a_module_built_in_python_checkpoints_like_train_py(tmp_path):
    """Configs passed as dataclasses are stored as the plain dicts train.py's checkpoints hold, so
    the checkpoint loads with weights_only=True and rebuilds the same module."""
    module = tiny_module()
    path = tmp_path / "hparams.pt"
    torch.save(dict(module.hparams), path)
    hparams = torch.load(path, weights_only=True)
    assert all(isinstance(value, dict) for name, value in hparams.items() if name != "init_from")
    assert hparams["init_from"] is None
    rebuilt = BigGAN(**hparams)
    assert rebuilt.G.config == module.G.config and rebuilt.schedule == module.schedule
