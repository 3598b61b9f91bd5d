"""What DiffAugment adds to a G iteration: the augmentation work of one iteration, by policy.

    python -m benchmarks.augment                 # -> results/augment-<dev>.{json,md}
    python -m benchmarks.augment --quick         # 32 px only, 1 rep

One G iteration (biggan_smyrf.training.module) augments, with num_d_steps = 2:
  D steps: 2 x the concatenated real + fake batch (2B images), forward only (neither needs a gradient);
  G step:  the B fakes, forward and backward (the gradient reaches G through the augmentation).
That work is timed here alone, per policy, at p = 1 (DiffAugment) and p = 0.5 (an adaptive run
midway: the same ops on every image, the skipped ones as identities). Each op is a few
element-wise passes over the batch, O(B*C*H*W). The last column sets it against the whole
training step of benchmarks/results/train_step-cpu.json at the same batch and resolution (128 px,
BigGAN ch 96, SMYRF "ours", else the paper's; fp32, 1 thread), where that row exists.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from benchmarks.common import RESULTS, markdown_table, median_seconds, write_results  # noqa: E402

from biggan_smyrf.training.diffaugment import diff_augment  # noqa: E402

POLICIES = (["translation"], ["cutout"], ["color"], ["color", "translation", "cutout"])
STEP_ROWS = ("smyrf@128 ours 4x2048", "smyrf@128 paper 4x2048")  # the training steps 128 px is compared with


def g_iteration_augmentation(batch: int, resolution: int, policy: list[str], p: float):
    """The augmentation calls of one G iteration (2 D steps, 1 G step), as a function to time."""
    generator = torch.Generator().manual_seed(0)
    d_batch = torch.rand(2 * batch, 3, resolution, resolution) * 2 - 1
    fakes = (torch.rand(batch, 3, resolution, resolution) * 2 - 1).requires_grad_()
    upstream = torch.randn(batch, 3, resolution, resolution)

    def run():
        for _ in range(2):
            diff_augment(d_batch, policy, p, generator)
        diff_augment(fakes, policy, p, generator).backward(upstream)

    return run


def training_step(batch: int, resolution: int) -> tuple[str | None, float | None]:
    """(variant, ms) of the recorded CPU training step at this batch: SMYRF ours, else the paper's."""
    path = RESULTS / "train_step-cpu.json"
    if resolution != 128 or not path.exists():
        return None, None
    rows = json.loads(path.read_text())["rows"]
    for variant in STEP_ROWS:
        for r in rows:
            if r.get("variant") == variant and r.get("batch") == batch and r.get("dtype") == "fp32" and r.get("ms"):
                return variant, r["ms"]
    return None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 px only, 1 rep")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    sizes = [(16, 32)] if args.quick else [(16, 32), (4, 128), (8, 128)]
    rows = []
    for batch, resolution in sizes:
        step_variant, step_ms = training_step(batch, resolution)
        for policy in POLICIES:
            for p in (1.0, 0.5):
                ms = 1000 * median_seconds(g_iteration_augmentation(batch, resolution, policy, p), device,
                                           reps=1 if args.quick else args.reps)
                row = {"resolution": resolution, "batch": batch, "policy": ",".join(policy), "p": p, "ms": round(ms, 2),
                       "step": step_variant, "step_ms": round(step_ms) if step_ms else None, "share": round(ms / step_ms, 5) if step_ms else None}
                rows.append(row)
                print(row, flush=True)
    table = markdown_table(rows, [("resolution", "px"), ("batch", "batch"), ("policy", "policy"), ("p", "p"),
                                  ("ms", "augment ms / G iteration"), ("step", "training step (fp32, 1 thread)"),
                                  ("step_ms", "step ms"),
                                  ("share", "share of the step")])
    # The machine's load average, recorded: on a shared machine it inflates every time above.
    meta = {"threads": args.threads, "reps": args.reps, "quick": args.quick, "load_average": os.getloadavg()}
    write_results("augment", device, rows, table, meta)
    print(table)


if __name__ == "__main__":
    main()
