"""A TPU-pod-shaped run without a TPU: data-parallel training on several XLA devices.

    PJRT_DEVICE=CPU .venv-xla/bin/python -m benchmarks.checks.xla_pod [--devices 4]

(`make xla-check` runs it through benchmarks/checks/xla_check.py, which adds its rows to
results/xla-cpu.*.) PJRT's CPU device with CPU_NUM_DEVICES devices (4 by default; a TPU v3-8 has 8
cores) trains the project's LightningModule through Lightning's XLA accelerator and its multi-device
strategy (`accelerator="tpu", devices=N`, as `train.py --trainer.accelerator tpu --trainer.devices N`
would: `xla`, which is biggan_smyrf's `GANXLAStrategy`). Lightning's XLA launcher pickles the module
into the launched process (torch_xla's spawn); there the replicas are threads, one per device. The
model and batch are xla_check's (G32 ch 16, batch 8 per replica, 2 D steps per G step): G iterations
with SMYRF, then with dense attention. Measured:
  - replicas identical: every replica's G, D and G_ema (weights and buffers: spectral norm's u and
    v, batch-norm statistics) compared bit for bit with replica 0's after training;
  - replicas saw different batches and latents: their first D losses differ;
  - gradient reductions: every `xm.all_reduce` call (the collective under `xm.reduce_gradients`
    and `xm.collective_broadcast`) is recorded with the replica, the G iteration and the tensors it
    reduces, classified as G's or D's gradients (by identity with the parameters' .grad) or G's
    batch-norm statistics; per optimiser step there must be exactly one gradient all-reduce, of the
    stepped network's parameter count;
  - per step (one Lightning batch), from torch_xla's process-wide metrics: graph compilations,
    `aten::` counters (ops run on the host), device<->host transfers; and wall time per G iteration.
Goals (exit status 1 if one is missed): replicas identical; one gradient all-reduce per network per
optimiser step, of that network's size; no `aten::` counter; no compilation after the first two G
iterations of each attention kind.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

DEFAULT_DEVICES = 4
os.environ.setdefault("PJRT_DEVICE", "CPU")  # before torch_xla is imported
# Lightning's XLA launcher forks; a forked process whose parent ran OpenMP threads spins forever in
# its first parallel region, so this process computes on one thread (XLA uses its own thread pools).
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

try:
    import torch_xla  # noqa: E402
    import torch_xla.core.xla_model as xm  # noqa: E402
except ImportError as error:
    raise SystemExit(f"xla_pod needs torch_xla ({error}); `make xla-check` builds .venv-xla with it") from error

import pytorch_lightning as pl  # noqa: E402

from benchmarks.checks.xla_check import (  # noqa: E402
    DENSE, SMYRF, WARMUP_G_ITERS, Phase, build_module, counters, demo_data, difference,
)
from benchmarks.common import markdown_table  # noqa: E402
from biggan_smyrf.training import BigGAN  # noqa: E402
from biggan_smyrf.training.strategy import batch_statistics  # noqa: E402


def expose_pjrt_cpu_devices_to_lightning(devices: int) -> None:
    """As xla_check's, with all `devices` CPU devices (Lightning accepts 1 or all of them)."""
    import lightning_fabric.accelerators.xla as fabric_xla

    fabric_xla.XLAAccelerator.is_available = staticmethod(lambda: True)
    fabric_xla.XLAAccelerator.auto_device_count = staticmethod(lambda: devices)


# --- the probe of the collective calls ----------------------------------------------------------


class AllReduceProbe:
    """Wraps `xm.all_reduce`, through which `xm.reduce_gradients` and `xm.collective_broadcast`
    issue their collectives, and records every call with what it reduces. Installed before the
    launch (the launched process is forked, so it inherits the wrapper)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.modules: dict[int, BigGAN] = {}  # thread -> the replica's module
        self._lock = threading.Lock()
        self._all_reduce = xm.all_reduce
        xm.all_reduce = self

    def __call__(self, reduce_type, inputs, *args, **kwargs):
        tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        module = self.modules.get(threading.get_ident())
        if module is not None:
            with self._lock:
                self.calls.append({"rank": module.global_rank, "g_iters": module.g_iters,
                                   "micro_step": module._micro_step, "what": self.classify(module, tensors),
                                   "tensors": len(tensors), "floats": sum(t.numel() for t in tensors)})
        return self._all_reduce(reduce_type, inputs, *args, **kwargs)

    @staticmethod
    def classify(module: BigGAN, tensors: list[torch.Tensor]) -> str:
        """By shapes: the gradients an XLA optimiser step reduces are not always the Python objects
        that `p.grad` returns afterwards, but one tensor per parameter, in the parameters' shapes,
        is a whole network's gradients and nothing else."""
        shapes = sorted(tuple(t.shape) for t in tensors)
        for name in module.trained_networks:
            net = getattr(module, name)
            if shapes == sorted(tuple(p.shape) for p in net.parameters()):
                return f"{name} gradients"
            if shapes == sorted(tuple(b.shape) for b in batch_statistics(net)):
                return f"{name} batch-norm statistics"
        return "other"


