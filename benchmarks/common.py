"""Shared benchmark plumbing: honest timing, honest peak memory, JSON + markdown output.

Peak memory on the CPU is measured in a fresh process per case (ru_maxrss only ever grows, so
cases must not share a process); on CUDA with torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def add_cuda_options(parser) -> None:
    """--tf32 and --cudnn-benchmark: CUDA float32 and convolutions as train.py runs them (both on)."""
    parser.add_argument("--tf32", default="true", choices=["true", "false"],
                        help="CUDA float32 on TF32 tensor cores, train.py's default (true); false = full float32")
    parser.add_argument("--cudnn-benchmark", default="true", choices=["true", "false"],
                        help="cuDNN times each convolution shape once and keeps the fastest algorithm, "
                             "train.py's default (true)")


def apply_cuda_options(args) -> None:
    from biggan_smyrf.cli import set_float32_precision

    set_float32_precision(args.tf32 == "true", "gpu")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "true"


def parse_device_args(parser):
    """parse_args, the CUDA options applied, and a clear error for --device cuda without a GPU."""
    args = parser.parse_args()
    apply_cuda_options(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Memory that one call of fn needs above what is allocated before it.

    CPU: peak RSS of this process minus RSS before the call; only right as the first heavy work
    of a fresh process. CUDA: torch's allocator peak minus its allocation before the call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = current_rss_bytes()
    fn()
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)


def run_case_in_subprocess(script: str, case: dict, timeout: float = 900) -> dict:
    """Run `python script --case JSON` and parse the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, script, "--case", json.dumps(case)], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        return {**case, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """columns: (key, header). Missing values print as '-'."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, device: torch.device, rows: list[dict], table: str, meta: dict) -> Path:
    """benchmarks/results/<name>-<cpu|cuda>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{name}-{device.type}"
    info = {"device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **meta}
    if device.type == "cuda":
        info["tf32"] = torch.backends.cuda.matmul.fp32_precision == "tf32"
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    stem.with_suffix(".json").write_text(json.dumps({"meta": info, "rows": rows}, indent=1))
    header = f"Device: {info['device']}; torch {info['torch']}; {info['date']}.\n\n"
    stem.with_suffix(".md").write_text(header + table + "\n")
    return stem
