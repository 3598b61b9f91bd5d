"""Attention core benchmark: time, peak memory and error of dense vs SMYRF.

    python -m benchmarks.attention            # full table (CPU: ~15 min on 2 cores)
    python -m benchmarks.attention --quick    # N <= 4096, a sanity run
    python -m benchmarks.attention --device cuda --dtype bfloat16 --methods "dense SDPA" "ours 4x2048"
    python -m benchmarks.attention --device cuda --dtype bfloat16 float32 --sizes 16384 65536 --batches 8 32 \
        --methods "dense SDPA" "smyrf 4x2048" "ours 4x2048" "ours 4x4096" --name attention   # the H100 attention table

SMYRF rows are the paper's recipe (and random clusters as the bar to clear) except "ours", the
library default. Shapes as in BigGAN ch=96: d_qk = 12, d_v = 48, keys 2x2-pooled (M = N/4), scale 1.
Each CPU case runs in a fresh process so that peak RSS belongs to that case alone.
SMYRF's cluster kernel is `--kernel` (default auto: PyTorch's flash op on the CPU, Triton on CUDA).
Error = |out - exact| / |exact| (exact: dense attention in float32) at batch 1, on Gaussian inputs and on the BigGAN-like
"smooth feature map" family (biggan_smyrf.attention.synthetic), mean over 2 seeds; computed once per (N, dtype,
method), on the row of the first batch size. Times: median of 10 calls on CUDA (5 past 16k tokens)
after a warm-up, of 5 / 3 / 1 on the CPU by size. CUDA float32 runs on TF32 as train.py does
(`--tf32 false`: full float32; the results' header says which).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.common import (  # noqa: E402
    add_cuda_options, benchmark_parser, markdown_table, median_seconds, parse_device_args, peak_extra_bytes, run_case_in_subprocess, write_results)

from biggan_smyrf.attention import AttentionConfig, dense_attention, smyrf_attention  # noqa: E402
from biggan_smyrf.attention.synthetic import gaussian_qkv, relative_error, smooth_feature_qkv  # noqa: E402

D_QK, D_V = 12, 48
METHODS = {
    "dense naive": dict(kind="naive"),
    "dense SDPA": dict(kind="sdpa"),
    "smyrf 1x256": dict(kind="smyrf", n_hashes=1, q_cluster_size=256),
    "smyrf 4x256": dict(kind="smyrf", n_hashes=4, q_cluster_size=256),
    "smyrf 4x2048": dict(kind="smyrf", n_hashes=4, q_cluster_size=2048),
    # The library default (k-d hashing, hub keys, summary keys, dedup) at the paper's sizes.
    "ours 4x2048": dict(kind="ours", n_hashes=4, q_cluster_size=2048),
    "ours 4x4096": dict(kind="ours", n_hashes=4, q_cluster_size=4096),  # the default's size at 65,536 tokens
    "smyrf 8x1024": dict(kind="smyrf", n_hashes=8, q_cluster_size=1024),
    # Same sizes and cost as smyrf 4x2048 with random balanced clusters: the bar SMYRF must clear.
    "random 4x2048": dict(kind="smyrf", n_hashes=4, q_cluster_size=2048, hashing="random"),
}
# The naive O(N*M) score matrix (with its softmax and gradient) past this is not attempted.
NAIVE_LIMIT_BYTES = 12 * 2**30


def method_config(method: dict):
    """The AttentionConfig a SMYRF method runs (None for dense): "ours" is the library default
    (`attend` with this config), the others the paper's recipe."""
    if method["kind"] == "ours":
        return AttentionConfig(kind="smyrf", n_hashes=method["n_hashes"], q_cluster_size=method["q_cluster_size"])
    if method["kind"] == "smyrf":
        return AttentionConfig.paper(n_hashes=method["n_hashes"], q_cluster_size=method["q_cluster_size"],
                                     hashing=method.get("hashing", "xbox"))
    return None


def attention_fn(method: dict, kernel: str = "auto"):
    if method["kind"] == "naive":
        return lambda q, k, v: dense_attention(q, k, v, scale=1.0, backend="math")
    if method["kind"] == "sdpa":
        return lambda q, k, v: dense_attention(q, k, v, scale=1.0)
    config = method_config(method)
    if method["kind"] == "ours":
        # What the model's blocks run, with the cluster kernel chosen.
        return lambda q, k, v: smyrf_attention(
            q, k, v, config, scale=1.0, generator=torch.Generator().manual_seed(0), kernel=kernel
        )
    return lambda q, k, v: smyrf_attention(q, k, v, config, scale=1.0, seed=0, kernel=kernel)


