"""Peak memory of SMYRF's CUDA route, measured on the CPU: every tensor it allocates, no GPU needed.

    python -m benchmarks.memory_model                      # 16,384 and 65,536 tokens, bf16 and fp32
    python -m benchmarks.memory_model --sizes 4096 --dtypes bfloat16

The permuted Triton route (`kernel="triton"`, the CUDA default) runs here under Triton's
interpreter, with the library default at BigGAN's shapes (d_qk 12, d_v 48, keys 2x2-pooled, batch 1).
A dispatch mode counts the bytes of every tensor storage created during the call and frees them as
their storages die -- what CUDA's `max_memory_allocated` counts, less the allocator's 512-byte
rounding and the sort's scratch space. Three phases, each with what is alive at its peak:
  hub selection   the attention mass of every key from the sampled queries, through the cluster kernel
  forward         hashing, summaries, the rounds merged into one float32 accumulator, the hub round
  backward        the rounds' gradients into float32 accumulators, the hub round's
Everything grows with batch x tokens, so batch 32's peak is 32 x batch 1's. That estimate is set
against dense SDPA's peak as measured on an H100 (same shapes, fwd + bwd, batch 32).
Writes benchmarks/results/memory_model-cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
import weakref
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from benchmarks.common import benchmark_parser, markdown_table, parse_device_args, write_results  # noqa: E402

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402

# Dense SDPA's peak (MiB) on an H100, fwd + bwd at batch 32, as measured (cuDNN flash in
# bf16, CUTLASS memory-efficient in fp32): {(tokens, dtype): MiB}.
DENSE_SDPA_H100_MIB = {(16384, "bfloat16"): 329, (16384, "float32"): 590,
                       (65536, "bfloat16"): 1313, (65536, "float32"): 2354}
BATCH = 32
INTERPRETER_FILE = os.path.join("triton", "runtime", "interpreter.py")
# The library function that selects the hub keys: the ops run while it is on the stack are the
# "hub selection" phase (told apart by the call stack, so nothing in the library is replaced).
HUB_SELECTION = "hub_keys"


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages created while active, as they are allocated and freed.

    `peak`, `at_peak` (what was alive then: bytes, dtype, shape, the op and the package line that
    made it) and `made` (every storage allocated) cover the time since the last `reset()`.
    Storages made before entering are not counted. (torch.distributed._tools' MemTracker counts
    peaks too, but would count the interpreter's copies and cycles and cannot say which line made what.)
    peaks=False keeps `made` alone: no peaks, and so none of the collections taken at each new one
    (a garbage collection of the interpreter's cycles, a good part of a second at every new peak).
    """

    def __init__(self, peaks: bool = True):
        super().__init__()
        self.peaks = peaks
        self.live: dict[int, tuple] = {}
        self.current = 0
        self.reset()

    def reset(self):
        self.made: list[tuple] = []
        self._new_peak()

    def _new_peak(self):
        self.peak, self.at_peak = self.current, dict(self.live)

    def _freed(self, key: int, nbytes: int):
        self.current -= nbytes
        self.live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        stack = traceback.extract_stack()
        if any(frame.filename.endswith(INTERPRETER_FILE) for frame in stack):
            return out  # the interpreter's copies of a launch's arguments: compiled kernels make none
        self.before_op(stack)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self.live or key in inputs:  # a view or an in-place op's result
                continue
            self.live[key] = (nbytes, str(t.dtype)[6:], tuple(t.shape), func.__name__, _caller(stack))
            self.made.append(self.live[key])
            self.current += nbytes
            weakref.finalize(storage, self._freed, key, nbytes)
            if self.peaks and self.current > self.peak:
                # Triton's interpreter leaves reference cycles that hold a launch's arguments until
                # the cyclic collector runs; compiled kernels on CUDA hold nothing. Collect before
                # taking a peak, so the peak is the program's, not the interpreter's.
                gc.collect()
                if self.current > self.peak:
                    self._new_peak()
        return out

    def before_op(self, stack: traceback.StackSummary) -> None:
        """Called with each counted op's call stack before its outputs are counted (a subclass's seam)."""

    def largest(self, n: int = 8) -> list[str]:
        rows = sorted(self.at_peak.values(), key=lambda r: -r[0])[:n]
        return [f"{b / 2**20:.2f} MiB {dt} {list(shape)} {op} @ {where}" for b, dt, shape, op, where in rows]


