"""TPU readiness without a TPU: the training iteration and sampling on an XLA device.

    make xla-check                       # builds .venv-xla (torch_xla) and runs this
    PJRT_DEVICE=CPU .venv-xla/bin/python -m benchmarks.checks.xla_check

Trains the project's LightningModule through Lightning's XLA accelerator and single-device XLA
strategy (`accelerator="tpu"`, as `train.py --trainer.accelerator tpu` would) on PJRT's CPU device,
which compiles and runs the same HLO graphs a TPU would. G32 (ch 16, SMYRF 2x256 at 32x32, the
demo's model), batch 8, 2 D steps per G step, on the demo faces: 10 G iterations with SMYRF, 10 with
dense attention, 5 with SMYRF again. Then G_ema renders a sample batch with dense, SMYRF and dense
attention. Per step (one Lightning batch) it counts, from torch_xla's metrics:
  - graph compilations;
  - `aten::` counters: ops XLA could not lower and ran on the host (a device->host->device round
    trip on a TPU), and `_local_scalar_dense` (.item() and friends);
  - device->host transfers (each one stops the device pipeline until the step's graph has run)
    and host->device transfers (the batch, and SMYRF's hash directions, which are drawn on the host
    from the block's own torch.Generator so that hashing does not depend on the device);
  - wall time.
The first G iteration's D and G losses are compared with eager CPU on the same weights, batches
and latents. Goals (exit status 1 if one is missed): no `aten::` counter in training or sampling;
no compilation from the third G iteration of each attention kind on, nor after swapping back;
no device->host transfer in a step except at logging intervals; first-step losses within 1e-4
relative of eager CPU. Results: results/xla-cpu.{json,md}.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Optional

os.environ.setdefault("PJRT_DEVICE", "CPU")  # before torch_xla is imported

import torch  # noqa: E402

try:
    import torch_xla  # noqa: E402
    import torch_xla.core.xla_model as xm  # noqa: E402
    import torch_xla.debug.metrics as met  # noqa: E402
except ImportError as error:
    raise SystemExit(f"xla_check needs torch_xla ({error}); `make xla-check` builds .venv-xla with it") from error

import pytorch_lightning as pl  # noqa: E402

from benchmarks.common import markdown_table, write_results  # noqa: E402

from biggan_smyrf.attention import AttentionConfig  # noqa: E402
from biggan_smyrf.data import ImageDataModule  # noqa: E402
from biggan_smyrf.metrics import MetricsConfig  # noqa: E402
from biggan_smyrf.models import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from biggan_smyrf.training import AttentionSchedule, BigGAN, EMAConfig, LoopConfig, OptimConfig  # noqa: E402

SMYRF = AttentionConfig(kind="smyrf", n_hashes=2, q_cluster_size=256)
DENSE = AttentionConfig(kind="dense")
LOSS_RTOL = 1e-4
WARMUP_G_ITERS = 2  # compilations are allowed in the first two G iterations of each attention kind


def expose_pjrt_cpu_to_lightning() -> None:
    """Let Lightning's XLA accelerator use PJRT's CPU device.

    Lightning counts TPU chips only (it asks the TPU VM's metadata server), so on any other machine
    it reports no XLA device. Reporting the one device PJRT has leaves everything else -- strategy,
    precision plugin, MpDeviceLoader, mark_step after each optimizer step -- exactly as on a TPU.
    """
    if os.environ["PJRT_DEVICE"] != "CPU":
        return
    import lightning_fabric.accelerators.xla as fabric_xla

    fabric_xla.XLAAccelerator.is_available = staticmethod(lambda: True)
    fabric_xla.XLAAccelerator.auto_device_count = staticmethod(lambda: 1)


# --- torch_xla's counters ------------------------------------------------------------------------


def _samples(metric: str) -> int:
    data = met.metric_data(metric)
    return data[0] if data else 0


def counters() -> dict:
    return {
        "compilations": _samples("CompileTime"),
        "device_to_host": _samples("TransferFromDeviceTime"),
        "host_to_device": _samples("TransferToDeviceTime"),
        "aten": {name: met.counter_value(name) for name in met.counter_names() if name.startswith("aten::")},
    }


def difference(after: dict, before: dict) -> dict:
    aten = {k: v - before["aten"].get(k, 0) for k, v in after["aten"].items() if v != before["aten"].get(k, 0)}
    return {k: after[k] - before[k] for k in ("compilations", "device_to_host", "host_to_device")} | {"aten": aten}


# --- training -----------------------------------------------------------------------------------


@dataclass
class Phase:
    """Train with `attention` until G iteration `until`."""

    name: str
    attention: AttentionConfig
    until: int


@dataclass(eq=False)
class StepLog(pl.Callback):
    """One record per Lightning batch: the counters' change from its start to the next batch's
    start (so Lightning's own end-of-batch logging is included), its attention and wall time."""

    phases: list[Phase]
    log_every: int
    steps: list[dict] = field(default_factory=list)
    _open: Optional[dict] = None

    def _close(self, module: BigGAN) -> None:
        if self._open is not None:
            step = self._open
            step.update(difference(counters(), step.pop("start")))
            step["seconds"] = time.perf_counter() - step.pop("t0")
            step["g_iters_after"] = module.g_iters
            step["g_step"] = module.g_iters != step["g_iters_before"]
            step["log_step"] = step["g_step"] and module.g_iters % self.log_every == 0
            self.steps.append(step)
            self._open = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._close(module)
        phase = next(p for p in self.phases if module.g_iters < p.until)
        if module._micro_step == 0:  # attention changes only between G iterations
            module.set_schedule(replace(module.schedule, train=phase.attention))
        self._open = {"step": len(self.steps), "phase": phase.name, "g_iters_before": module.g_iters,
                      "start": counters(), "t0": time.perf_counter()}

    def on_train_end(self, trainer, module):
        xm.wait_device_ops()
        self._close(module)


def build_module(ch: int, resolution: int, attention_resolution: int, attention: AttentionConfig,
                 max_g_iters: int, log_every: int, n_samples: int) -> BigGAN:
    torch.manual_seed(0)
    return BigGAN(
        generator=GeneratorConfig(resolution=resolution, ch=ch, attention_resolutions=[attention_resolution], attention=attention),
        discriminator=DiscriminatorConfig(resolution=resolution, ch=ch, attention_resolutions=[]),
        optim=OptimConfig(lr_g=2e-4, lr_d=2e-4, num_d_steps=2),
        ema=EMAConfig(decay=0.99, start=0),
        attention=AttentionSchedule(train=None, eval=DENSE),
        loop=LoopConfig(max_g_iters=max_g_iters, log_every=log_every, sample_every=10**6, ckpt_every=10**6,
                        val_every=10**6, n_samples=n_samples),
        metrics=MetricsConfig(enabled=False),
    )


def demo_data(resolution: int, batch_size: int) -> ImageDataModule:
    return ImageDataModule(root=None, resolution=resolution, batch_size=batch_size, num_workers=0, flip=False)


def fit(module: BigGAN, data, accelerator: str, callbacks: list) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision="32-true", max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks,
    )
    trainer.fit(module, data)
    return trainer


class FirstIteration:
    """Keeps the first G iteration's real batches, latents and losses of a module's own methods,
    and can feed the batches and latents to another module (the eager CPU twin)."""

    def __init__(self):
        self.batches, self.latents, self.d_losses, self.g_losses = [], [], [], []

    def record(self, module: BigGAN) -> None:
        d_micro_step, g_step, sample_latents = module.d_micro_step, module.g_step, module.sample_latents

        def recorded_d_micro_step(real, y_real, opt_d):
            out = d_micro_step(real, y_real, opt_d)
            if module.g_iters == 0:
                self.batches.append((real, y_real))
                self.d_losses.append(out[0])
            return out

        def recorded_g_step(batch_size, opt_g):
            loss = g_step(batch_size, opt_g)
            if module.g_iters == 0:
                self.g_losses.append(loss)
            return loss

        def recorded_latents(batch_size):
            z, y = sample_latents(batch_size)
            if module.g_iters == 0:
                self.latents.append((z, y))
            return z, y

        module.d_micro_step, module.g_step, module.sample_latents = recorded_d_micro_step, recorded_g_step, recorded_latents

    def on_cpu(self) -> "FirstIteration":
        """The recorded tensors on the host (after training: no transfer inside a step)."""
        cpu = FirstIteration()
        cpu.batches = [(x.cpu(), y.cpu()) for x, y in self.batches]
        cpu.latents = [(z.cpu(), y.cpu()) for z, y in self.latents]
        cpu.d_losses = [loss.cpu() for loss in self.d_losses]
        cpu.g_losses = [loss.cpu() for loss in self.g_losses]
        return cpu

    def replay_latents(self, module: BigGAN) -> None:
        queue = list(self.latents)
        module.sample_latents = lambda batch_size: queue.pop(0)


def eager_cpu_first_iteration(initial: BigGAN, xla: FirstIteration) -> FirstIteration:
    """The same first G iteration on the CPU: same weights, batches, latents and SMYRF generators."""
    module = copy.deepcopy(initial)
    module.loop_cfg = replace(module.loop_cfg, max_g_iters=1)
    xla.replay_latents(module)
    cpu = FirstIteration()
    cpu.record(module)
    fit(module, torch.utils.data.DataLoader(xla.batches, batch_size=None), "cpu", [])
    return cpu


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs() / b.abs().clamp_min(1e-12))


