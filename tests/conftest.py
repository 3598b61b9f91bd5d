"""Shared fixtures: one short demo training run (through train.py) that several test files use.
Helpers live in helpers.py; ROOT, DEMO, FAST, train and load are importable from here too."""
from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from helpers import DEMO, FAST, ROOT, load, train  # noqa: F401 -- importable from conftest too

# Fixtures that start a training run: every test that uses one is `slow`.
TRAINING_FIXTURES = {"demo_run", "cuda_run"}


def pytest_collection_modifyitems(config, items):
    """Tests on a training run's output are `slow`; `cuda` tests are collected everywhere and run
    only where a GPU is."""
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
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
