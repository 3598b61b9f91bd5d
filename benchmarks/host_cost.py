"""Host cost of one SMYRF call on the CUDA route: kernel launches per forward + backward, and the
host time that issues them, measured on the CPU with the Triton kernels stubbed out.

    python -m benchmarks.host_cost                  # 16,384 and 65,536 tokens, batch 32, default and paper recipe
    python -m benchmarks.host_cost --sizes 16384 --recipes paper

On a GPU every kernel launch costs the host several microseconds whatever the batch, so a call of a
few hundred launches is bound by the host at BigGAN's shapes. Per case (BigGAN's shapes: d_qk 12,
d_v 48, keys 2x2-pooled, bf16, the cluster sizes of the configs: 4 x 2048 queries at 16k tokens,
4 x 4096 at 65k) this counts, at the dispatcher (a TorchDispatchMode):
  launches    every aten op on device tensors that runs a kernel, plus every Triton launch. Views and
              other metadata-only ops (view, expand, transpose, ..., `METADATA_OPS`) and allocations
              without a fill (empty*) launch nothing and are left out; so are ops whose tensors are all
              on the host (they cost host time, counted in `host ops`). Device tensors are 'meta'
              tensors here: shapes, loops and dtypes as on the GPU, no data. One op counts one
              launch, though a few launch several kernels on a GPU (sort, topk).
  h2d copies  copies from a host tensor to a device tensor (each a synchronising or pinned copy,
              and what stops a CUDA graph from replaying the call)
  host syncs  ops that make the host wait for the device (.item(), .cpu(), nonzero, ... of a device
              tensor)
Host time is the wall time of one forward + backward with the Triton launches stubbed, on host
(CPU) tensors small enough that the aten kernels' own work is negligible: batch 1, 64 queries per
cluster, as many clusters as the goal shape (so the hashing, which loops over the prime factors of
the number of clusters, issues the same ops). The 10th percentile of --reps calls is the estimate:
on a machine shared with other work the slow calls are the ones a time slice was taken from (the
median is printed too). Where the op sequence still depends on the shape (a loop over chunks of the
goal shape), `host ms (goal)` scales the time by the ratio of the dispatched ops at the two shapes;
where it does not, the two shapes dispatch the same ops and the columns agree. Triton's own launch
path (binding a launch's arguments, its specialisation key, the kernel cache: Python, some 10-30 µs
a launch) is timed apart, in a process without the interpreter (`launch_path_seconds`: the median
of paired differences), and added to the p10:
`host ms in all` is what the goal is held against. Only the driver's launch call is left out.

What makes the call capturable: no host->device copy (the hashing draws on the device), no sync,
and the same ops whatever the batch and token counts (tests/test_host_cost.py), so one call can be
captured in a CUDA graph (torch.cuda.graph) and replayed, given a CUDA generator registered with the
graph (CUDAGraph.register_generator_state). A CPU generator -- the model blocks', which checkpoints
save -- seeds a fresh device generator per call with one host draw, which a replay would not repeat.
torch.compile(fullgraph=True) does not capture the call: Dynamo does not trace ops that take a
torch.Generator.

Writes benchmarks/results/host_cost-cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import markdown_table, write_results  # noqa: E402

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402

BATCH = 32
# Queries per cluster at each goal size (configs/celebahq128_smyrf.yaml, configs/celebahq256_smyrf.yaml).
Q_CLUSTER = {16384: 2048, 65536: 4096}
RECIPES = ("default", "paper")
GOALS = {"launches": 48, "host_ms": 2.0, "h2d_copies": 0}
METADATA_OPS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "reshape", "unsqueeze", "squeeze",
                "as_strided", "detach", "alias", "select", "slice", "split", "split_with_sizes", "unbind",
                "lift_fresh", "lift_fresh_copy", "empty", "empty_like", "empty_strided", "new_empty",
                "new_empty_strided", "_reshape_alias", "view_as", "expand_as", "flatten", "unflatten", "movedim"}
SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"}


class LaunchCounter(TorchDispatchMode):
    """Ops at the dispatcher, sorted into device launches, host ops, host->device copies and syncs."""

    def __init__(self):
        super().__init__()
        self.launches: Counter = Counter()
        self.host_ops: Counter = Counter()
        self.h2d: Counter = Counter()
        self.syncs: Counter = Counter()
        self.dispatched = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.dispatched += 1
        name = func.overloadpacket.__name__
        if name in METADATA_OPS:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        on_device = [t.device.type != "cpu" for t in inputs + outputs]
        device_input = any(t.device.type != "cpu" for t in inputs)
        if device_input and (name in SYNC_OPS or (name in ("_to_copy", "copy_")
                                                  and all(t.device.type == "cpu" for t in outputs))):
            self.syncs[name] += 1
        if not any(on_device):
            self.host_ops[name] += 1
        elif name in ("_to_copy", "copy_", "_pin_memory") and any(t.device.type == "cpu" for t in inputs):
            self.h2d[name] += 1
            self.launches[name] += 1
        else:
            self.launches[name] += 1
        return out


def stubbed_triton(record: Counter):
    """Inside: the Triton launches counted into `record` by kernel, and not made."""
    from biggan_smyrf.attention.triton.launches import observe_launches

    return observe_launches(lambda name, grid: record.update([name]), run=False)


def config_for(recipe: str, q_cluster_size: int) -> AttentionConfig:
    sizes = dict(n_hashes=4, q_cluster_size=q_cluster_size, kernel="triton")
    return AttentionConfig.paper(**sizes) if recipe == "paper" else AttentionConfig(kind="smyrf", **sizes)


def inputs(batch: int, n: int, device: str, dtype=torch.bfloat16):
    """BigGAN's q (B, N, 12), pooled k (B, N/4, 12) and v (B, N/4, 48), leaves with gradients, and
    the output's gradient (which the layer above makes)."""
    qkv = [torch.randn(batch, t, d, device=device, dtype=dtype, requires_grad=True)
           for t, d in ((n, 12), (n // 4, 12), (n // 4, 48))]
    return *qkv, torch.ones(batch, n, 48, device=device, dtype=dtype)


def forward_backward(config: AttentionConfig, q, k, v, grad, generator: torch.Generator) -> None:
    smyrf_attention(q, k, v, config, scale=1.0, generator=generator).backward(grad)


def count(n: int, q_cluster_size: int, recipe: str, batch: int = BATCH, device: str = "meta") -> dict:
    """Launches, host ops, h2d copies and syncs of one forward + backward (the second of two calls)."""
    config = config_for(recipe, q_cluster_size)
    generator = torch.Generator().manual_seed(0)
    return count_call(lambda q, k, v: smyrf_attention(q, k, v, config, scale=1.0, generator=generator), n, batch, device)


def count_call(attention, n: int, batch: int = BATCH, device: str = "meta", dtype=torch.bfloat16) -> dict:
    """The counts of `count` for any attention(q, k, v) at BigGAN's shapes (n queries, n / 4 keys):
    its forward and the backward of its output, the second of two calls."""
    triton = Counter()
    with stubbed_triton(triton):
        q, k, v, grad = inputs(batch, n, device, dtype)
        attention(q, k, v).backward(grad)
        triton.clear()
        q, k, v, grad = inputs(batch, n, device, dtype)
        counter = LaunchCounter()
        with counter:
            attention(q, k, v).backward(grad)
    aten = sum(counter.launches.values())
    return {"aten_launches": aten, "triton_launches": sum(triton.values()), "launches": aten + sum(triton.values()),
            "h2d_copies": sum(counter.h2d.values()), "host_syncs": sum(counter.syncs.values()),
            "host_ops": sum(counter.host_ops.values()), "dispatched": counter.dispatched,
            "by_op": dict(counter.launches.most_common()), "by_kernel": dict(triton)}


def timing_shape(n: int, q_cluster_size: int) -> tuple[int, int]:
    """(tokens, queries per cluster) with the goal's number of clusters and 64 queries per cluster."""
    clusters = n // q_cluster_size
    return 64 * clusters, 64


def host_seconds(n: int, q_cluster_size: int, recipe: str, reps: int) -> list[float]:
    """Wall times of `reps` forward + backward calls on small CPU tensors, Triton stubbed, sorted."""
    config = config_for(recipe, q_cluster_size)
    generator = torch.Generator().manual_seed(0)
    times = []
    with stubbed_triton(Counter()):
        for rep in range(reps + 2):
            q, k, v, grad = inputs(1, n, "cpu")
            start = time.perf_counter()
            forward_backward(config, q, k, v, grad, generator)
            if rep >= 2:
                times.append(time.perf_counter() - start)
    return sorted(times)


def launch_path_seconds(n: int, q_cluster_size: int, recipe: str, reps: int) -> float:
    """Host seconds per call spent in Triton's own launch path -- JITFunction.run binding the
    arguments, computing the specialisation key and finding the compiled kernel -- for all of the
    call's Triton launches; only the driver's launch itself is left out (a few µs each on a GPU).
    Calls alternate between going through that path and skipping the launches, both with the
    launch code's CUDA choices (`triton_launches.as_on_cuda`); the median of the pairs' differences
    is the estimate (pairs, so that a slow stretch of a shared machine hits both alike). Needs
    triton without its interpreter."""
    from benchmarks import triton_launches

    config = config_for(recipe, q_cluster_size)
    generator = torch.Generator().manual_seed(0)

    def seconds() -> float:
        q, k, v, grad = inputs(1, n, "cpu")
        start = time.perf_counter()
        forward_backward(config, q, k, v, grad, generator)
        return time.perf_counter() - start

    differences = []
    with triton_launches.as_on_cuda(), triton_launches.recording((90,)):
        for rep in range(reps + 2):
            through = seconds()
            with stubbed_triton(Counter()):
                skipped = seconds()
            if rep >= 2:
                differences.append(through - skipped)
    return statistics.median(differences)


def measure(n: int, recipe: str, reps: int) -> dict:
    q_cluster = Q_CLUSTER[n]
    counts = count(n, q_cluster, recipe)
    small_n, small_cluster = timing_shape(n, q_cluster)
    times = host_seconds(small_n, small_cluster, recipe, reps)
    small_dispatched = count(small_n, small_cluster, recipe, batch=1, device="cpu")["dispatched"]
    low = times[len(times) // 10]
    return {"n": n, "recipe": recipe, "config": f"{4}x{q_cluster}", "batch": BATCH, **counts,
            "timing_tokens": small_n, "timing_dispatched": small_dispatched,
            "host_ms": low * 1e3, "host_ms_median": statistics.median(times) * 1e3,
            "host_ms_goal": low * 1e3 * counts["dispatched"] / small_dispatched}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(Q_CLUSTER), choices=list(Q_CLUSTER))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--reps", type=int, default=200, help="timed calls per case")
    parser.add_argument("--name", default="host_cost", help="results file stem")
    parser.add_argument("--launch-path", action="store_true",
                        help="only print Triton's launch-path ms per case as JSON (run without the interpreter)")
    return parser


def launch_path_ms(args) -> dict:
    """{(n, recipe): ms} of `launch_path_seconds`, from a process where triton is not interpreted
    (this one turns the interpreter on for the stubbed timings)."""
    command = [sys.executable, "-m", "benchmarks.host_cost", "--launch-path", "--reps", str(args.reps),
               "--sizes", *map(str, args.sizes), "--recipes", *args.recipes]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return {(row["n"], row["recipe"]): row["ms"] for row in json.loads(out.strip().splitlines()[-1])}


def main():
    args = build_parser().parse_args()
    if args.launch_path:
        torch.set_num_threads(1)
        print(json.dumps([{"n": n, "recipe": recipe, "ms": 1e3 * launch_path_seconds(
            *timing_shape(n, Q_CLUSTER[n]), recipe, args.reps)} for n in args.sizes for recipe in args.recipes]))
        return
    launch_ms = launch_path_ms(args)
    # The timing runs put CPU tensors on the Triton route, which takes the interpreter's flag (the
    # launches themselves are stubbed); set before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        for recipe in args.recipes:
            row = measure(n, recipe, args.reps)
            row["triton_launch_ms"] = launch_ms[n, recipe]
            row["host_ms_total"] = row["host_ms_goal"] + row["triton_launch_ms"]
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("by_op",)}, flush=True)
    table = markdown_table(rows, [
        ("n", "tokens"), ("recipe", "recipe"), ("config", "SMYRF"), ("aten_launches", "aten launches"),
        ("triton_launches", "Triton launches"), ("launches", "launches"), ("h2d_copies", "h2d copies"),
        ("host_syncs", "host syncs"), ("host_ops", "host ops"), ("dispatched", "ops dispatched"),
        ("timing_dispatched", "ops at timing shape"), ("host_ms", "host ms (timing shape, p10)"),
        ("host_ms_median", "host ms (median)"), ("host_ms_goal", "host ms (goal, p10)"),
        ("triton_launch_ms", "+ Triton's launch path ms"), ("host_ms_total", "host ms in all"),
    ])
    table = (f"One forward + backward on the CUDA route (`kernel=\"triton\"`), batch {BATCH}, bf16, counted at the "
             f"dispatcher on meta tensors; host time on the CPU (1 thread) with the Triton launches stubbed, plus "
             f"Triton's own launch path timed apart (`host ms in all`, the goal's column). "
             f"Goals: <= {GOALS['launches']} launches, <= {GOALS['host_ms']} ms, no h2d copy.\n\n" + table)
    stem = write_results(args.name, torch.device("cpu"), rows, table, {"batch": BATCH, "goals": GOALS})
    print(table)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
