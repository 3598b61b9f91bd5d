"""The GPU goals, read off the GPU results: met, missed, or not measured.

    python -m benchmarks.checks.gpu_goals                 # reads benchmarks/results/*-cuda.json
    python -m benchmarks.checks.gpu_goals --results DIR   # e.g. the folder a device run copied back

Runs anywhere (it only reads JSON). The accuracy goal (the CUDA path's error and gradients
against the CPU's) is checked by gpu-check's CUDA tests, so it counts in the first row. Prints and writes benchmarks/results/gpu_goals.{json,md}: one row
per goal with the measured value, the target and the verdict, and the README's GPU numbers --
step time, G iterations/s, real images/s and the cost of the paper's 200k G iterations for
dense@64 and SMYRF@128 in fp32 and bf16 (the faster of plain and channels_last). Exit status 1
while a goal is missed or unmeasured.

A G iteration reads `num_d_steps` (2) real batches, so real images/s = 2 * batch / step time, the
number train.py logs as train/real_images_per_s.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

RESULTS = Path(__file__).resolve().parents[1] / "results"  # benchmarks/results; no torch needed here
BATCH = 32  # the batch of every goal
D_STEPS = 2  # real batches per G iteration (OptimConfig.num_d_steps)
PAPER_G_ITERS = 200_000
SMYRF_128 = "smyrf@128 ours 4x2048"
# The attention table's time goals: (dtype, tokens) -> (the library default's row, limit on its
# forward+backward time / dense SDPA's at batch 32). cost_model.py predicts the same ratios.
ATTENTION_TIME_GOALS = {
    ("bfloat16", 16384): ("ours 4x2048", 1.0), ("bfloat16", 65536): ("ours 4x4096", 0.4),
    ("float32", 16384): ("ours 4x2048", 0.7), ("float32", 65536): ("ours 4x4096", 0.35),
}


@dataclass
class Goal:
    group: str  # what the goal is about: the training run or the attention core
    goal: str
    value: Optional[float]  # None: not measured (file or row missing, or the row failed)
    limit: float  # met when value <= limit
    unit: str = "x"
    source: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        return "met" if self.value <= self.limit else "missed"


def load(results: Path, stem: str) -> Optional[dict]:
    path = results / f"{stem}-cuda.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows_of(results: Path, stem: str) -> list[dict]:
    data = load(results, stem)
    return data["rows"] if data else []


def step_ms(rows: list[dict], variant: str, dtype: str) -> Optional[float]:
    """The step time of one step-table row at batch 32 (None if absent or failed)."""
    for r in rows:
        if r.get("variant") == variant and r.get("dtype") == dtype and r.get("batch") == BATCH and "ms" in r:
            return r["ms"]
    return None


def attention_row(rows: list[dict], n: int, dtype: str, method: str) -> Optional[dict]:
    for r in rows:
        if (r.get("n"), r.get("batch"), r.get("dtype"), r.get("method")) == (n, BATCH, dtype, method) and "fwd_bwd_ms" in r:
            return r
    return None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def fastest(*times: Optional[float]) -> Optional[float]:
    measured = [t for t in times if t is not None]
    return min(measured) if measured else None


def training_goals(results: Path) -> list[Goal]:
    check = load(results, "gpu_check")
    # Steps not run count as failed: a run cut off part-way has not passed.
    failed = None if check is None else float(check["meta"]["steps"] - sum(r["rc"] == 0 for r in check["rows"]))
    # The run's wall time (its steps may overlap); older records only have the steps' own times.
    seconds = None if check is None else check["meta"].get("wall_s", sum(r["seconds"] for r in check["rows"]))
    steps, nhwc = rows_of(results, "train_step"), rows_of(results, "train_step_nhwc")
    fp32 = step_ms(steps, "dense@64", "fp32")
    bf16 = fastest(step_ms(steps, "dense@64", "bf16"), step_ms(nhwc, "dense@64", "bf16"))
    validation = load(results, "validation_10k")
    return [
        Goal("training", "make gpu-check: steps failed or not run (CUDA tests included)", failed, 0.0, "", "gpu_check"),
        Goal("training", "make gpu-check wall time", seconds, 360.0, "s", "gpu_check"),
        Goal("training", "dense@64 step, batch 32: bf16-mixed (best of plain, channels_last) / fp32", ratio(bf16, fp32), 0.6,
             source="train_step, train_step_nhwc"),
        Goal("training", "validation: 10,000 samples x 2 attention kinds", validation and validation["meta"]["validation_s"],
             60.0, "s", "validation_10k"),
    ]


def attention_goals(results: Path) -> list[Goal]:
    rows = rows_of(results, "attention")
    goals = []
    for (dtype, n), (method, limit) in ATTENTION_TIME_GOALS.items():
        ours, dense = attention_row(rows, n, dtype, method), attention_row(rows, n, dtype, "dense SDPA")
        time = ratio(ours and ours["fwd_bwd_ms"], dense and dense["fwd_bwd_ms"])
        memory = ratio(ours and ours["peak_mb"], dense and dense["peak_mb"])
        what = f"{method} / dense SDPA at {n:,} tokens, batch 32, {dtype}"
        goals.append(Goal("attention", f"attention fwd+bwd time: {what}", time, limit, source="attention"))
        goals.append(Goal("attention", f"attention peak memory: {what}", memory, 1.5,
                          source="attention" + memory_model_note(results, n, dtype)))
    steps = rows_of(results, "train_step")
    for dtype in ("fp32", "bf16"):
        goals.append(Goal("attention", f"step at 128 px, batch 32, {dtype}: {SMYRF_128} / dense@128 flash",
                          ratio(step_ms(steps, SMYRF_128, dtype), step_ms(steps, "dense@128 flash", dtype)), 1.0,
                          source="train_step"))
    return goals


def memory_model_note(results: Path, n: int, dtype: str) -> str:
    """The CPU memory model's estimate for the same case (memory_model.py), to set beside the measurement."""
    for folder in (results, RESULTS):
        path = folder / "memory_model-cpu.json"
        if path.exists():
            for r in json.loads(path.read_text())["rows"]:
                if (r["n"], r["dtype"]) == (n, dtype) and r.get("vs_dense") is not None:
                    return f" (CPU model: {r['vs_dense']:.2f}x)"
    return ""


