"""Helpers shared by the tests: train.py runs in a process of their own (`train`, `start`, `load`),
and a tiny BigGAN trained in-process on random images (`tiny_module`, `loader`, `fit`)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.checks import prewarmed

# Lightning and the model are imported where used: conftest.py imports this module in every pytest
# process, also in those that only collect or run the Triton-interpreter cases, which would
# otherwise pay Lightning's seconds of imports for nothing.
if TYPE_CHECKING:
    import pytorch_lightning as pl

    from biggan_smyrf.training import BigGAN

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
# Small enough for 2 CPU cores: the demo's 32 px at width 8, a handful of G iterations.
FAST = [
    "--model.generator.ch=8",
    "--model.discriminator.ch=8",
    "--data.batch_size=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.num_workers=0",
    "--model.loop.log_every=1",
]


def environment(**extra: str) -> dict:
    """This process's environment for a train.py of the tests: the callbacks in tests/ importable."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", **extra}


def train(cwd: Path, *args: str, check: bool = True, fresh: bool = False, env: dict | None = None,
          ) -> subprocess.CompletedProcess:
    """`train.py --config demo.yaml <FAST> <args>` in `cwd`, to its end. A process of its own, forked
    from one that has imported train.py (benchmarks/checks/prewarmed.py: the 5-7 s of imports are
    paid once per test worker, not at each of the suite's dozens of starts); `fresh`: a new
    interpreter, exactly as a user starts it."""
    args = ["--config", str(DEMO), *FAST, *args]
    env = env or environment()
    if fresh:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)
    else:
        proc = prewarmed.run(ROOT / "train.py", args, cwd, env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def start(cwd: Path, *args: str, log: Path, env: dict | None = None) -> prewarmed.Started:
    """`train.py --config demo.yaml <FAST> <args>` started in `cwd` (prewarmed, as `train`), its
    stdout and stderr in `log`: a process to signal, kill and wait for."""
    return prewarmed.start(ROOT / "train.py", ["--config", str(DEMO), *FAST, *args], cwd, log, env or environment())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def tiny_module(**overrides) -> BigGAN:
    from biggan_smyrf.attention import AttentionConfig
    from biggan_smyrf.metrics import MetricsConfig
    from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig
    from biggan_smyrf.training import BigGAN, EMAConfig, LoopConfig, OptimConfig

    kwargs = dict(
        generator=GeneratorConfig(resolution=32, ch=8, dim_z=32, shared_dim=16, attention_resolutions=[32],
                                  attention=AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=256)),
        discriminator=DiscriminatorConfig(resolution=32, ch=8, attention_resolutions=[]),
        optim=OptimConfig(num_d_steps=2),
        ema=EMAConfig(decay=0.9, start=1),
        loop=LoopConfig(max_g_iters=2, log_every=1, sample_every=100, ckpt_every=100, val_every=1, n_samples=4),
        metrics=MetricsConfig(enabled=False),
    )
    kwargs.update(overrides)
    return BigGAN(**kwargs)


class RandomImages(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, 32, 32, generator=g) * 2 - 1, torch.tensor(0)


def loader():
    return torch.utils.data.DataLoader(RandomImages(), batch_size=4, drop_last=True)


def fit(module: BigGAN, tmp_path: Path, ckpt_path: str = None, **trainer_kwargs) -> pl.Trainer:
    import pytorch_lightning as pl

    steps = module.optim_cfg.num_d_steps * module.optim_cfg.accumulate
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        val_check_interval=module.loop_cfg.val_every * steps, check_val_every_n_epoch=None,
        limit_val_batches=1, num_sanity_val_steps=0, **trainer_kwargs,
    )
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return trainer


@contextlib.contextmanager
def deterministic_algorithms(on: bool):
    """torch.use_deterministic_algorithms(on) inside the block (what --trainer.deterministic sets;
    the Triton kernels' two-kernel backward)."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
