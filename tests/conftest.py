"""Shared fixtures: one short demo training run (through train.py) that several test files use."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

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


def train(cwd: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(DEMO), *FAST, *args]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def pytest_addoption(parser):
    parser.addoption("--shard", metavar="I/N", help="run the I-th of N interleaved shares of the selected tests "
                     "(I from 1), so that N processes can run a suite side by side")


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected: shares of what would run
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if shard:
        try:
            index, count = (int(x) for x in shard.split("/"))
            assert 1 <= index <= count
        except (ValueError, AssertionError):
            raise pytest.UsageError(f"--shard takes I/N with 1 <= I <= N, e.g. 2/4; got {shard!r}")
        mine = [i % count == index - 1 for i in range(len(items))]
        config.hook.pytest_deselected(items=[item for item, keep in zip(items, mine) if not keep])
        items[:] = [item for item, keep in zip(items, mine) if keep]
    skip_cuda_without_gpu(items)


def skip_cuda_without_gpu(items):
    """`cuda` tests are collected everywhere and run only where a GPU is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One short demo run shared by the end-to-end tests: 4 G iterations, checkpoint every 2."""
    cwd = tmp_path_factory.mktemp("run")
    train(cwd, "--run=demo", "--model.loop.max_g_iters=4", "--model.loop.ckpt_every=2", "--model.loop.sample_every=2", "--model.loop.val_every=2")
    return cwd


@pytest.fixture(scope="module")
def single_threaded():
    """One thread for torch and for numpy's BLAS in a module. Both spin-wait on their sibling
    threads, so on 2 cores shared with any other busy process a 2-thread Inception pass or FID
    eigendecomposition (2048x2048) runs several times slower than on one thread (measured: the
    metrics tests took 55-80 s with 2 threads next to one busy process, 20 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
