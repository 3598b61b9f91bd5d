"""Gradient traffic and step time of data-parallel GAN training, 2 gloo processes on the CPU.

    python benchmarks/distributed.py                 # demo and 128-px models (several minutes)
    python benchmarks/distributed.py --models demo   # the demo model only

For the demo model (configs/demo.yaml) and the 128-px architecture of configs/celebahq128_smyrf.yaml
(the same shapes, so the same bytes; a batch of 2 per process on random images), it trains a few
G iterations three ways, each in fresh processes, one thread per process:
  - 1 process (Lightning's single-device strategy): the baseline time;
  - 2 processes, Lightning's `DDPStrategy(find_unused_parameters=True)`, what the configs used
    before: one DistributedDataParallel over the whole LightningModule;
  - 2 processes, `gan_ddp` (= `ddp`): one DistributedDataParallel per network.
The floats all-reduced per G iteration are counted by a DDP communication hook on every wrapper
(each bucket's size, split by the network its parameters belong to), and the floats broadcast as
buffers by `torch.distributed._broadcast_coalesced` (DDP's per-forward buffer broadcast, and
gan_ddp's one broadcast of the stepped network's buffers). Minimum: num_d_steps * |D| + |G| per
G iteration, every parameter's gradient all-reduced once. Goal: gradient floats <= 1.05x the
minimum. Time: median wall time per G iteration after the first. Results: results/distributed-cpu.*
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent)]
import pytorch_lightning as pl  # noqa: E402
from common import markdown_table, run_case_in_subprocess, write_results  # noqa: E402
from pytorch_lightning.strategies import DDPStrategy  # noqa: E402
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook  # noqa: E402

from biggan_smyrf.training import BigGAN, GANDDPStrategy  # noqa: E402

CONFIGS = {"demo": ROOT.parent / "configs" / "demo.yaml", "128px": ROOT.parent / "configs" / "celebahq128_smyrf.yaml"}
G_ITERS = {"demo": 6, "128px": 3}
BATCH = {"demo": 8, "128px": 2}
GOAL = 1.05
STRATEGIES = {"1 process": None, "ddp_find_unused_parameters_true": "before", "gan_ddp": "after"}


def build(model: str) -> BigGAN:
    cfg = yaml.safe_load(CONFIGS[model].read_text())["model"]
    loop = {"max_g_iters": G_ITERS[model], "log_every": 10**6, "sample_every": 10**6, "ckpt_every": 10**6,
            "val_every": 10**6, "n_samples": 4}
    return BigGAN(generator=cfg["generator"], discriminator={**cfg["discriminator"], "resolution": cfg["generator"]["resolution"]},
                  optim=cfg["optim"], attention=cfg.get("attention", {}), loop=loop, metrics={"enabled": False},
                  ema={"decay": 0.999, "start": 0})


class Traffic(pl.Callback):
    """Floats all-reduced (gradients, per network) and broadcast (buffers) per G iteration, and
    wall time per G iteration."""

    def __init__(self):
        self.grads: dict[str, int] = {"G": 0, "D": 0}
        self.buffers = 0
        self.per_g_iter: list[dict] = []
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer, module):
        owner = {id(p): name for name in ("G", "D") for p in getattr(module, name).parameters()}
        wrappers = list(module.replicas.values()) or [trainer.strategy.model]

        def hook(_, bucket):
            for p in bucket.parameters():
                name = owner.get(id(p), "other")
                self.grads[name] = self.grads.get(name, 0) + p.numel()
            return allreduce_hook(None, bucket)

        for wrapper in wrappers if isinstance(trainer.strategy, DDPStrategy) else []:
            wrapper.register_comm_hook(None, hook)
        broadcast = dist._broadcast_coalesced

        def counted(group, tensors, *args, **kwargs):
            self.buffers += sum(t.numel() for t in tensors)
            return broadcast(group, tensors, *args, **kwargs)

        dist._broadcast_coalesced = counted
        self._g_iters, self._t0 = module.g_iters, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.g_iters == self._g_iters:
            return
        now = time.perf_counter()
        self.per_g_iter.append({"seconds": now - self._t0, "grads": dict(self.grads), "buffers": self.buffers})
        self.grads, self.buffers, self._g_iters, self._t0 = {"G": 0, "D": 0}, 0, module.g_iters, now


def run_case(case: dict) -> dict:
    torch.set_num_threads(1)
    model, processes = case["model"], case["processes"]
    pl.seed_everything(0, verbose=False)
    module = build(model)
    strategy = {"before": lambda: DDPStrategy(find_unused_parameters=True), "after": GANDDPStrategy,
                None: lambda: "auto"}[case["kind"]]()
    res = module.G.config.resolution
    images = torch.utils.data.TensorDataset(torch.rand(64, 3, res, res) * 2 - 1, torch.zeros(64, dtype=torch.long))
    loader = torch.utils.data.DataLoader(images, batch_size=BATCH[model], shuffle=True, drop_last=True)
    traffic = Traffic()
    trainer = pl.Trainer(accelerator="cpu", devices=processes, strategy=strategy, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[traffic])
    trainer.fit(module, loader)
    if not trainer.is_global_zero:
        sys.exit(0)
    measured = traffic.per_g_iter[1:]  # the first G iteration warms up (allocations, DDP's first buckets)
    sizes = {name: sum(p.numel() for p in getattr(module, name).parameters()) for name in ("G", "D")}
    n_d = module.optim_cfg.num_d_steps
    minimum = n_d * sizes["D"] + sizes["G"]
    grads = {name: statistics.mean(it["grads"].get(name, 0) for it in measured) for name in ("G", "D")}
    total = sum(grads.values())
    return {
        **case, "strategy": next(k for k, v in STRATEGIES.items() if v == case["kind"]),
        "G_params": sizes["G"], "D_params": sizes["D"], "num_d_steps": n_d, "batch_per_process": BATCH[model],
        "minimum_floats": minimum, "G_floats": grads["G"], "D_floats": grads["D"], "floats": total,
        "ratio": total / minimum if processes > 1 else None,
        "buffer_floats": statistics.mean(it["buffers"] for it in measured),
        "ratio_with_buffers": (total + statistics.mean(it["buffers"] for it in measured)) / minimum if processes > 1 else None,
        "s_per_g_iter": statistics.median(it["seconds"] for it in measured),
        "g_iter_seconds": [round(it["seconds"], 3) for it in traffic.per_g_iter],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    rows = []
    for model in args.models:
        for kind, processes in ((None, 1), ("before", 2), ("after", 2)):
            row = run_case_in_subprocess(__file__, {"model": model, "processes": processes, "kind": kind}, timeout=3600)
            print(json.dumps(row), flush=True)
            rows.append(row)
    after = [r for r in rows if r.get("kind") == "after"]
    goals = {f"gan_ddp gradient floats <= {GOAL}x the minimum ({r['model']})": r.get("ratio", 99) <= GOAL for r in after}
    table = report(rows, goals)
    write_results("distributed", torch.device("cpu"), rows, table,
                  {"goals": goals, "threads_per_process": 1, "backend": "gloo", "lightning": pl.__version__})
    print(table)
    return 0 if all(goals.values()) else 1


def report(rows: list[dict], goals: dict) -> str:
    for r in rows:
        if "G_params" in r:
            r["model_desc"] = f"{r['model']} (G {r['G_params'] / 1e6:.2f} M, D {r['D_params'] / 1e6:.2f} M, {r['num_d_steps']} D steps)"
            r["ratio_txt"] = f"{r['ratio']:.3f}x" if r["ratio"] else "-"
            r["ratio_buffers_txt"] = f"{r['ratio_with_buffers']:.3f}x" if r["ratio_with_buffers"] else "-"
            for key in ("minimum_floats", "G_floats", "D_floats", "floats", "buffer_floats"):
                r[key + "_txt"] = f"{r[key] / 1e6:.3f} M" if r["processes"] > 1 else "-"
    table = markdown_table(rows, [
        ("model_desc", "model"), ("processes", "processes"), ("strategy", "strategy"),
        ("minimum_floats_txt", "minimum num_d_steps·|D| + |G|"), ("G_floats_txt", "G grads all-reduced"),
        ("D_floats_txt", "D grads all-reduced"), ("floats_txt", "total"), ("ratio_txt", "total / minimum"),
        ("buffer_floats_txt", "BN buffers broadcast"), ("ratio_buffers_txt", "(total + buffers) / minimum"),
        ("s_per_g_iter", "s per G iteration"), ("error", "error"),
    ])
    goal_lines = "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in goals.items())
    return (
        "Floats communicated per G iteration by 2 gloo processes (one thread each) on this CPU, counted by a DDP "
        "communication hook (gradients) and on `torch.distributed._broadcast_coalesced` (buffers); time per G "
        "iteration, median after the first, batch per process as noted in the JSON.\n\n"
        f"{table}\n\nGoals:\n{goal_lines}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