def readme_numbers(results: Path) -> list[dict]:
    """Step time, G iterations/s, real images/s and the paper run's cost, per (variant, dtype)."""
    steps, nhwc = rows_of(results, "train_step"), rows_of(results, "train_step_nhwc")
    rows = []
    for variant in ("dense@64", SMYRF_128):
        for dtype in ("fp32", "bf16"):
            plain, channels_last = step_ms(steps, variant, dtype), step_ms(nhwc, variant, dtype)
            ms = fastest(plain, channels_last)
            if ms is None:
                continue
            rows.append({"variant": variant, "dtype": dtype, "layout": "NHWC" if ms == channels_last else "NCHW",
                         "step_ms": ms, "g_iters_per_s": 1e3 / ms, "real_images_per_s": D_STEPS * BATCH * 1e3 / ms,
                         "paper_run_hours": PAPER_G_ITERS * ms / 3.6e6})
    return rows


def markdown(goals: list[Goal], numbers: list[dict], device: str) -> str:
    lines = [f"Device: {device}.", "", "| group | goal | measured | target | verdict | from |", "|---|---|---|---|---|---|"]
    for g in goals:
        value = "-" if g.value is None else f"{g.value:.3g}{g.unit}"
        lines.append(f"| {g.group} | {g.goal} | {value} | <= {g.limit:g}{g.unit} | {g.verdict} | {g.source} |")
    lines += ["", f"Batch {BATCH}, one G iteration = {D_STEPS} D steps + 1 G step + the G_ema update:", "",
              "| G attention | precision | layout | step ms | G iterations/s | real images/s | 200k G iterations |",
              "|---|---|---|---|---|---|---|"]
    for r in numbers:
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['layout']} | {r['step_ms']:.0f} | {r['g_iters_per_s']:.2f} | "
                     f"{r['real_images_per_s']:.0f} | {r['paper_run_hours']:.1f} h |")
    return "\n".join(lines)


def device_of(results: Path) -> str:
    for path in sorted(results.glob("*-cuda.json")):
        return json.loads(path.read_text())["meta"].get("device", "unknown")
    return "no CUDA results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the *-cuda.json files")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where gpu_goals.{json,md} go")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    goals = training_goals(args.results) + attention_goals(args.results)
    numbers, device = readme_numbers(args.results), device_of(args.results)
    table = markdown(goals, numbers, device)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_goals.md").write_text(table + "\n")
    (args.out / "gpu_goals.json").write_text(json.dumps(
        {"device": device, "goals": [asdict(g) | {"verdict": g.verdict} for g in goals], "readme": numbers}, indent=1))
    return 0 if all(g.verdict == "met" for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