PROBE: Optional[AllReduceProbe] = None  # a global: the trainer and its callbacks are pickled for the launch


def install_probe() -> AllReduceProbe:
    global PROBE
    if PROBE is None:
        PROBE = AllReduceProbe()
    return PROBE


# --- training -----------------------------------------------------------------------------------


@dataclass(eq=False)
class ReplicaLog(pl.Callback):
    """In every replica: switches attention by phase, keeps the first D losses, writes the replica's
    final state dict to `out`; in replica 0 also one record per Lightning batch (the process-wide
    counters' change from its start to the next batch's start, and its wall time)."""

    phases: list[Phase]
    out: Path
    steps: list[dict] = field(default_factory=list)
    _open: Optional[dict] = None
    _first_d_losses: list = field(default_factory=list)

    def on_train_start(self, trainer, module):
        PROBE.modules[threading.get_ident()] = module
        d_micro_step = module.d_micro_step

        def recorded(real, y_real, opt_d):
            out = d_micro_step(real, y_real, opt_d)
            if module.g_iters == 0:
                self._first_d_losses.append(out[0])
            return out

        module.d_micro_step = recorded

    def _close(self, module: BigGAN) -> None:
        if self._open is not None:
            step = self._open
            step.update(difference(counters(), step.pop("start")))
            step["seconds"] = time.perf_counter() - step.pop("t0")
            self.steps.append(step)
            self._open = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        phase = next(p for p in self.phases if module.g_iters < p.until)
        if module._micro_step == 0:
            module.set_schedule(replace(module.schedule, train=phase.attention))
        if trainer.global_rank == 0:
            self._close(module)
            self._open = {"step": len(self.steps), "phase": phase.name, "g_iters_before": module.g_iters,
                          "start": counters(), "t0": time.perf_counter()}

    def on_train_end(self, trainer, module):
        # The last step's batch-norm broadcast is still pending: launched here by every replica
        # together, not by the reads below, which each replica would compile and run on its own.
        torch_xla.sync()
        xm.wait_device_ops()
        rank = trainer.global_rank
        if rank == 0:
            self._close(module)
            (self.out / "steps.json").write_text(json.dumps(self.steps))
        state = {name: value.cpu() for name, value in module.state_dict().items()}
        calls = [c for c in PROBE.calls if c["rank"] == rank]  # recorded in the launched process
        torch.save({"state": state, "first_d_losses": [float(x.cpu()) for x in self._first_d_losses],
                    "g_iters": module.g_iters, "all_reduces": calls}, self.out / f"replica{rank}.pt")


def fit(module: BigGAN, devices: int, callbacks: list, batch_size: int) -> str:
    trainer = pl.Trainer(
        accelerator="tpu", devices=devices, precision="32-true", max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks,
    )
    strategy = type(trainer.strategy).__name__
    trainer.fit(module, demo_data(32, batch_size))
    return strategy


# --- summary ------------------------------------------------------------------------------------


def network_sizes(module: BigGAN) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(module, name).parameters()) for name in module.trained_networks}


def replicas_identical(replicas: list[dict]) -> dict:
    reference = replicas[0]["state"]
    differing = sorted({name for rep in replicas[1:] for name, value in rep["state"].items()
                        if not torch.equal(value, reference[name])})
    max_diff = max((float((rep["state"][n].double() - reference[n].double()).abs().max())
                    for rep in replicas[1:] for n in differing), default=0.0)
    losses = [rep["first_d_losses"][0] for rep in replicas]
    return {"tensors_compared": len(reference), "tensors_differing": len(differing), "max_abs_diff": max_diff,
            "first_differing": differing[:5], "g_iters": [rep["g_iters"] for rep in replicas],
            "first_d_loss_per_replica": [round(x, 5) for x in losses],
            "replicas_saw_different_batches": len(set(losses)) == len(losses)}


