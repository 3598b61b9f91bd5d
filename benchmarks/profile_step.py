"""Where a G iteration's time goes: torch.profiler over the training step, time per op group.

    python benchmarks/profile_step.py --device cuda                      # dense@64, fp32 and bf16, batch 32
    python benchmarks/profile_step.py --device cuda --dtypes bf16 --speeds plain nhwc   # + channels_last
    python benchmarks/profile_step.py --device cuda --variants "smyrf@128 ours 4x2048" --dtypes bf16
    python benchmarks/profile_step.py --quick                             # CPU dry run: ch=16, batch 2

The step is benchmarks/models.py's (2 D steps + 1 G step, Adam, autocast for bf16/fp16). After
two warm-up iterations, `--iters` iterations run under the profiler. On CUDA the device kernels
are grouped by name (attention, NCHW<->NHWC transposes, convolution, matmul, batch norm, optimizer,
copies, elementwise);
on the CPU the aten ops' self CPU time is. Per G iteration it reports:
  wall ms       host time of the iteration (synchronised at both ends)
  busy ms       sum of the device kernels' durations (CUDA) -- busy/wall near 1 means the GPU
                is the bottleneck; well below 1 means launches and Python are (then bf16 cannot help)
  launches      device kernels launched
  <group> ms    per group, and its share of busy time
Writes benchmarks/results/profile_step-<device>.{json,md}; the 15 costliest kernels (or ops) of
each case go to the JSON.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_cuda_options, markdown_table, parse_device_args, synchronize, write_results  # noqa: E402
from models import SPEEDS, VARIANTS, workload  # noqa: E402

# First match wins: attention before matmul (flash kernels), convolution before matmul (cuDNN's
# implicit GEMMs), optimizer and norm before elementwise.
GROUPS = [
    ("attention", r"attention|flash|fmha|_forward_kernel|_backward_(kv|q)_kernel|_row_dot|scaled_dot"),
    # cuDNN's layout kernels around NCHW half-precision convolutions (what channels_last avoids).
    ("layout transposes", r"nchwtonhwc|nhwctonchw|nchw2nhwc|nhwc2nchw|transpose"),
    ("convolution", r"conv|xmma_fprop|xmma_dgrad|xmma_wgrad|implicit|fprop|dgrad|wgrad|winograd"),
    ("matmul", r"gemm|matmul|aten::mm|aten::bmm|aten::addmm|aten::dot|aten::mv|cublas|cutlass|linear"),
    ("batch norm", r"batch_norm|bn_fw|bn_bw|welford"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("copy / cast", r"copy|memcpy|memset|to_copy|cat|gather|scatter|index"),
    ("elementwise / reduce", r"elementwise|reduce|vectorized|aten::"),
]
GROUP_NAMES = [name for name, _ in GROUPS] + ["other"]


def group_of(name: str) -> str:
    lowered = name.lower()
    return next((group for group, pattern in GROUPS if re.search(pattern, lowered)), "other")


def _device_events(prof, device: torch.device):
    """(name, microseconds, count) of every device kernel (CUDA) or aten op (CPU, self time)."""
    events = []
    for e in prof.key_averages():
        if device.type == "cuda":
            if e.device_type == torch.autograd.DeviceType.CUDA:
                events.append((e.key, e.self_device_time_total, e.count))
        elif e.key.startswith("aten::") and e.self_cpu_time_total > 0:
            events.append((e.key, e.self_cpu_time_total, e.count))
    return events


def profile_case(variant: str, dtype: str, speed: str, batch: int, ch: int, iters: int, device: torch.device) -> dict:
    case = {"table": "step", "device": device.type, "variant": variant, "batch": batch, "dtype": dtype, "ch": ch,
            "speed": speed}
    step = workload(case, device)
    for _ in range(2):  # allocations, cuDNN autotuning, Triton compilation
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            step()
        synchronize(device)
        wall = (time.perf_counter() - start) / iters
    events = _device_events(prof, device)
    busy_us = sum(us for _, us, _ in events) / iters
    row = {"variant": variant, "dtype": dtype, "speed": speed, "batch": batch, "wall_ms": 1e3 * wall,
           "busy_ms": busy_us / 1e3,
           "busy_fraction": busy_us / 1e6 / wall, "launches": sum(n for _, _, n in events) / iters}
    by_group = dict.fromkeys(GROUP_NAMES, 0.0)
    for name, us, _ in events:
        by_group[group_of(name)] += us / iters
    for name, us in by_group.items():
        row[f"{name} ms"] = us / 1e3
    top = sorted(events, key=lambda e: -e[1])[:15]
    row["top"] = [{"name": n[:120], "ms_per_iter": us / iters / 1e3, "calls_per_iter": c / iters, "group": group_of(n)}
                  for n, us, c in top]
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--variants", nargs="+", default=["dense@64"], choices=list(VARIANTS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    add_cuda_options(parser)
    parser.add_argument("--speeds", nargs="+", default=["plain"], choices=SPEEDS, help="as in models.py")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3, help="profiled G iterations per case")
    parser.add_argument("--quick", action="store_true", help="ch=16, batch 2, 1 iteration (a dry run)")
    parser.add_argument("--name", default="profile_step", help="results file stem")
    return parser


def plan_cases(args) -> list[dict]:
    """The cases `main` profiles, in order (what gpu_plan.py reads without running them)."""
    ch, batch, iters = (16, 2, 1) if args.quick else (96, args.batch, args.iters)
    return [{"variant": v, "dtype": d, "speed": s, "batch": batch, "ch": ch, "iters": iters}
            for v in args.variants for d in args.dtypes for s in args.speeds]


def main():
    args = parse_device_args(build_parser())
    device = torch.device(args.device)
    rows = []
    for case in plan_cases(args):
        rows.append(profile_case(**case, device=device))
        print({k: v for k, v in rows[-1].items() if k != "top"}, flush=True)
    columns = [("variant", "G attention"), ("dtype", "dtype"), ("speed", "speed"), ("batch", "batch"),
               ("wall_ms", "wall ms"), ("busy_ms", "busy ms"), ("busy_fraction", "busy/wall"),
               ("launches", "kernels" if device.type == "cuda" else "aten ops")]
    columns += [(f"{name} ms", f"{name} ms") for name in GROUP_NAMES]
    table = markdown_table(rows, columns)
    print(table)
    what = "device kernels (busy = their total time)" if device.type == "cuda" else "aten ops' self CPU time"
    meta = {"ch": 16 if args.quick else 96, "iters": 1 if args.quick else args.iters, "grouped": what}
    stem = write_results(args.name, device, rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
