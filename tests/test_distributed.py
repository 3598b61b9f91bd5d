"""Data parallelism on the CPU (gloo): the GAN DDP strategy's gradients, communication and replicas,
exact resume of a two-process run, two `torchrun` "nodes" on this machine, and launch errors.

Two runs on two torchrun "nodes" (strategy auto, i.e. `ddp`), one uninterrupted and one stopped
after 2 of its 4 G iterations and resumed, are shared by the tests, which compare them with each
other and with a one-process run over the two ranks' batches. (Bit-identity holds between runs
launched alike: Lightning's own launcher gives each of its processes another number of threads than
torchrun does, and float sums then round differently.)
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch


from benchmarks.checks import prewarmed
from conftest import DEMO, FAST, ROOT, load, train
from helpers import environment

G_ITERS = 4
# 2 D steps per G step, each over 2 accumulated micro-batches of 4 images per rank; G over 2 as well.
SHARED = ["--model.optim.accumulate=2", "--data.batch_size=4", f"--model.loop.max_g_iters={G_ITERS}",
          "--model.loop.val_every=2", "--model.loop.sample_every=100", "--model.loop.ckpt_every=100",
          "--trainer.callbacks+=ddp_probe.GradientProbe"]


def probe(out: Path, tag: str) -> list[str]:
    return [f"--trainer.callbacks.out_dir={out}", f"--trainer.callbacks.tag={tag}"]


def ranks(out: Path, tag: str, n: int = 2) -> list[dict]:
    return [torch.load(out / f"{tag}-rank{r}.pt", weights_only=False) for r in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(cwd: Path, *args: str, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1: as two
    nodes would run the command documented in docs/multi-gpu.md."""
    port = free_port()
    cmd = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=biggan-test", "--rdzv-conf=join_timeout=120",
           # `--` ends torchrun's options: it would take train.py's --run for an abbreviation of its --run-path.
           "--", str(ROOT / "train.py"), "--config", str(DEMO), *FAST, "--trainer.num_nodes=2", "--trainer.devices=1", *args]
    # The agents start prewarmed (as helpers.train does; they import torch), their workers as torchrun starts them.
    logs = [(cwd / f"agent{i}-{port}.out", cwd / f"agent{i}-{port}.err") for i in range(2)]
    agents = [prewarmed.start(prewarmed.Module("torch.distributed.run"), cmd, cwd, out, environment(), stderr=err)
              for out, err in logs]
    done = []
    for agent in agents:
        agent.wait(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, agent.returncode, agent.output(), agent.errors()))
    for proc in done:
        assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inception_weights):
    out = tmp_path_factory.mktemp("ddp")
    weights = inception_weights
    metrics = ["--model.metrics.enabled=true", f"--model.metrics.weights_path={weights}",
               "--model.metrics.n_samples=4", "--model.metrics.n_real=4", "--model.metrics.batch_size=2",
               "--model.metrics.kid_subset_size=4", f"--model.metrics.cache_dir={out / 'stats'}"]
    torchrun_two_nodes(out, "--run=full", *SHARED, *probe(out, "full"), *metrics)
    # The one-process reference: the first G iteration over both ranks' batches and latents.
    train(out, "--run=reference", "--trainer.devices=1", *SHARED, *probe(out, "reference"),
          "--model.loop.max_g_iters=1", "--data.batch_size=8",
          f"--trainer.callbacks.replay=[{out / 'full-rank0.pt'},{out / 'full-rank1.pt'}]")
    torchrun_two_nodes(out, "--run=nodes", *SHARED, *probe(out, "stopped"), "--model.loop.max_g_iters=2")
    torchrun_two_nodes(out, "--run=nodes", *SHARED, *probe(out, "resumed"), "--ckpt_path=last")
    return out


@pytest.mark.slow
def test_each_rank_draws_its_own_z_and_sees_its_own_share_of_the_data(runs):
    full = ranks(runs, "full")
    assert full[0]["strategy"] == "GANDDPStrategy" and full[0]["world_size"] == 2
    for (real0, _), (real1, _) in zip(full[0]["batches"], full[1]["batches"]):
        assert not torch.equal(real0, real1)
    # Shards are disjoint: no image of rank 0's first G iteration is among rank 1's.
    images = [torch.cat([b[0] for b in rank["batches"]]).flatten(1) for rank in full]
    assert torch.cdist(images[0], images[1]).min() > 0
    for (z0, _), (z1, _) in zip(full[0]["latents"], full[1]["latents"]):
        assert not torch.equal(z0, z1)


