"""Where SMYRF's time goes: torch.profiler over one attention forward+backward, ops grouped.

    python -m benchmarks.profile_smyrf                 # N = 16384 (128x128), 4x2048, batch 4
    python -m benchmarks.profile_smyrf --n 65536 --q-cluster 4096

Groups (by aten op): hashing (projections, XBOX+ norms), sorting (argsort), gathers (gather /
scatter / index into cluster order and back), cluster attention (the fused flash kernels),
combination (logsumexp weights, exp, sums) and the rest. Self CPU time, so nothing is counted twice.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import benchmark_parser, markdown_table, parse_device_args, write_results  # noqa: E402

from biggan_smyrf.attention import AttentionConfig, attend  # noqa: E402
from biggan_smyrf.attention.synthetic import smooth_feature_qkv  # noqa: E402

GROUPS = [
    ("cluster attention", ("flash_attention", "scaled_dot_product")),
    ("sorting", ("sort", "argsort", "topk", "randperm")),
    ("gathers", ("gather", "scatter", "index", "take")),
    ("hashing", ("mm", "matmul", "bmm", "linalg_vector_norm", "norm", "sqrt", "clamp", "randn", "einsum")),
    ("combination", ("logsumexp", "softmax", "exp", "sum", "mul", "div", "sub", "add", "log", "max", "amax")),
]


def group_of(name: str) -> str:
    op = name.removeprefix("aten::")
    for group, keys in GROUPS:
        if any(op == k or op.startswith(k + "_") or op.endswith("_" + k) or k in op for k in keys):
            return group
    return "other (copies, allocation, reshapes)"


def build_parser():
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--q-cluster", type=int, default=2048)
    parser.add_argument("--hashes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    return parser


def main():
    args = parse_device_args(build_parser())
    side = int(args.n**0.5)
    q, k, v = smooth_feature_qkv(args.batch, side, 12, 48, torch.Generator().manual_seed(0))
    rows = []
    for label, cfg in (("paper", AttentionConfig.paper(n_hashes=args.hashes, q_cluster_size=args.q_cluster)),
                       ("ours", AttentionConfig(kind="smyrf", n_hashes=args.hashes, q_cluster_size=args.q_cluster))):
        qg = q.clone().requires_grad_()

        def step():
            attend(qg, k, v, cfg, scale=1.0, generator=torch.Generator().manual_seed(0)).sum().backward()

        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        totals = defaultdict(float)
        for event in prof.key_averages():
            totals[group_of(event.key)] += event.self_cpu_time_total / 1e3
        whole = sum(totals.values())
        for group, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
            rows.append({"variant": label, "group": group, "ms": ms, "share": 100 * ms / whole})
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    table = markdown_table(rows, [("variant", "SMYRF"), ("group", "part"), ("ms", "self CPU ms"), ("share", "%")])
    print(table)
    meta = {"n": args.n, "q_cluster": args.q_cluster, "hashes": args.hashes, "batch": args.batch}
    stem = write_results("profile_smyrf", torch.device("cpu"), rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