def reductions_per_step(calls: list[dict], sizes: dict[str, int], devices: int, num_d_steps: int,
                        g_iters: int) -> dict:
    """Per replica and G iteration: the gradient all-reduces of each network, their floats, and the
    batch-norm broadcasts, against one per optimiser step (num_d_steps of D's, one of G's)."""
    per_iteration = {}
    for call in calls:
        key = (call["rank"], call["g_iters"])
        row = per_iteration.setdefault(key, {"G gradients": [], "D gradients": [], "G batch-norm statistics": [],
                                             "other": []})
        row.setdefault(call["what"], []).append(call["floats"])
    expected = {"G gradients": [sizes["G"]], "D gradients": [sizes["D"]] * num_d_steps}
    complete = [(rank, g) for rank in range(devices) for g in range(g_iters)]
    exact = all(per_iteration.get(key, {}).get(what) == floats for key in complete for what, floats in expected.items())
    one = per_iteration.get((0, min(2, g_iters - 1)), {})
    return {
        "G_params": sizes["G"], "D_params": sizes["D"],
        "g_iterations_checked": len(complete),
        "per_g_iteration": {what: len(v) for what, v in one.items()},
        "gradient_floats_per_g_iteration": sum(one.get("G gradients", []) + one.get("D gradients", [])),
        "minimum_floats": num_d_steps * sizes["D"] + sizes["G"],
        "bn_floats_per_g_iteration": sum(one.get("G batch-norm statistics", [])),
        "other_all_reduces": sum(len(v.get("other", [])) for v in per_iteration.values()),
        "one_reduction_per_network_per_step": exact,
    }


def summarise_phase(steps: list[dict], phase: Phase, first_g_iter: int) -> dict:
    mine = [s for s in steps if s["phase"] == phase.name]
    after_warmup = [s for s in mine if s["g_iters_before"] >= first_g_iter + WARMUP_G_ITERS]
    g_iter_seconds = [sum(s["seconds"] for s in mine if s["g_iters_before"] == g) for g in range(first_g_iter, phase.until)]
    return {
        "phase": phase.name, "attention": phase.attention.kind, "g_iters": f"{first_g_iter}-{phase.until - 1}",
        "compilations_per_step": [s["compilations"] for s in mine],
        "compilations_after_warmup": sum(s["compilations"] for s in after_warmup),
        "aten_counters": sum(sum(s["aten"].values()) for s in mine),
        "device_to_host_per_step": [s["device_to_host"] for s in mine],
        "g_iter_seconds": [round(t, 3) for t in g_iter_seconds],
        "g_iter_seconds_after_warmup": statistics.median(g_iter_seconds[WARMUP_G_ITERS:])
        if len(g_iter_seconds) > WARMUP_G_ITERS else None,
    }


KINDS = {"smyrf": SMYRF, "dense": DENSE}


def run(devices: int, g_iters_per_kind: int = 5, batch_size: int = 8, kinds: tuple = ("smyrf", "dense")) -> dict:
    """Train on `devices` XLA CPU devices; the measured rows, goals and metadata."""
    expose_pjrt_cpu_devices_to_lightning(devices)
    phases = [Phase(kind, KINDS[kind], (i + 1) * g_iters_per_kind) for i, kind in enumerate(kinds)]
    module = build_module(ch=16, resolution=32, attention_resolution=32, attention=KINDS[kinds[0]],
                          max_g_iters=phases[-1].until, log_every=10**6, n_samples=batch_size)
    sizes, num_d_steps = network_sizes(module), module.optim_cfg.num_d_steps
    install_probe()
    with tempfile.TemporaryDirectory() as tmp:
        log = ReplicaLog(phases, Path(tmp))
        start = time.perf_counter()
        strategy = fit(module, devices, [log], batch_size)
        train_seconds = time.perf_counter() - start
        replicas = [torch.load(Path(tmp) / f"replica{r}.pt") for r in range(devices)]
        steps = json.loads((Path(tmp) / "steps.json").read_text())
    identical = replicas_identical(replicas)
    calls = [call for replica in replicas for call in replica["all_reduces"]]
    reductions = reductions_per_step(calls, sizes, devices, num_d_steps, phases[-1].until)
    summaries, first = [], 0
    for phase in phases:
        summaries.append(summarise_phase(steps, phase, first))
        first = phase.until
    goals = {
        f"{devices} replicas identical after {phases[-1].until} G iterations": identical["tensors_differing"] == 0
        and identical["g_iters"] == [phases[-1].until] * devices,
        "replicas saw different batches and latents": identical["replicas_saw_different_batches"],
        "one gradient all-reduce per network per optimiser step, of its size": reductions["one_reduction_per_network_per_step"],
        "no aten:: counters (multi-device)": all(p["aten_counters"] == 0 for p in summaries),
        "no compilation after warm-up (multi-device)": all(p["compilations_after_warmup"] == 0 for p in summaries),
    }
    return {"devices": devices, "strategy": strategy, "batch_per_replica": batch_size, "train_seconds": round(train_seconds, 1),
            "xla_thread_pool_size": os.environ.get("XLA_THREAD_POOL_SIZE"), "phases": summaries,
            "replicas": identical, "reductions": reductions, "goals": goals, "steps": steps}


