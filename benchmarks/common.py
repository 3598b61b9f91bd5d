"""Shared benchmark plumbing: one argument helper, honest timing, honest peak memory, JSON + markdown output.

Peak memory on the CPU is measured in a fresh process per case (ru_maxrss only ever grows, so
cases must not share a process); on CUDA with torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
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
ROOT = RESULTS.parents[1]
DEVICES = ("cpu", "cuda")


def benchmark_parser(description: str | None, *, device: bool = True, threads: bool = True) -> argparse.ArgumentParser:
    """Every script's parser: its docstring as help, and the same --device and --threads for all."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if device:
        parser.add_argument("--device", default="cpu", choices=DEVICES, help="where to measure (cuda needs a GPU)")
    if threads:
        parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                            help="torch threads on the CPU (default: every core, %(default)s here; "
                                 "1 is steadier on a machine shared with other work)")
    return parser


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


def parse_device_args(parser, argv=None):
    """parse_args, then what the options set: torch's threads, the CUDA options, and a clear error
    for --device cuda without a GPU."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if hasattr(args, "tf32"):
        apply_cuda_options(args)
    if getattr(args, "device", None) == "cuda" and not torch.cuda.is_available():
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


def module_command(script: str | Path) -> list[str]:
    """`python -m benchmarks.<name>` for a script of this package (e.g. its `__file__`)."""
    module = Path(script).resolve().relative_to(ROOT).with_suffix("")
    return [sys.executable, "-m", ".".join(module.parts)]


def run_case_in_subprocess(script: str, case: dict, timeout: float = 900) -> dict:
    """Run `python -m <script's module> --case JSON` and parse the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [*module_command(script), "--case", json.dumps(case)], capture_output=True, text=True, timeout=timeout, env=env
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
