"""SMYRF approximation quality at equal cost: the paper's recipe, random clusters, our variants.

    python -m benchmarks.accuracy                                   # synthetic families
    python -m benchmarks.accuracy --threads 1 --ckpt checkpoints/<run>/last.ckpt ...   # + real activations
                                                                    # of trained Gs (the committed table)

Error = |out - dense| / |dense| (Frobenius), mean over seeds. Cost columns make "equal compute"
visible: `products` counts query-key dot products per batch element (hashed rounds incl. summary
keys + hub round + hub estimation), `fwd+bwd ms` is a median wall time at batch 1 and `peak MB`
the extra memory of one forward+backward measured in a fresh process (CPU) or with the CUDA allocator.
Shapes as BigGAN ch=96: d_qk = 12, d_v = 48, M = N/4, scale 1. Families: "clustered" and "smooth"
(peaky, logit std 9, like a trained G), "spread" (smooth with logit std 1.5 and a per-channel
value mean, like a young G), and q/k/v captured from the largest attention block of each --ckpt.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import (  # noqa: E402
    benchmark_parser, markdown_table, median_seconds, parse_device_args, peak_extra_bytes, run_case_in_subprocess, write_results)

from biggan_smyrf.attention import AttentionConfig, attend, dense_attention  # noqa: E402
from biggan_smyrf.attention.synthetic import clustered_qkv, relative_error, smooth_feature_qkv  # noqa: E402

D_QK, D_V = 12, 48
SEEDS = 3
NONE = dict(n_hub_keys=0, n_summaries=0, dedup="none")
VARIANTS = {
    "random clusters": dict(NONE, hashing="random"),
    "paper (xbox)": dict(NONE, hashing="xbox"),
    "kd": dict(NONE, hashing="kd"),
    "kd + hubs + dedup": dict(n_summaries=0),
    "kd + summaries": dict(n_hub_keys=0),
    "xbox + hubs + summaries + dedup": dict(hashing="xbox"),
    "ours: kd + hubs + summaries + dedup": dict(),
}
SETTINGS = [(4, 256), (4, 2048)]


def config(variant: str, n_hashes: int, q_cluster_size: int) -> AttentionConfig:
    return AttentionConfig(kind="smyrf", n_hashes=n_hashes, q_cluster_size=q_cluster_size, **VARIANTS[variant])


def products(cfg: AttentionConfig, n: int, m: int) -> int:
    """Query-key dot products per batch element."""
    sizes = cfg.resolve(n, m)
    hubs = sizes.n_hub_keys
    return cfg.n_hashes * n * sizes.keys_per_cluster + n * hubs + (min(cfg.hub_sample, n) * m if hubs else 0)


def synthetic(family: str, n: int, seed: int):
    g = torch.Generator().manual_seed(1000 + seed)
    if family == "clustered":
        return clustered_qkv(1, n, n // 4, D_QK, D_V, g)
    if family == "spread":
        return smooth_feature_qkv(1, int(round(n**0.5)), D_QK, D_V, g, logit_std=1.5, value_mean=1.0)
    return smooth_feature_qkv(1, int(round(n**0.5)), D_QK, D_V, g)


def errors(cfg: AttentionConfig, inputs: list) -> float:
    errs = []
    for seed, (q, k, v) in enumerate(inputs):
        with torch.no_grad():
            out = attend(q, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(seed))
        errs.append(relative_error(out, dense_attention(q, k, v, scale=1.0)))
    return sum(errs) / len(errs)


def cost_case(case: dict) -> dict:
    """fwd+bwd time and peak memory of one variant, for a fresh process."""
    device = torch.device(case["device"])
    torch.set_num_threads(case["threads"])
    n = case["n"]
    cfg = config(case["variant"], case["n_hashes"], case["q_cluster_size"])
    q, k, v = (t.to(device).requires_grad_() for t in synthetic("smooth", n, 0))

    def step():
        attend(q, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(0)).sum().backward()

    peak = peak_extra_bytes(step, device)
    return {"peak_mb": peak / 2**20, "fwd_bwd_ms": 1e3 * median_seconds(step, device, reps=3)}


def captured_activations(ckpt: str, n_batches: int = SEEDS) -> list:
    """q, k, v entering G_ema's largest attention block under dense attention, one image per seed."""
    from biggan_smyrf.inference import latents, load_generator
    from biggan_smyrf.models import capture_qkv

    G = load_generator(ckpt, attention="dense")
    with torch.no_grad(), capture_qkv(G) as captured:
        for seed in range(n_batches):
            G(latents(1, G.config.dim_z, seed))
    return max(captured.values(), key=lambda qkvs: qkvs[0][0].shape[1])


def build_parser():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--ckpt", nargs="*", default=[], help="trained checkpoints, for real activations")
    parser.add_argument("--no-cost", action="store_true", help="skip the time/memory columns")
    parser.add_argument("--synthetic", nargs="*", default=["clustered", "smooth", "spread"],
                        help="synthetic input families (none with --synthetic and no names)")
    parser.add_argument("--name", default="accuracy", help="results file stem: results/<name>-<device>.{json,md}")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser


def main():
    args = parse_device_args(build_parser())
    if args.case:
        print(json.dumps(cost_case(json.loads(args.case))))
        return

    device = torch.device(args.device)
    rows = []
    families = [(f, n) for n in args.sizes for f in args.synthetic]
    real = {f"real: {Path(ckpt).parent.name}/{Path(ckpt).name}": captured_activations(ckpt) for ckpt in args.ckpt}
    families += [(name, qkvs[0][0].shape[1]) for name, qkvs in real.items()]
    for family, n in families:
        inputs = real[family] if family in real else [synthetic(family, n, s) for s in range(SEEDS)]
        m = inputs[0][1].shape[1]
        q, k, _ = inputs[0]
        logit_std = (q[:, :256] @ k.transpose(1, 2)).std().item()
        for n_hashes, q_cluster in SETTINGS:
            if q_cluster > n // 2:
                continue
            for variant in VARIANTS:
                cfg = config(variant, n_hashes, q_cluster)
                row = {"family": family, "n": n, "logit_std": logit_std, "setting": f"{n_hashes}x{q_cluster}",
                       "variant": variant, "error": errors(cfg, [tuple(t.to(device) for t in x) for x in inputs]),
                       "products_m": products(cfg, n, m) / 1e6}
                if not args.no_cost and family == "smooth":
                    case = {"device": device.type, "n": n, "n_hashes": n_hashes, "q_cluster_size": q_cluster,
                            "variant": variant, "threads": args.threads}
                    row.update(run_case_in_subprocess(__file__, case) if device.type == "cpu" else cost_case(case))
                rows.append(row)
                print(json.dumps(row), flush=True)
    columns = [("family", "inputs"), ("n", "N"), ("logit_std", "logit std"), ("setting", "hashes x q-cluster"),
               ("variant", "variant"), ("error", "rel. error"), ("products_m", "q·k products (M)"), ("fwd_bwd_ms", "fwd+bwd ms"),
               ("peak_mb", "peak MB")]
    table = markdown_table(rows, columns)
    print(table)
    stem = write_results(args.name, device, rows, table, {"seeds": SEEDS, "ckpt": args.ckpt})
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
