"""Plot attention time and memory against attention resolution, dense vs SMYRF.

    python -m benchmarks.plot [--device cpu]   # reads results/attention-<device>.json, writes .png
"""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import RESULTS, benchmark_parser  # noqa: E402

METHODS = ["dense naive", "dense SDPA", "smyrf 4x2048", "ours 4x2048", "smyrf 4x256"]


def build_parser():
    parser = benchmark_parser(__doc__, threads=False)
    parser.add_argument("--batch", type=int, default=1)
    return parser


def main():
    args = build_parser().parse_args()  # reads JSON only: plots a GPU's table on any machine
    data = json.loads((RESULTS / f"attention-{args.device}.json").read_text())
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        rows = sorted((r for r in data["rows"] if r["method"] == method and r["batch"] == args.batch
                       and r.get("fwd_bwd_ms") is not None), key=lambda r: r["n"])
        if not rows:
            continue
        side = [int(r["n"] ** 0.5) for r in rows]
        ax_time.plot(side, [r["fwd_bwd_ms"] for r in rows], marker="o", label=method)
        ax_mem.plot(side, [r["peak_mb"] for r in rows], marker="o", label=method)
    for ax, label in ((ax_time, "forward+backward (ms)"), (ax_mem, "peak extra memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("attention resolution (queries = side², keys = side²/4)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend()
    fig.suptitle(f"BigGAN attention (d_qk=12, d_v=48), batch {args.batch}: {data['meta']['device']}")
    fig.tight_layout()
    out = RESULTS / f"attention-{args.device}.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