# --- sampling -----------------------------------------------------------------------------------


def back_on_xla(module: BigGAN) -> BigGAN:
    """The module on the XLA device again: Lightning moves it to the CPU when training ends. The
    move leaves pending ops; they run here rather than inside the first render's graph."""
    module = module.to(torch_xla.device())
    torch_xla.sync()
    return module


def render(module: BigGAN, attention: AttentionConfig) -> dict:
    """G_ema's fixed-z sample batch with `attention` on the module's device, counted from the call
    to its graph's end."""
    module.set_schedule(replace(module.schedule, eval=attention))
    before = counters()
    images = module.sample_grid_images()
    torch_xla.sync()
    xm.wait_device_ops()
    counted = difference(counters(), before)
    return {"attention": attention.kind, "device": images.device.type, **counted, "images": images.cpu()}


def eager_cpu_twin(module: BigGAN, initial: BigGAN) -> BigGAN:
    """A CPU copy of the trained XLA module (its state dict moved over tensor by tensor)."""
    twin = copy.deepcopy(initial)
    twin.load_state_dict({name: value.cpu() for name, value in module.state_dict().items()})
    return twin


def eager_cpu_render(twin: BigGAN, attention: AttentionConfig) -> torch.Tensor:
    twin.set_schedule(replace(twin.schedule, eval=attention))
    return twin.sample_grid_images()


