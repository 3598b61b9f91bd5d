"""Analytic cost of one attention forward+backward on an H100: dense SDPA vs SMYRF, from counts.

    python -m benchmarks.cost_model                       # 16,384 and 65,536 tokens, batch 32, bf16 and fp32
    python -m benchmarks.cost_model --launches "ours 4x4096@65536=300"   # a launch count measured elsewhere

Shapes as the attention table's (benchmarks/attention.py): N queries, M = N/4 pooled keys, d_qk 12,
d_v 48, scale 1. Counted per call, at the widths the kernels compute with:
- dense SDPA (flash, causal=False): `dense_attention` pads q and k to d_v (48) for SDPA, whose flash
  kernels then work at 48. Scores B*N*M; one exponential per score forward and one backward
  (FlashAttention-2 and cuDNN recompute P once); 2 dots forward (S, P V), 5 backward (S, dP, dV,
  dQ, dK).
- SMYRF through the permuted Triton route, sizes from its AttentionConfig exactly as
  `smyrf_attention` resolves them: H rounds of clusters of C_q queries and C_k keys plus S summary
  keys each, n_hub hub keys every query attends once, and the hub estimate's hub_sample queries
  against every key (one exponential per score, forward only). The kernels pad d_qk to 16 and d_v
  to 64 in registers. The default backward is one pass (FlashAttention-2's: dK, dV and dQ from one
  recomputation of P, dQ added with atomics): one exponential per score backward, two in all;
  deterministic mode's two-kernel backward recomputes P in both kernels (dK/dV and dQ): three in
  all. Both are counted.
- Bytes: compulsory traffic of the attention kernels, every tensor read or written once per kernel
  pass (keys re-read by a cluster's query blocks are taken to hit L2), in the storage dtypes (inputs
  in the call's dtype, SMYRF's accumulators, logsumexps and bias in float32, its orders int64).
  The host-side passes around the kernels (hashing, sorts, summaries) are not counted.
- Launches per forward+backward: counted from the code path at batch 32 (host_cost.py: the call
  on meta tensors, its Triton launches counted, not run); `--launches` gives other counts,
  `--recorded-launches` takes LAUNCHES. The target of a fused call is <= 48.

Times from H100 SXM figures (H100 below): the exponential (MUFU) bound exps / (ex2 rate), the
tensor-core bound, the HBM bound, and the launch (host) bound launches x per-launch host cost. A
kernel is as slow as its binding resource, so device time = max(exp, tensor, HBM); host and device
overlap, so a call takes max(device, host). Dense SDPA's measured time (`DENSE_SDPA_MS`) over its
own device bound gives the fraction of peak a tuned flash kernel reaches; SMYRF's kernels are
assumed to reach the same fraction. Predicted ratio = SMYRF's time / dense SDPA's measured time.
Where benchmarks/results/attention-cuda.json exists, the measured ratio is printed beside it, with
the goals of gpu_goals.py (ATTENTION_TIME_GOALS).

Writes benchmarks/results/cost_model-cpu.{json,md}. Cost: arithmetic, and about a second of host
work per launch count.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from benchmarks.common import RESULTS, markdown_table, write_results  # noqa: E402
from benchmarks.checks.gpu_goals import ATTENTION_TIME_GOALS, BATCH, attention_row, rows_of  # noqa: E402

from benchmarks.host_cost import count_call  # noqa: E402

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402

D_QK, D_V = 12, 48  # BigGAN ch=96, as attention.py's table
SMYRF_D_QK, SMYRF_D_V = 16, 64  # the Triton kernels' widths in registers (next power of two, at least 16)
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
TARGET_LAUNCHES = 48
# Kernel launches of one SMYRF forward+backward on CUDA, bf16, batch 32 (kernel-launching aten ops
# + Triton launches), as host_cost.py counted them when this table was written; the model
# recounts them from the code as it is (these are its fallback, and gpu_plan.py's estimate).
LAUNCHES = {("ours 4x2048", 16384): 177, ("ours 4x2048", 65536): 191, ("ours 4x4096", 16384): 170,
            ("ours 4x4096", 65536): 184, ("smyrf 4x2048", 16384): 44, ("smyrf 4x2048", 65536): 44}
# Dense SDPA (not countable without a GPU: on fake tensors SDPA takes its math path): the pads of
# q and k and SDPA's forward; SDPA's backward (the dO.O row sums, the kernel, dQ's conversion),
# the pads' backward and the gradients' accumulation.
DENSE_LAUNCHES = 8
# Dense SDPA forward+backward on an H100, batch 32, ms (the H100 attention table: cuDNN flash in bf16,
# CUTLASS memory-efficient in fp32): what the kernels reach of their bound.
DENSE_SDPA_MS = {(16384, "bfloat16"): 4.50, (16384, "float32"): 55.7,
                 (65536, "bfloat16"): 62.9, (65536, "float32"): 884.0}
# The rows: the attention table's methods (attention.py's names) at each size.
METHODS = {
    "ours 4x2048": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048),
    "ours 4x4096": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=4096),
    "smyrf 4x2048": AttentionConfig.paper(n_hashes=4, q_cluster_size=2048),
}


@dataclass(frozen=True)
class Device:
    """Throughput figures (H100 SXM5 defaults, from NVIDIA's datasheet unless noted)."""

    exp_per_s: float = 3.9e12  # MUFU ex2: 16 / clock / SM x 132 SMs x 1.83 GHz (FlashAttention-3's 3.9 T/s)
    tensor_flops: tuple = (("bfloat16", 989e12), ("float16", 989e12), ("float32", 494e12))  # dense; fp32 = TF32
    hbm_bytes_per_s: float = 3.35e12
    launch_s: float = 12e-6  # host time per kernel-launching op with its non-launching neighbours:
    # 8-12 ms for 273 launches on this 2-core CPU, about half of that on a server core

    def flops(self, dtype: str) -> float:
        return dict(self.tensor_flops)[dtype]


H100 = Device()


@dataclass
class Counts:
    """One forward+backward: scores, exponentials, tensor-core flops, bytes, launches."""

    scores: float  # query-key scores of one forward
    exps_forward: float
    exps_backward: float
    flops: float
    bytes: float
    launches: Optional[int]

    @property
    def exps(self) -> float:
        return self.exps_forward + self.exps_backward


def dense_counts(n: int, batch: int, dtype: str) -> Counts:
    """Flash SDPA on q, k padded to d_v: one exponential per score each way, 2 + 5 dots of width d."""
    m, d, e = n // 4, max(D_QK, D_V), BYTES[dtype]
    scores = batch * n * m
    pads = 2 * batch * (n + m) * (D_QK + d) * e  # read q, k at 12, write them at 48
    forward = batch * (n * d + 2 * m * d + n * d) * e + 4 * batch * n  # q, k, v in; out, lse
    backward = batch * (2 * (n * d + 2 * m * d) + 2 * n * d) * e + 8 * batch * n * (1 + d)  # + dq's fp32 buffer
    return Counts(scores, scores, scores, 2 * scores * (2 * d + 5 * d), pads + forward + backward, DENSE_LAUNCHES)


@dataclass(frozen=True)
class SmyrfSizes:
    """A config's sizes at n queries and n / 4 keys, resolved as smyrf_attention resolves them."""

    rounds: int
    clusters: int
    keys_per_cluster: int  # C_k + summaries
    summaries: int
    hub: int
    hub_sample: int

    @classmethod
    def of(cls, config: AttentionConfig, n: int) -> "SmyrfSizes":
        m = n // 4
        sizes = config.resolve(n, m)
        return cls(config.n_hashes, sizes.n_clusters, sizes.keys_per_cluster, sizes.n_summaries, sizes.n_hub_keys,
                   min(config.hub_sample, n) if sizes.n_hub_keys else 0)


def smyrf_counts(config: AttentionConfig, n: int, batch: int, dtype: str, backward_passes: int = 2,
                 launches: Optional[int] = None) -> Counts:
    """The permuted route's counts; backward_passes = 1 for the default one-pass backward, 2 for
    deterministic mode's two kernels (P recomputed by both)."""
    s = SmyrfSizes.of(config, n)
    m, e, dq, dv = n // 4, BYTES[dtype], SMYRF_D_QK, SMYRF_D_V
    hashed, hub = batch * s.rounds * n * s.keys_per_cluster, batch * n * s.hub
    estimate = batch * s.hub_sample * m
    attended = hashed + hub
    # Dots per score: forward S (dq), P V (dv); backward S and dP in each pass, dV, dK, dQ once.
    backward_width = backward_passes * (dq + dv) + dv + dq + dq
    flops = 2 * attended * ((dq + dv) + backward_width) + 2 * estimate * D_QK
    keys = m + s.clusters * s.summaries  # a round's keys with its summaries
    indices = 8 * (n + s.clusters * s.keys_per_cluster)
    reads = e * (n * D_QK + keys * (D_QK + D_V)) + 4 * keys + indices  # q, the round's k and v, bias, orders
    per_round_forward = reads + 4 * n + 2 * 4 * n * (D_V + 2)  # lse; out, running max and sum read+written
    per_round_backward = (backward_passes * (reads + e * n * D_V + 8 * n)  # + g, norm, delta
                          + 2 * 4 * keys * (D_QK + D_V) + 2 * 4 * n * D_QK)  # dk, dv, dq accumulators
    hub_bytes = (e * n * (D_QK + D_V) + 4 * n) + (e * n * (2 * D_QK + 2 * D_V) + 8 * n) if s.hub else 0
    nbytes = batch * (s.rounds * (per_round_forward + per_round_backward) + hub_bytes) + 4 * estimate
    return Counts(attended + estimate, attended + estimate, backward_passes * attended, flops, nbytes, launches)


@dataclass
class Times:
    exp_s: float
    tensor_s: float
    hbm_s: float
    launch_s: Optional[float]

    @property
    def device_s(self) -> float:
        return max(self.exp_s, self.tensor_s, self.hbm_s)


def times(counts: Counts, dtype: str, device: Device = H100) -> Times:
    launch = None if counts.launches is None else counts.launches * device.launch_s
    return Times(counts.exps / device.exp_per_s, counts.flops / device.flops(dtype),
                 counts.bytes / device.hbm_bytes_per_s, launch)


def predicted_ratio(smyrf: Counts, dense: Counts, dtype: str, dense_measured_s: Optional[float],
                    device: Device = H100) -> Optional[float]:
    """SMYRF's predicted time / dense SDPA's: device times scaled by the fraction of its bound that
    dense reaches (dense_measured_s; None = both at their bound), then the slower of device and host."""
    if smyrf.launches is None:
        return None
    t_smyrf, t_dense = times(smyrf, dtype, device), times(dense, dtype, device)
    dense_s = max(t_dense.device_s, t_dense.launch_s) if dense_measured_s is None else dense_measured_s
    efficiency = min(1.0, t_dense.device_s / dense_s)
    return max(t_smyrf.device_s / efficiency, t_smyrf.launch_s) / dense_s


def launches_today(method: str, n: int, dtype: str, given: dict, count: bool = True) -> tuple[Optional[int], str]:
    """(launches per forward+backward, where the number comes from): --launches, else counted from
    the code now (host_cost.py), else the recorded LAUNCHES."""
    if (method, n) in given:
        return given[(method, n)], "given"
    if count:
        try:
            config = METHODS[method].with_(kernel="triton")  # the CUDA route, which meta tensors run host-side
            counted = count_call(lambda q, k, v: smyrf_attention(q, k, v, config, scale=1.0, seed=0),
                                 n, BATCH, dtype=getattr(torch, dtype))
            return counted["launches"], "counted"
        except Exception as error:  # noqa: BLE001 -- a route fake tensors cannot run: say so, use the record
            print(f"launches of {method} at {n} not countable here ({type(error).__name__}: {error}); recorded count used")
    if (method, n) in LAUNCHES:
        return LAUNCHES[(method, n)], "recorded"
    return None, "not counted"


def predicted_vs_dense(config: AttentionConfig, n: int, dtype: str, batch: int = BATCH) -> float:
    """The predicted forward+backward time / dense SDPA's with the default one-pass backward
    (gpu_plan.py's estimate of a row);
    a call whose launches are uncounted is charged the default's."""
    method = next((name for name, c in METHODS.items() if c == config), "ours 4x2048")
    launches = LAUNCHES.get((method, n), max(LAUNCHES.values()))
    dense_ms = DENSE_SDPA_MS.get((n, dtype))
    dense_s = None if dense_ms is None else dense_ms / 1e3 * batch / BATCH
    return predicted_ratio(smyrf_counts(config, n, batch, dtype, 1, launches), dense_counts(n, batch, dtype), dtype,
                           dense_s)


def model_rows(sizes: list[int], dtypes: list[str], batch: int, extra_launches: dict, results: Path,
               count: bool = True) -> list[dict]:
    measured = rows_of(results, "attention")
    rows = []
    for n in sizes:
        for dtype in dtypes:
            dense = dense_counts(n, batch, dtype)
            dense_ms = DENSE_SDPA_MS.get((n, dtype))
            dense_s = None if dense_ms is None or batch != BATCH else dense_ms / 1e3
            t_dense = times(dense, dtype)
            rows.append({"n": n, "dtype": dtype, "method": "dense SDPA", "scores_per_query": dense.scores / (batch * n),
                         "exps": dense.exps, "flops": dense.flops, "bytes": dense.bytes, "launches": dense.launches,
                         "exp_ms": 1e3 * t_dense.exp_s, "tensor_ms": 1e3 * t_dense.tensor_s, "hbm_ms": 1e3 * t_dense.hbm_s,
                         "launch_ms": 1e3 * t_dense.launch_s, "dense_measured_ms": dense_ms})
            for method, config in METHODS.items():
                today, source = launches_today(method, n, dtype, extra_launches, count)
                rows.append({**smyrf_row(method, config, n, batch, dtype, today, dense, dense_s, measured),
                             "launches_from": source})
    return rows


def smyrf_row(method, config, n, batch, dtype, today, dense, dense_s, measured) -> dict:
    three, two = (smyrf_counts(config, n, batch, dtype, passes, today) for passes in (2, 1))
    t3, t2 = times(three, dtype), times(two, dtype)
    target = lambda counts: Counts(**{**asdict(counts), "launches": min(TARGET_LAUNCHES, today or TARGET_LAUNCHES)})  # noqa: E731
    goal = next((limit for (d, size), (m, limit) in ATTENTION_TIME_GOALS.items() if (d, size, m) == (dtype, n, method)), None)
    ours, base = attention_row(measured, n, dtype, method), attention_row(measured, n, dtype, "dense SDPA")
    return {
        "n": n, "dtype": dtype, "method": method, "scores_per_query": three.scores / (batch * n),
        "exps": three.exps, "exps_one_pass": two.exps, "flops": three.flops, "bytes": three.bytes, "launches": today,
        "exp_ms": 1e3 * t3.exp_s, "exp_one_pass_ms": 1e3 * t2.exp_s, "tensor_ms": 1e3 * t3.tensor_s,
        "hbm_ms": 1e3 * t3.hbm_s, "launch_ms": None if t3.launch_s is None else 1e3 * t3.launch_s,
        "exp_ratio": three.exps / dense.exps, "exp_ratio_one_pass": two.exps / dense.exps,
        "predicted": predicted_ratio(three, dense, dtype, dense_s),
        "predicted_48": predicted_ratio(target(three), dense, dtype, dense_s),
        "predicted_one_pass": predicted_ratio(two, dense, dtype, dense_s),
        "predicted_one_pass_48": predicted_ratio(target(two), dense, dtype, dense_s),
        "goal": goal,
        "measured": ours["fwd_bwd_ms"] / base["fwd_bwd_ms"] if ours and base else None,
    }


def parse_launches(items: list[str]) -> dict:
    """["ours 4x4096@65536=300", ...] -> {("ours 4x4096", 65536): 300}."""
    out = {}
    for item in items or []:
        try:
            key, count = item.rsplit("=", 1)
            method, n = key.rsplit("@", 1)
            out[(method, int(n))] = int(count)
        except ValueError:
            raise SystemExit(f"error: --launches takes METHOD@TOKENS=COUNT, e.g. 'ours 4x2048@16384=273'; got {item!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[16384, 65536], help="tokens N (keys N/4)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(BYTES))
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--launches", nargs="+", metavar="METHOD@N=COUNT",
                        help="launch counts per forward+backward to use instead of LAUNCHES")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of attention-cuda.json, if measured")
    parser.add_argument("--recorded-launches", action="store_true",
                        help="use the recorded launch counts instead of counting them from the code")
    return parser