def run_case(case: dict) -> dict:
    """One (N, batch, method): memory first (fresh process), then times, then errors."""
    device, dtype = torch.device(case["device"]), getattr(torch, case["dtype"])
    n, batch = case["n"], case["batch"]
    fn = attention_fn(METHODS[case["method"]], case["kernel"])
    g = torch.Generator().manual_seed(0)
    q, k, v = (t.to(device, dtype).requires_grad_() for t in gaussian_qkv(batch, n, n // 4, D_QK, D_V, g))

    def forward():
        with torch.no_grad():
            return fn(q, k, v)

    def forward_backward():
        fn(q, k, v).sum().backward()

    peak = peak_extra_bytes(forward_backward, device)
    if device.type == "cuda":  # 65k tokens in fp32: dense SDPA takes ~0.9 s a call at batch 32
        reps = 10 if n <= 16384 else 5
    else:
        reps = 5 if n <= 4096 else 3 if n <= 16384 else 1
    result = {
        **case,
        "peak_mb": peak / 2**20,
        "fwd_ms": 1e3 * median_seconds(forward, device, reps),
        "fwd_bwd_ms": 1e3 * median_seconds(forward_backward, device, reps),
    }
    if case.get("errors"):
        result.update(errors(fn, n, device, dtype))
    return result


def run_cuda_case(case: dict) -> dict:
    """run_case in this process; a failure becomes the row's error, so the other rows still count."""
    try:
        return run_case(case)
    except Exception as error:  # noqa: BLE001
        return {**case, "error": f"{type(error).__name__}: {error}"[:200]}
    finally:
        torch.cuda.empty_cache()


def errors(fn, n: int, device: torch.device, dtype: torch.dtype) -> dict:
    out = {}
    side = int(round(n**0.5))
    for family in ("gaussian", "smooth"):
        errs = []
        for seed in range(2):
            g = torch.Generator().manual_seed(100 + seed)
            if family == "gaussian":
                q, k, v = gaussian_qkv(1, n, n // 4, D_QK, D_V, g)
            else:
                q, k, v = smooth_feature_qkv(1, side, D_QK, D_V, g)
            q, k, v = (t.to(device) for t in (q, k, v))
            with torch.no_grad():
                exact = dense_attention(q, k, v, scale=1.0)
                errs.append(relative_error(fn(q.to(dtype), k.to(dtype), v.to(dtype)), exact))
        out[f"err_{family}"] = sum(errs) / len(errs)
    return out


def cases(device: torch.device, quick: bool, methods: list[str], dtypes: list[str], kernel: str,
          sizes: list[int] = None, batches: list[int] = None):
    sizes = sizes or ([1024, 4096] if quick else [1024, 4096, 16384, 65536])
    batches = batches or [1, 4]
    for n, dtype, batch, name in ((n, d, b, m) for n in sizes for d in dtypes for b in batches for m in methods):
        method = METHODS[name]
        if method.get("q_cluster_size", 0) <= n:
            case = {"device": device.type, "dtype": dtype, "kernel": kernel, "n": n, "batch": batch, "method": name,
                    "errors": batch == batches[0]}
            naive_bytes = 3 * 4 * batch * n * (n // 4)
            if method["kind"] == "naive" and naive_bytes > NAIVE_LIMIT_BYTES:
                yield {**case, "skipped": f"scores need ~{naive_bytes / 2**30:.0f} GiB"}
            else:
                yield case


def plan_cases(args) -> list[dict]:
    """The rows `main` runs for these arguments, in order (what gpu_plan.py reads without running them)."""
    return list(cases(torch.device(args.device), args.quick, args.methods, args.dtype, args.kernel, args.sizes, args.batches))


def add_ratios(rows: list[dict]) -> None:
    """fwd+bwd time and peak memory relative to dense SDPA at the same N, batch and dtype."""
    dense = {(r["n"], r["batch"], r["dtype"]): r for r in rows if r["method"] == "dense SDPA" and "fwd_bwd_ms" in r}
    for r in rows:
        base = dense.get((r["n"], r["batch"], r["dtype"]))
        if base and "fwd_bwd_ms" in r:
            r["time_vs_sdpa"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
            r["mem_vs_sdpa"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] else None


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="only N <= 4096")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                        help="one or more dtypes, one table")
    parser.add_argument("--kernel", default="auto", choices=["auto", "flash", "triton", "chunked"],
                        help="SMYRF's cluster kernel (auto: flash on the CPU, triton on CUDA)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"rows to run (default all): {', '.join(METHODS)}")
    parser.add_argument("--sizes", nargs="+", type=int, help="token counts N (default 1024 4096 16384 65536)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default 1 4)")
    add_cuda_options(parser)
    parser.add_argument("--name", help="results file stem (default: attention, plus any non-default dtype and kernel)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser


def main():
    args = parse_device_args(build_parser())
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    device = torch.device(args.device)
    rows = []
    for case in plan_cases(args):
        if "skipped" not in case:
            case = run_case_in_subprocess(__file__, case) if device.type == "cpu" else run_cuda_case(case)
        rows.append(case)
        print(json.dumps(case), flush=True)
    add_ratios(rows)
    columns = [
        ("n", "N"), ("batch", "batch"), ("dtype", "dtype"), ("method", "method"), ("fwd_ms", "fwd ms"),
        ("fwd_bwd_ms", "fwd+bwd ms"), ("time_vs_sdpa", "time vs dense SDPA"), ("mem_vs_sdpa", "mem vs dense SDPA"),
        ("peak_mb", "peak MB (fwd+bwd)"), ("err_gaussian", "err gaussian"), ("err_smooth", "err structured"),
        ("skipped", "note"), ("error", "error"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    # Other dtypes and kernels get their own files: the default table stays the float32, auto one.
    name = args.name or "attention" + "".join(
        f"_{x}" for x, default in (("_".join(args.dtype), "float32"), (args.kernel, "auto")) if x != default
    )
    meta = {"d_qk": D_QK, "d_v": D_V, "quick": args.quick, "dtype": args.dtype, "kernel": args.kernel}
    stem = write_results(name, device, rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")
    sys.exit(1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    main()