# --- summary ------------------------------------------------------------------------------------


def summarise_phase(steps: list[dict], phase: Phase, first_g_iter: int) -> dict:
    mine = [s for s in steps if s["phase"] == phase.name]
    after_warmup = [s for s in mine if s["g_iters_before"] >= first_g_iter + WARMUP_G_ITERS]
    quiet = [s for s in mine if not s["log_step"]]
    g_iter_seconds = [sum(s["seconds"] for s in mine if s["g_iters_before"] == g) for g in range(first_g_iter, phase.until)]
    return {
        "phase": phase.name,
        "attention": phase.attention.kind,
        "g_iters": f"{first_g_iter}-{phase.until - 1}",
        "compilations_per_step": [s["compilations"] for s in mine],
        "compilations_after_warmup": sum(s["compilations"] for s in after_warmup),
        "aten_counters": sum(sum(s["aten"].values()) for s in mine),
        "device_to_host_per_step": [s["device_to_host"] for s in mine],
        "device_to_host_outside_logging": sum(s["device_to_host"] for s in quiet),
        "host_to_device_per_step": sorted({s["host_to_device"] for s in after_warmup}),
        "g_iter_seconds": [round(t, 3) for t in g_iter_seconds],
        "g_iter_seconds_after_warmup": statistics.median(g_iter_seconds[WARMUP_G_ITERS:]) if len(g_iter_seconds) > WARMUP_G_ITERS else None,
    }


def check_goals(phases: list[dict], renders: list[dict], losses: list[dict], swapped_back: str) -> dict[str, bool]:
    back = next(p for p in phases if p["phase"] == swapped_back)
    return {
        "no aten:: counters in training": all(p["aten_counters"] == 0 for p in phases),
        "sampling on the XLA device, no aten:: counters": all(r["device"] == "xla" and not r["aten"] for r in renders),
        "no compilation after warm-up": all(p["compilations_after_warmup"] == 0 for p in phases),
        "no compilation after swapping back": sum(back["compilations_per_step"]) == 0 and renders[-1]["compilations"] == 0,
        "no device->host transfer outside logging steps": all(p["device_to_host_outside_logging"] == 0 for p in phases),
        "no device->host transfer in sampling": all(r["device_to_host"] == 0 for r in renders),
        "first-step losses equal eager CPU's": all(row["relative_error"] <= LOSS_RTOL for row in losses),
    }