COLUMNS = [
    ("n", "N"), ("dtype", "dtype"), ("method", "method"), ("scores_per_query", "scores/query"),
    ("exps", "exps (2-kernel bwd)"), ("exps_one_pass", "exps (1-pass bwd)"), ("bytes", "bytes"), ("launches", "launches"),
    ("launches_from", "launches from"), ("exp_ms", "exp bound ms"), ("exp_one_pass_ms", "exp bound ms (1-pass)"), ("tensor_ms", "tensor-core ms"),
    ("hbm_ms", "HBM ms"), ("launch_ms", "launch bound ms"), ("exp_ratio", "exps vs dense (2-kernel)"),
    ("exp_ratio_one_pass", "exps vs dense (1-pass)"), ("predicted", "pred., 2-kernel bwd"),
    ("predicted_48", "pred., 2-kernel + <=48"), ("predicted_one_pass", "pred., 1-pass bwd (default)"),
    ("predicted_one_pass_48", "pred., 1-pass + <=48"), ("goal", "goal"), ("measured", "measured"),
    ("dense_measured_ms", "dense measured ms (H100)"),
]


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    rows = model_rows(args.sizes, args.dtypes, args.batch, parse_launches(args.launches), args.results,
                      count=not args.recorded_launches)
    table = markdown_table(rows, COLUMNS)
    print(table)
    meta = {"batch": args.batch, "device_model": asdict(H100), "target_launches": TARGET_LAUNCHES,
            "dense_sdpa_ms": {f"{n} {d}": ms for (n, d), ms in DENSE_SDPA_MS.items()}}
    stem = write_results("cost_model", torch.device("cpu"), rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
