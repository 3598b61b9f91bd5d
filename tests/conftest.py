"""Shared fixtures: one short demo training run (through train.py) that several test files use.
Helpers live in helpers.py; ROOT, DEMO, FAST, train and load are importable from here too."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from threadpoolctl import threadpool_limits

from helpers import DEMO, FAST, ROOT, load, train  # noqa: F401 -- importable from conftest too

pytest_plugins = ["pytester"]  # runpytest_inprocess: pytest command lines tested without a new interpreter

# pytest-xdist runs the suite in one worker process per core (pyproject's addopts). Each worker and
# every train.py it starts then computes on one thread: two workers with torch's default of a thread
# per core would each spin-wait on a sibling thread the other worker holds.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"  # inherited by the subprocesses
    torch.set_num_threads(1)

# Modules whose tests share a module-scoped fixture that takes long to make (the distributed runs,
# Inception features, the CUDA run): under xdist each goes to one worker as a whole, which makes it
# once. Other shared runs are files made once for all workers (`made_once`).
WHOLE_MODULES = {"test_distributed.py", "test_metrics.py", "test_cuda.py"}


@pytest.hookimpl(optionalhook=True)  # a pytest without xdist has no such hook
def pytest_xdist_make_scheduler(config, log):
    """xdist's `load` scheduling (a test at a time to whichever worker is free), except that the
    tests of WHOLE_MODULES go out as one unit per module. (xdist_group marks would do this with
    --dist loadgroup, but pytest 9.2 ignores the node ids that xdist 3.8 renames for it.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WholeModulesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in WHOLE_MODULES else nodeid

    return WholeModulesScheduling(config, log)


# Fixtures that start a training run: every test that uses one is `slow`.
TRAINING_FIXTURES = {"demo_run", "cuda_run"}


def pytest_itemcollected(item):
    """Tests on a training run's output are `slow` (marked here, before `-m` selects)."""
    if TRAINING_FIXTURES & set(item.fixturenames):
        item.add_marker(pytest.mark.slow)


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
    if XDIST_WORKER:
        # The `slow` tests (the longest, up to a minute or two each) first, so that the workers are
        # not left with one of them at the end while the other has nothing to do. Every worker
        # sorts its identical collection alike, as xdist requires; the order within stays pytest's.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    skip_cuda_without_gpu(items)


def skip_cuda_without_gpu(items):
    """`cuda` tests are collected everywhere and run only where a GPU is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """An in-process train.py start in a fresh folder: cwd, no debug tracebacks, no pytest argv."""
    from biggan_smyrf.errors import DEBUG_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])  # pytest's own arguments are not ours to parse
    return tmp_path


def made_once(tmp_path_factory, name: str, make) -> Path:
    """A folder `make(folder)` fills once per test session, also under xdist, where the first worker
    to need it makes it in the workers' common temporary folder while any other waits on its lock
    (a session-scoped fixture alone runs once in every worker). The folder is read-only to tests."""
    common = tmp_path_factory.getbasetemp().parent if XDIST_WORKER else tmp_path_factory.getbasetemp()
    folder, done = common / name, common / f"{name}.done"
    with FileLock(str(common / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One short demo run shared by the end-to-end tests: 4 G iterations, checkpoint every 2, in a
    new interpreter (`python train.py ...`, as a user starts it; other runs of the suite are prewarmed).
    Read-only: a test that trains on from it or writes beside it works in a copy (`demo_copy`).
    Made once per session, also under xdist (`made_once`)."""
    return made_once(tmp_path_factory, "demo_run", lambda cwd: train(
        cwd, "--run=demo", "--model.loop.max_g_iters=4", "--model.loop.ckpt_every=2", "--model.loop.sample_every=2",
        "--model.loop.val_every=2", fresh=True))


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """Random Inception weights (biggan_smyrf.metrics.random_weights: seeded, so every write is the
    same file) written once per session, not once per test module: each write costs seconds."""
    from biggan_smyrf.metrics.random_weights import write_random_inception_weights

    folder = made_once(tmp_path_factory, "inception", lambda folder: write_random_inception_weights(folder / "weights.pth"))
    return str(folder / "weights.pth")


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A copy of the demo run's folder for a test that trains on in it or writes into it."""
    return Path(shutil.copytree(demo_run, tmp_path / "run"))


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
