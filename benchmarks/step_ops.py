"""How many kernels a G iteration launches, with spectral norm run together or layer by layer.

    python -m benchmarks.step_ops            # dense@64 and SMYRF@128, fp32 and bf16 (~1 min on 2 cores)

On a GPU every op that reaches a kernel costs a launch and several microseconds of host time,
whatever the batch, so a step of a few thousand ops can be bound by the host at batch 16-32,
where bf16 cannot speed it up. This counts, on the CPU, the ops of one training step of benchmarks/models.py
(2 D steps + 1 G step + G_ema update, ch 16, batch 2: the count does not depend on width or
batch) at the dispatcher -- views and other metadata-only ops left out -- once with
`models/spectral.py`'s together path (what G and D use) and once with PyTorch's per-layer path
(models.py's speed "sn per layer").
Adam's ops are counted apart: the CPU runs it tensor by tensor, CUDA as one fused kernel per
parameter group. Spectral norm's forward ops are those run inside its hook or parametrization.
The CPU step time (median of --reps) is printed too; on a CPU the convolutions dominate it.
A second table counts one G_ema forward as sampling and validation run it (eval, no gradients)
against the same forward with gradients on, whose spectral-norm kernels are PyTorch's.

Writes benchmarks/results/step_ops-cpu.{json,md}.
"""
from __future__ import annotations

import time
import contextlib
from contextlib import contextmanager
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import benchmark_parser, markdown_table, parse_device_args, write_results  # noqa: E402
from benchmarks.models import VARIANTS, build, workload  # noqa: E402

from biggan_smyrf.models import spectral  # noqa: E402

METADATA_OPS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "reshape", "unsqueeze", "squeeze",
                "as_strided", "detach", "alias", "select", "slice", "split", "split_with_sizes", "unbind",
                "lift_fresh", "lift_fresh_copy", "empty", "empty_like", "empty_strided"}  # no kernel


class OpCounter(TorchDispatchMode):
    """Ops that reach a kernel, by the region (`within`) they ran in."""

    def __init__(self):
        super().__init__()
        self.region = "other"
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in METADATA_OPS:
            self.counts[self.region] = self.counts.get(self.region, 0) + 1
        return func(*args, **(kwargs or {}))

    @contextmanager
    def within(self, region: str):
        outer, self.region = self.region, region
        try:
            yield
        finally:
            self.region = outer


def _tagged(counter: OpCounter, region: str, fn):
    def wrapper(*args, **kwargs):
        with counter.within(region):
            return fn(*args, **kwargs)
    return wrapper


def count_step(variant: str, dtype: str, together: bool, reps: int) -> dict:
    case = {"table": "step", "device": "cpu", "variant": variant, "batch": 2, "dtype": dtype, "ch": 16,
            "speed": "plain" if together else "sn per layer"}
    counter = OpCounter()
    tags = [  # before the networks are built: their hooks bind the functions at construction
        mock.patch.object(torch.optim.Adam, "step", _tagged(counter, "optimizer", torch.optim.Adam.step)),
        mock.patch.object(spectral, "_power_iteration_hook", _tagged(counter, "spectral norm", spectral._power_iteration_hook)),
        mock.patch.object(spectral.SpectralNorm, "forward", _tagged(counter, "spectral norm", spectral.SpectralNorm.forward)),
    ]
    with contextlib.ExitStack() as stack:
        for tag in tags:
            stack.enter_context(tag)
        step = workload(case, torch.device("cpu"))
        step()  # lazy state (Adam's moments) out of the count
        with counter:
            step()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    counts = counter.counts
    total = sum(counts.values())
    return {"variant": variant, "dtype": dtype, "spectral_norm": "together" if together else "per layer",
            "ops": total, "optimizer_ops": counts.get("optimizer", 0),
            "ops_without_optimizer": total - counts.get("optimizer", 0),
            "sn_forward_ops": counts.get("spectral norm", 0), "cpu_step_ms": 1e3 * sorted(times)[len(times) // 2]}


def count_sampling(variant: str, dtype: str) -> dict:
    """One G forward in eval mode (sampling, validation), with gradients on -- which gives
    PyTorch's spectral-norm kernels: clones of u and v, mv, dot, division, autocast's cast -- and
    off, where models/spectral.py skips the clones and writes the weight in autocast's dtype."""
    G, _ = build({"variant": variant, "ch": 16}, torch.device("cpu"))
    G.eval()
    z = torch.randn(2, G.config.dim_z)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    row = {"variant": variant, "dtype": dtype}
    for grad, key in ((True, "ops_with_grad"), (False, "ops_without_grad")):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=half, enabled=half is not None):
            G(z)
            counter = OpCounter()
            with counter:
                G(z)
        row[key] = sum(counter.counts.values())
    row["vs_with_grad"] = row["ops_without_grad"] / row["ops_with_grad"]
    return row


def build_parser():
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--variants", nargs="+", default=["dense@64", "smyrf@128 ours 4x2048"], choices=list(VARIANTS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--name", default="step_ops", help="results file stem")
    return parser


def main():
    args = parse_device_args(build_parser())
    rows = []
    for variant in args.variants:
        for dtype in args.dtypes:
            for together in (False, True):
                rows.append(count_step(variant, dtype, together, args.reps))
                print(rows[-1], flush=True)
            before, after = rows[-2]["ops_without_optimizer"], rows[-1]["ops_without_optimizer"]
            rows[-1]["vs_per_layer"] = after / before
    columns = [("variant", "G attention"), ("dtype", "dtype"), ("spectral_norm", "spectral norm"),
               ("ops", "ops per G iteration"), ("optimizer_ops", "of which Adam (CPU, per tensor)"),
               ("ops_without_optimizer", "without Adam"), ("vs_per_layer", "vs per layer"),
               ("sn_forward_ops", "spectral norm's forward ops"), ("cpu_step_ms", "CPU step ms")]
    sampling = [count_sampling(variant, dtype) for variant in args.variants for dtype in args.dtypes]
    table = markdown_table(rows, columns) + "\n\nG_ema forward (eval: sampling, validation), ops per forward:\n\n" + \
        markdown_table(sampling, [("variant", "G attention"), ("dtype", "dtype"),
                                  ("ops_with_grad", "with grad (PyTorch's spectral norm kernels)"),
                                  ("ops_without_grad", "no grad (ours)"), ("vs_with_grad", "ratio")])
    print(table)
    stem = write_results(args.name, torch.device("cpu"), rows + [{"table": "sampling", **r} for r in sampling], table,
                         {"ch": 16, "batch": 2, "reps": args.reps, "threads": args.threads,
                          "counted": "dispatched ops except views and metadata-only ops, one G iteration"})
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
