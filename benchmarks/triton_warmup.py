"""Compile, in parallel, every Triton specialisation a GPU run will launch, before the timed steps.

    python benchmarks/triton_warmup.py --calls '[{"config": {...}, "n": 16384, "dtype": "bfloat16", "tf32": true}]'

`make gpu-check` passes the calls its plan needs (gpu_plan.warmup_calls: one SMYRF forward+backward
per distinct set of specialisations). Each call runs at batch 1 in a process of its own, up to
--jobs at once: the batch does not enter Triton's specialisation (it only sizes the grid and
batch strides, multiples of 16 either way), so the kernels compiled here are the ones the batch-32
rows launch, and Triton's on-disk cache hands them to every later step. Compiles are CPU work (the
compiler and ptxas) and independent, so 16 cores cut their wall time by up to 16x against
compiling them one after another inside the steps.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]


def warm(call: dict) -> float:
    """One SMYRF forward (+ backward) at batch 1 on CUDA; -> seconds."""
    import torch

    from biggan_smyrf.attention import AttentionConfig, smyrf_attention
    from biggan_smyrf.cli import set_float32_precision

    start = time.perf_counter()
    set_float32_precision(call["tf32"], "gpu")
    n, dtype = call["n"], getattr(torch, call["dtype"])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, t, d, generator=g).to("cuda", dtype).requires_grad_()
               for t, d in ((n, 12), (n // 4, 12), (n // 4, 48)))
    out = smyrf_attention(q, k, v, AttentionConfig(**call["config"]), scale=1.0, seed=0)
    if call.get("backward", True):
        out.float().sum().backward()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", required=True, help="JSON list of {config, n, dtype, tf32, backward}")
    parser.add_argument("--jobs", type=int, default=16, help="processes compiling at once")
    return parser


def plan_cases(args) -> list[dict]:
    """The calls, in order (what gpu_plan.py reads)."""
    return json.loads(args.calls)


def main():
    parser = build_parser()
    args = parser.parse_args()
    calls = plan_cases(args)
    import torch

    if not torch.cuda.is_available():
        parser.error("the Triton kernels compile for the GPU in use: CUDA is not available")
    start = time.perf_counter()
    # spawn: a CUDA context cannot cross fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(calls))), mp_context=context) as pool:
        for call, seconds in zip(calls, pool.map(warm, calls)):
            print(f"warmed {call['config'].get('q_cluster_size')} q/cluster, {call['n']} tokens, {call['dtype']}: "
                  f"{seconds:.1f} s", flush=True)
    print(f"{len(calls)} calls warmed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