class PhasedTensors(LiveTensors):
    """LiveTensors with the hub selection as a phase of its own: on entering it the count restarts,
    on leaving it its peak is kept in `phases` and the count restarts again."""

    def __init__(self):
        super().__init__()
        self.phases: dict[str, tuple] = {}
        self.in_hub = False

    def before_op(self, stack: traceback.StackSummary) -> None:
        in_hub = any(frame.name == HUB_SELECTION for frame in stack)
        if in_hub == self.in_hub:
            return
        if self.in_hub:
            self.phases["hub selection"] = (self.peak, self.largest())
        self.reset()
        self.in_hub = in_hub


def _caller(stack: traceback.StackSummary) -> str:
    """The innermost line of the package on the stack: which of our lines made a tensor."""
    frames = [f for f in stack if f"{os.sep}biggan_smyrf{os.sep}" in f.filename]
    return f"{Path(frames[-1].filename).stem}.{frames[-1].name}:{frames[-1].lineno}" if frames else "?"


def measure(n: int, dtype: torch.dtype) -> dict:
    """Per-phase peaks (bytes) of one fwd + bwd at batch 1, with what was alive at each."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, t, d, generator=g).to(dtype).requires_grad_() for t, d in ((n, 12), (n // 4, 12), (n // 4, 48)))
    config = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048 if n <= 16384 else 4096, kernel="triton")
    tracker = PhasedTensors()
    phases = tracker.phases
    with tracker:
        out = smyrf_attention(q, k, v, config, scale=1.0, seed=0)
        phases["forward"] = (tracker.peak, tracker.largest())
        tracker.reset()
        out.sum().backward()
        phases["backward"] = (tracker.peak, tracker.largest())
    if "hub selection" not in phases:
        raise RuntimeError(f"no op ran inside {HUB_SELECTION}(): the library's hub selection has another name now")
    return {"config": f"{config.n_hashes}x{config.q_cluster_size}", "out_bytes": out.numel() * out.element_size(),
            "phases": phases}


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--sizes", nargs="+", type=int, default=[16384, 65536], help="tokens N (keys N / 4)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--name", default="memory_model", help="results file stem")
    return parser


def main():
    args = parse_device_args(build_parser())
    from biggan_smyrf.attention.triton.blocks import INTERPRETED
    if not INTERPRETED:
        sys.exit("error: run with TRITON_INTERPRET=1 set before triton is imported (this script sets it unless overridden)")
    rows = []
    for n in args.sizes:
        for dtype_name in args.dtypes:
            result = measure(n, getattr(torch, dtype_name))
            phases = result["phases"]
            estimate = BATCH * max(peak for peak, _ in phases.values())
            dense = DENSE_SDPA_H100_MIB.get((n, dtype_name))
            row = {"n": n, "dtype": dtype_name, "config": result["config"],
                   **{f"{p}_mib": peak / 2**20 for p, (peak, _) in phases.items()},
                   "out_mib": result["out_bytes"] / 2**20, "batch32_mib": estimate / 2**20,
                   "dense_sdpa_h100_mib": dense, "vs_dense": estimate / 2**20 / dense if dense else None,
                   "alive_at_peak": {p: largest for p, (_, largest) in phases.items()}}
            rows.append(row)
            print({k: v for k, v in row.items() if k != "alive_at_peak"}, flush=True)
            for phase, largest in row["alive_at_peak"].items():
                print(f"  {phase}:", *largest, sep="\n    ", flush=True)
    table = markdown_table(rows, [
        ("n", "tokens"), ("dtype", "dtype"), ("config", "SMYRF"), ("hub selection_mib", "hub selection MiB"),
        ("forward_mib", "forward MiB"), ("backward_mib", "backward MiB"), ("out_mib", "output MiB"),
        ("batch32_mib", "batch 32 MiB (est.)"), ("dense_sdpa_h100_mib", "dense SDPA H100 MiB"), ("vs_dense", "vs dense"),
    ])
    table = ("Batch 1 under Triton's interpreter (tensor bytes alive, per phase); batch 32 estimated "
             "from it; dense SDPA measured on an H100.\n\n" + table)
    stem = write_results(args.name, torch.device("cpu"), rows, table, {"batch_estimated": BATCH})
    print(table)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
