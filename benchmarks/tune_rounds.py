"""Block sizes of SMYRF's permuted-round Triton kernels (attention/triton/rounds.py), by measurement.

    python -m benchmarks.tune_rounds                       # CUDA: bf16 and fp32, 16,384 tokens, batch 32
    python -m benchmarks.tune_rounds --dtypes bfloat16 --n 65536 --batch 8

For each pass ("forward", "backward" -- the two-kernel backward of deterministic mode -- and
"one pass", the default backward) every candidate (BLOCK_M, BLOCK_N, num_warps, num_stages) is timed with the
others at their current setting: the whole smyrf_attention call with the library default
(4 x 2048 at 16,384 tokens), under no_grad for the forward, forward + backward for the backwards;
median of 10 after a warm-up (which compiles). The fastest candidate of each pass is printed, to
put in triton/rounds.py's BLOCKS.
Writes benchmarks/results/tune_rounds-cuda.{json,md}.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import (  # noqa: E402
    add_cuda_options, apply_cuda_options, benchmark_parser, markdown_table, median_seconds, parse_device_args, write_results)

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402
from biggan_smyrf.attention.triton import rounds as triton_rounds  # noqa: E402

CANDIDATES = {
    "forward": [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2), (64, 32, 4, 1), (128, 64, 4, 3)],
    "backward": [(32, 64, 8, 1), (32, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 64, 4, 1), (64, 64, 4, 3)],
    "one pass": [(16, 64, 4, 1), (32, 64, 4, 1), (32, 64, 4, 3), (64, 64, 4, 3)],
}
# The BLOCKS entries a pass sets: the two-kernel backward's candidates go to both its kernels.
KERNELS = {"forward": ("forward",), "backward": ("backward_kv", "backward_q"), "one pass": ("one pass",)}


def timing(pass_name: str, q, k, v, config: AttentionConfig) -> float:
    def call():
        return smyrf_attention(q, k, v, config, scale=1.0, seed=0)

    if pass_name in ("backward", "one pass"):
        def forward_backward():
            call().sum().backward()

        # The two-kernel backward runs in deterministic mode (warn_only: the ops around it may have
        # no deterministic CUDA implementation, and are timed alike either way).
        torch.use_deterministic_algorithms(pass_name == "backward", warn_only=True)
        try:
            return 1e3 * median_seconds(forward_backward, q.device, 10)
        finally:
            torch.use_deterministic_algorithms(False)
    with torch.no_grad():
        return 1e3 * median_seconds(call, q.device, 10)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--n", type=int, default=16384, help="tokens (queries); keys are n / 4")
    parser.add_argument("--batch", type=int, default=32)
    add_cuda_options(parser)
    parser.add_argument("--q-cluster-size", type=int, default=2048)
    return parser


def plan_cases(args) -> list[dict]:
    """Every (dtype, pass, blocks) `main` times, in order (what gpu_plan.py reads without running them)."""
    return [{"dtype": dtype, "pass": pass_name, "blocks": blocks, "n": args.n, "batch": args.batch,
             "q_cluster_size": args.q_cluster_size}
            for dtype in args.dtypes for pass_name, candidates in CANDIDATES.items() for blocks in candidates]


def main():
    parser = build_parser()
    args = parse_device_args(parser)
    apply_cuda_options(args)
    if not torch.cuda.is_available():
        parser.error("the Triton kernels are timed on CUDA only")
    device = torch.device("cuda")
    config = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=args.q_cluster_size)
    default = dict(triton_rounds.BLOCKS)
    rows, best = [], {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        g = torch.Generator().manual_seed(0)
        shapes = ((args.n, 12), (args.n // 4, 12), (args.n // 4, 48))
        q, k, v = (torch.randn(args.batch, n, d, generator=g).to(device, dtype).requires_grad_() for n, d in shapes)
        for pass_name, candidates in CANDIDATES.items():
            for blocks in candidates:
                triton_rounds.BLOCKS.update(default, **{kernel: blocks for kernel in KERNELS[pass_name]})
                try:
                    ms = timing(pass_name, q, k, v, config)
                except Exception as error:  # a shape the compiler or the register file rejects
                    rows.append({"dtype": dtype_name, "pass": pass_name, "blocks": str(blocks), "error": str(error)[:80]})
                    continue
                rows.append({"dtype": dtype_name, "pass": pass_name, "blocks": str(blocks), "ms": ms,
                             "timed": "fwd" if pass_name == "forward" else "fwd+bwd"})
                print(rows[-1], flush=True)
            timed = [r for r in rows if r["dtype"] == dtype_name and r["pass"] == pass_name and "ms" in r]
            best[(dtype_name, pass_name)] = min(timed, key=lambda r: r["ms"])["blocks"] if timed else None
    triton_rounds.BLOCKS.update(default)
    table = markdown_table(rows, [("dtype", "dtype"), ("pass", "pass"), ("blocks", "(BLOCK_M, BLOCK_N, warps, stages)"),
                                  ("ms", "ms"), ("timed", "timed"), ("error", "note")])
    table += "\n\nFastest: " + "; ".join(f"{d} {p}: {b}" for (d, p), b in best.items())
    print(table)
    meta = {"n": args.n, "batch": args.batch, "q_cluster_size": args.q_cluster_size, "default": default,
            "best": {f"{d} {p}": b for (d, p), b in best.items()}}
    stem = write_results("tune_rounds", device, rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