def main() -> int:
    expose_pjrt_cpu_to_lightning()
    log_every, batch_size, resolution = 5, 8, 32
    phases = [Phase("smyrf", SMYRF, 10), Phase("dense", DENSE, 20), Phase("smyrf again", SMYRF, 25)]
    module = build_module(ch=16, resolution=resolution, attention_resolution=32, attention=SMYRF,
                          max_g_iters=phases[-1].until, log_every=log_every, n_samples=batch_size)
    initial = copy.deepcopy(module)
    first = FirstIteration()
    first.record(module)
    log = StepLog(phases, log_every)
    start = time.perf_counter()
    trainer = fit(module, demo_data(resolution, batch_size), "tpu", [log])
    train_seconds = time.perf_counter() - start
    strategy = type(trainer.strategy).__name__

    xla_first = first.on_cpu()
    cpu_first = eager_cpu_first_iteration(initial, xla_first)
    losses = [
        {"loss": name, "xla": float(x), "eager_cpu": float(c), "relative_error": relative_error(x, c)}
        for name, xs, cs in (("D, step 1", xla_first.d_losses[:1], cpu_first.d_losses[:1]),
                             ("D, step 2", xla_first.d_losses[1:2], cpu_first.d_losses[1:2]),
                             ("G, step 2", xla_first.g_losses[:1], cpu_first.g_losses[:1]))
        for x, c in zip(xs, cs)
    ]

    renders, twin = [], eager_cpu_twin(module, initial)
    module = back_on_xla(module)
    for attention in (DENSE, SMYRF, DENSE):
        row = render(module, attention)
        images = row.pop("images")
        row["max_abs_diff_vs_eager_cpu"] = float((images - eager_cpu_render(twin, attention)).abs().max())
        renders.append(row)

    summaries, first_g = [], 0
    for phase in phases:
        summaries.append(summarise_phase(log.steps, phase, first_g))
        first_g = phase.until
    goals = check_goals(summaries, renders, losses, swapped_back=phases[-1].name)

    meta = {
        "torch_xla": torch_xla.__version__, "lightning": pl.__version__, "pjrt_device": os.environ["PJRT_DEVICE"],
        "strategy": strategy, "model": f"G{resolution}/D{resolution} ch 16, SMYRF 2x256 at 32x32, batch {batch_size}, "
        f"2 D steps per G step, log every {log_every} G iterations", "train_seconds": round(train_seconds, 1),
        "phases": summaries, "sampling": renders, "first_step_losses": losses, "goals": goals,
    }
    table = report(summaries, renders, losses, goals, strategy)
    pod = multi_device_run()
    meta["multi_device"] = pod
    goals.update(pod["goals"])
    table += f"\n\n## {pod['devices']} devices, data-parallel\n\n{pod.pop('table')}"
    write_results("xla", torch.device("cpu"), log.steps, table, meta)
    print(table)
    return 0 if all(goals.values()) else 1


def multi_device_run(devices: int = 4) -> dict:
    """benchmarks/checks/xla_pod.py in a process of its own: CPU_NUM_DEVICES is read when torch_xla
    starts, and this process has started it with one device."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pod.json")
        env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices)}
        subprocess.run([sys.executable, "-m", "benchmarks.checks.xla_pod", "--devices", str(devices), "--json", out],
                       env=env, check=False)
        if not os.path.exists(out):
            return {"devices": devices, "goals": {f"{devices}-device run finished": False},
                    "table": f"The {devices}-device run stopped before its results (see its output)."}
        with open(out) as f:
            return json.load(f)


def report(phases: list[dict], renders: list[dict], losses: list[dict], goals: dict, strategy: str) -> str:
    for p in phases:
        p["compiles"] = " ".join(map(str, p["compilations_per_step"]))
        p["d2h"] = " ".join(map(str, p["device_to_host_per_step"]))
        p["h2d"] = ", ".join(map(str, p["host_to_device_per_step"]))
    training = markdown_table(phases, [
        ("phase", "G iterations (attention)"), ("g_iters", "G iter"), ("compiles", "compilations per step"),
        ("aten_counters", "aten:: counters"), ("d2h", "device->host per step"), ("h2d", "host->device per step"),
        ("g_iter_seconds_after_warmup", "s per G iteration after warm-up"),
    ])
    sampling = markdown_table(renders, [
        ("attention", "G_ema render"), ("compilations", "compilations"), ("aten", "aten:: counters"),
        ("device_to_host", "device->host"), ("max_abs_diff_vs_eager_cpu", "max |XLA - eager CPU|"),
    ])
    loss_table = markdown_table(losses, [("loss", "first G iteration"), ("xla", "XLA"), ("eager_cpu", "eager CPU"),
                                         ("relative_error", "relative difference")])
    goal_lines = "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in goals.items())
    return (
        f"Lightning `accelerator=\"tpu\"` ({strategy}) on PJRT's CPU device. One step = one Lightning batch "
        f"(a D step; every second one also the G step and the EMA update); steps at logging intervals are the ones "
        f"with device->host transfers.\n\n{training}\n\n{sampling}\n\n{loss_table}\n\nGoals:\n{goal_lines}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