def report(result: dict) -> str:
    devices, r, red = result["devices"], result["replicas"], result["reductions"]
    for p in result["phases"]:
        p["compiles"] = " ".join(map(str, p["compilations_per_step"]))
        p["d2h"] = " ".join(map(str, p["device_to_host_per_step"]))
    training = markdown_table(result["phases"], [
        ("phase", "G iterations (attention)"), ("g_iters", "G iter"), ("compiles", "compilations per step"),
        ("aten_counters", "aten:: counters"), ("d2h", "device->host per step"),
        ("g_iter_seconds_after_warmup", "s per G iteration after warm-up"),
    ])
    per = red["per_g_iteration"]
    rows = [{
        "devices": devices, "identical": f"{r['tensors_compared'] - r['tensors_differing']}/{r['tensors_compared']} tensors",
        "losses": ", ".join(map(str, r["first_d_loss_per_replica"])),
        "g": per.get("G gradients", 0), "d": per.get("D gradients", 0),
        "floats": f"{red['gradient_floats_per_g_iteration']:,} / {red['minimum_floats']:,}",
        "bn": f"{per.get('G batch-norm statistics', 0)} ({red['bn_floats_per_g_iteration']:,} floats)",
        "other": red["other_all_reduces"],
    }]
    replicas = markdown_table(rows, [
        ("devices", "replicas"), ("identical", "bit-identical to replica 0 (G, D, G_ema, buffers)"),
        ("losses", "first D loss per replica"), ("g", "G gradient all-reduces per G iteration"),
        ("d", "D gradient all-reduces per G iteration"), ("floats", "gradient floats per G iteration / minimum"),
        ("bn", "G batch-norm broadcasts per G iteration"), ("other", "other all-reduces in training"),
    ])
    goals = "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in result["goals"].items())
    return (
        f"Lightning `accelerator=\"tpu\", devices={devices}` ({result['strategy']}) on PJRT's CPU device with "
        f"CPU_NUM_DEVICES={devices}: {devices} replicas (threads of one launched process, XLA_THREAD_POOL_SIZE="
        f"{result['xla_thread_pool_size']}), batch {result['batch_per_replica']} per replica. Compilations, aten:: "
        f"counters and transfers are process-wide (all replicas); times are replica 0's.\n\n{training}\n\n{replicas}\n\n"
        f"Goals:\n{goals}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=int(os.environ.get("CPU_NUM_DEVICES", DEFAULT_DEVICES)))
    parser.add_argument("--g-iters", type=int, default=5, help="G iterations per attention kind")
    parser.add_argument("--kinds", nargs="+", default=["smyrf", "dense"], choices=sorted(KINDS),
                        help="attention kinds, trained in this order")
    parser.add_argument("--json", type=Path, help="write the result here (xla_check reads it)")
    args = parser.parse_args()
    if int(os.environ.get("CPU_NUM_DEVICES", 0)) != args.devices:
        raise SystemExit(f"run with CPU_NUM_DEVICES={args.devices} in the environment (read when torch_xla starts)")
    result = run(args.devices, args.g_iters, kinds=tuple(args.kinds))
    result["table"] = report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(result["table"])
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