@pytest.mark.slow
def test_averaged_gradients_equal_one_process_over_both_ranks_batches(runs):
    full, (reference,) = ranks(runs, "full"), ranks(runs, "reference", n=1)
    steps = [s for s in full[0]["steps"] if s["g_iters"] == 0]
    assert [s["network"] for s in steps] == ["D", "D", "G"] == [s["network"] for s in reference["steps"]]
    # The first D step and the G step. Not the second D step: Adam's first update (lr * g / |g|, about
    # lr * sign(g)) turns the rounding of near-zero gradients into weight differences of 2 lr, so the
    # second D step's gradients agree only to ~1e-4; the G step's, through those D weights, to ~1e-6.
    for i in (0, 2):
        ours, theirs, other_rank = steps[i], reference["steps"][i], full[1]["steps"][i]
        assert ours["grads"].keys() == theirs["grads"].keys() and ours["grads"]
        for name, grad in ours["grads"].items():
            assert torch.equal(grad, other_rank["grads"][name]), name  # all-reduced: the same on both ranks
            expected = theirs["grads"][name]
            error = (grad - expected).norm() / expected.norm().clamp_min(1e-12)
            assert error <= 1e-5, (ours["network"], name, float(error))


@pytest.mark.slow
def test_each_step_all_reduces_only_its_networks_gradients_once(runs):
    for rank in ranks(runs, "full"):
        sizes = rank["sizes"]
        assert len(rank["steps"]) == G_ITERS * 3
        for step in rank["steps"]:
            # One D step = 2 accumulated micro-steps, one G step = 2: communicated on the last only.
            assert step["floats"] == {step["network"]: sizes[step["network"]]}, step["network"]


@pytest.mark.slow
def test_replicas_identical_and_metrics_from_both_ranks(runs):
    full = ranks(runs, "full")
    assert full[0]["g_iters"] == full[1]["g_iters"] == G_ITERS
    for key, value in full[0]["state"].items():
        assert torch.equal(value, full[1]["state"][key]), key  # G, D and G_ema, weights and buffers
    assert "val/fid_dense" in full[0]["metrics"]
    assert full[0]["metrics"]["val/fid_dense"] == full[1]["metrics"]["val/fid_dense"]
    assert (runs / "checkpoints" / "full" / "best-fid.ckpt").exists()


@pytest.mark.slow
def test_two_nodes_stopped_and_resumed_end_bit_identical_to_the_uninterrupted_run(runs):
    stopped, resumed, full = ranks(runs, "stopped"), ranks(runs, "resumed"), ranks(runs, "full")
    assert stopped[0]["world_size"] == 2 and stopped[0]["g_iters"] == 2 and resumed[0]["g_iters"] == G_ITERS
    ckpt = load(runs / "checkpoints" / "nodes" / "last.ckpt")
    assert ckpt["biggan_smyrf"]["g_iters"] == G_ITERS and len(ckpt["biggan_smyrf"]["rng_ranks"]) == 2
    one_process = load(runs / "checkpoints" / "reference" / "last.ckpt")
    assert ckpt["state_dict"].keys() == one_process["state_dict"].keys()  # no DDP wrapper in the keys
    for rank in (0, 1):
        for key, value in full[rank]["state"].items():
            assert torch.equal(value, resumed[rank]["state"][key]), (rank, key)


def launch_error(cwd: Path, *args: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = train(cwd, "--run=err", *args, check=False, env=environment(**env))
    return proc, time.perf_counter() - start


@pytest.mark.slow
def test_several_nodes_without_a_launcher_fail_at_once(tmp_path):
    proc, _ = launch_error(tmp_path, "--trainer.num_nodes=2", env={})
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --trainer.num_nodes 2: start the run on every node with torchrun"), proc.stderr[-2000:]


@pytest.mark.slow
def test_a_rendezvous_nobody_answers_times_out_with_what_to_check(tmp_path):
    """Node 1 of 2 pointed at an address where no node 0 listens: an error after the rendezvous
    timeout, not a hang."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "NODE_RANK": "1"}
    proc, seconds = launch_error(tmp_path, "--trainer.num_nodes=2", "--trainer.strategy=biggan_smyrf.training.GANDDPStrategy",
                                 "--trainer.strategy.rendezvous_timeout=5", env=env)
    assert proc.returncode != 0 and seconds < 90
    last = proc.stderr.strip().splitlines()[-1]
    assert "could not meet the other processes at 127.0.0.1:" in last and "within 5 s" in last, proc.stderr[-3000:]
