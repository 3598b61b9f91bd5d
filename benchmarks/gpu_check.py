"""`make gpu-check` / `make gpu-bench`: the CUDA checks and measurements, each step a subprocess
with its own time limit and exit code, so one failure never hides the others.

    make gpu-wheels                 # here (internet): torch-fidelity + jsonargparse wheels into .whl/
    make gpu-check                  # there: installs .whl/ to /tmp/site if needed, then runs this
    make gpu-bench                  # there, after gpu-check: the profile and speed measurements

gpu-check (`--plan` prints the estimate on an H100):
  0. the Triton warm-up (benchmarks/triton_warmup.py): every specialisation the steps below launch,
     compiled in parallel processes, one SMYRF call each at batch 1, while the CUDA tests run
  1. the CUDA tests (`pytest -m cuda`), in 4 processes side by side (`--shard i/4`)
  2. the attention table on CUDA (benchmarks/attention.py -> attention-cuda): dense SDPA vs SMYRF
     (paper recipe, library default at 4x2048 and 4x4096) through the permuted Triton route,
     16,384 and 65,536 tokens, batch 8 and 32, bf16 and fp32
  3. the training-step table at 128 px, batch 32 (-> train_step-cuda): fp32, bf16-mixed and
     16-mixed rows (SMYRF also through the previous chunked CUDA route), and bf16 with channels_last
  4. train.py on configs/celebahq128_smyrf.yaml (built-in faces, ~60 G iterations, bf16-mixed), with
     validation metrics from a random-weights Inception file, diagnostics and the dense comparison on
  5. sample.py --device cuda on its checkpoint
gpu-bench:
  1. profile of a G iteration per op group (benchmarks/profile_step.py -> profile_step-cuda)
  2. one validation of the paper config: 10,000 samples x (SMYRF, dense) (-> validation_10k-cuda)
  3. block sizes of the permuted-round Triton kernels (benchmarks/tune_rounds.py -> tune_rounds-cuda)
  4. dense@64 steps with cuDNN autotuning off, fp32 and bf16 (-> train_step_no_autotune-cuda)
  5. torch.compile rows of the step table (-> train_step_compile-cuda)
Each writes benchmarks/results/<name>-cuda.{json,md}; gpu_check-cuda and gpu_bench-cuda list the
steps (card, per-step rc and seconds, the run's wall time).

Options: --plan prints what would run (every step's rows, its cold compiles) and the estimated
H100 wall time, and runs nothing; a run prints the same estimate first (benchmarks/gpu_plan.py).
--budget S caps the whole run at S seconds: each step gets what is left if that is less than its
own limit, and a step with under a minute left is recorded as not run ("rc": "no time"). --archive
FILE rewrites one tar.gz of every *-cuda result after each step, so a run that is stopped part-way
still leaves what it measured in one file. Both suites in one run, capped at 9 minutes:
    python3 benchmarks/gpu_check.py --with-bench --budget 540 --archive results.tar.gz
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import RESULTS, markdown_table, write_results  # noqa: E402
from gpu_plan import ALONGSIDE, CUDA_TEST_STEPS, describe, plan_suite, warmup_calls  # noqa: E402

from biggan_smyrf.metrics.random_weights import write_random_inception_weights  # noqa: E402

RUN = "gpu_check"
# A step given less than this by --budget is not started: it could not finish.
MIN_STEP_S = 60


def check_steps(work: Path, weights: Path, g_iters: int) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of gpu-check."""
    py = sys.executable
    ckpt = work / "checkpoints" / RUN / "last.ckpt"
    train = [
        py, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "celebahq128_smyrf.yaml"), "--run", RUN,
        "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "bf16-mixed", "--data.num_workers", "4", "--trainer.enable_progress_bar", "false",
        "--model.loop.max_g_iters", str(g_iters), "--model.loop.val_every", str(g_iters // 2),
        "--model.loop.log_every", "10", "--model.loop.sample_every", str(g_iters // 2),
        "--model.loop.ckpt_every", str(g_iters // 2),
        "--model.metrics.weights_path", str(weights), "--model.metrics.n_samples", "1000",
        "--model.attention.diagnostics", "true",
    ]
    step_table = [py, str(ROOT / "benchmarks" / "models.py"), "--table", "step", "--device", "cuda", "--batches", "32",
                  "--reps", "5", "--variants", "dense@64", "dense@128 flash", "smyrf@128 paper 4x2048",
                  "smyrf@128 ours 4x2048", "smyrf@128 ours 4x2048 chunked"]
    tests = [py, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests")]
    steps = [
        *((name, [*tests, "--shard", name.split()[-1]], 150) for name in CUDA_TEST_STEPS),
        ("attention table", [py, str(ROOT / "benchmarks" / "attention.py"), "--device", "cuda",
                             "--dtype", "bfloat16", "float32", "--sizes", "16384", "65536", "--batches", "8", "32",
                             "--methods", "dense SDPA", "smyrf 4x2048", "ours 4x2048", "ours 4x4096",
                             "--name", "attention"], 120),
        ("step table", step_table, 100),
        ("step table channels_last", [*step_table[:-1], "--dtypes", "bf16", "--speeds", "nhwc",
                                      "--name", "train_step_nhwc"], 45),
        ("train.py celebahq128_smyrf", train, 110),
        ("sample.py --device cuda", [py, str(ROOT / "sample.py"), "--ckpt", str(ckpt), "--out", str(work / "samples"),
                                     "--n", "64", "--device", "cuda", "--attention", "smyrf"], 30),
    ]
    # First, every Triton specialisation the steps will launch, compiled side by side.
    calls = warmup_calls(plan_suite(steps))
    return [("triton warm-up", [py, str(ROOT / "benchmarks" / "triton_warmup.py"), "--calls", json.dumps(calls)], 60),
            *steps]


def bench_steps() -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of gpu-bench."""
    py = sys.executable
    bench = ROOT / "benchmarks"
    return [
        # "sn per layer": PyTorch's spectral norm, to see what running it together saves on the GPU.
        ("profile dense@64", [py, str(bench / "profile_step.py"), "--device", "cuda", "--variants", "dense@64",
                              "--dtypes", "fp32", "bf16", "--speeds", "plain", "nhwc", "sn per layer"], 75),
        ("profile smyrf@128", [py, str(bench / "profile_step.py"), "--device", "cuda", "--variants",
                               "smyrf@128 ours 4x2048", "--dtypes", "bf16", "--name", "profile_step_smyrf128"], 40),
        ("validation 10k x 2 kinds", [py, str(bench / "validation.py"), "--device", "cuda", "--n", "10000",
                                      "--attention-resolution", "128", "--kinds", "smyrf", "dense", "--batch-size", "64",
                                      "--no-standalone", "--name", "validation_10k"], 90),
        ("tune permuted-round blocks", [py, str(bench / "tune_rounds.py")], 120),
        # The same step as gpu-check's table with cuDNN's default heuristics: what autotuning buys.
        ("step table no cudnn autotune", [py, str(bench / "models.py"), "--table", "step", "--device", "cuda",
                                          "--batches", "32", "--reps", "5", "--variants", "dense@64",
                                          "--dtypes", "fp32", "bf16", "--cudnn-benchmark", "false",
                                          "--name", "train_step_no_autotune"], 45),
        # Last: compiling takes minutes, and a timeout here loses nothing measured before.
        ("step table compile", [py, str(bench / "models.py"), "--table", "step", "--device", "cuda", "--batches", "32",
                                "--reps", "5", "--variants", "dense@64", "--dtypes", "bf16",
                                "--speeds", "compile", "nhwc+compile", "--name", "train_step_compile"], 200),
    ]


def start_step(name: str, command: list[str], limit: float, cwd: Path):
    """The step's process, started: (name, process, start time, limit), or its row if not run."""
    if limit <= 0:
        print(f"== {name}: not run, the --budget is spent", flush=True)
        return {"step": name, "rc": "no time", "seconds": 0.0, "limit_s": 0}
    shown = " ".join(command)
    print(f"== {name}: {shown if len(shown) < 400 else shown[:400] + ' ...'}", flush=True)
    # Its own process group: a step that runs out of time is killed with everything it started
    # (pytest's train.py runs, DataLoader workers), which would otherwise hold the GPU.
    proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    return name, proc, time.perf_counter(), limit


def finish_step(started) -> dict:
    """Wait for a started step until its limit (counted from its start); -> its row."""
    if isinstance(started, dict):
        return started
    name, proc, start, limit = started
    try:
        rc = proc.wait(timeout=max(0.0, start + limit - time.perf_counter()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    row = {"step": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit)}
    print(f"== {name}: rc {rc} in {row['seconds']} s", flush=True)
    return row


def run_step(name: str, command: list[str], limit: float, cwd: Path) -> dict:
    return finish_step(start_step(name, command, limit, cwd))


def run_suite(steps, limit_of, cwd: Path, record) -> list[dict]:
    """Every step in order; steps in ALONGSIDE start at once and run beside the next step that is
    not one of them, and are waited for after it. `record(rows)` after each step ends."""
    rows, beside = [], []
    for name, command, limit in steps:
        started = start_step(name, command, limit_of(limit), cwd)
        if name in ALONGSIDE:
            beside.append(started)
            continue
        row = finish_step(started)
        rows += [finish_step(other) for other in beside] + [row]
        beside = []
        record(rows)
    if beside:
        rows += [finish_step(other) for other in beside]
        record(rows)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", action="store_true", help="run gpu-bench's steps instead of gpu-check's")
    parser.add_argument("--with-bench", action="store_true", help="gpu-check's steps, then gpu-bench's")
    parser.add_argument("--g-iters", type=int, default=60, help="train.py length in G iterations")
    parser.add_argument("--only", nargs="+", help="run only the steps whose names start with these words")
    parser.add_argument("--limit", type=int, help="time limit in seconds for each chosen step, instead of its own "
                                                  "(to rerun one step that ran out of time)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run; steps that no longer fit are not run")
    parser.add_argument("--archive", type=Path, help="tar.gz of every *-cuda result, rewritten after each step")
    parser.add_argument("--plan", action="store_true",
                        help="print every step's rows, cold compiles and estimated H100 time; run nothing")
    args = parser.parse_args()
    if args.bench and args.with_bench:
        parser.error("--bench runs gpu-bench alone; --with-bench runs gpu-check then gpu-bench: choose one")
    if args.plan:
        with tempfile.TemporaryDirectory() as tmp:
            print(describe_plan(chosen_suites(args, Path(tmp), Path(tmp) / "inception.pth")))
        return
    if not torch.cuda.is_available():
        sys.exit("error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is False on this machine)")
    deadline = time.monotonic() + args.budget if args.budget else None
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_random_inception_weights(work / "inception.pth")  # real code path, meaningless numbers
        suites = chosen_suites(args, work, weights)
        print(describe_plan(suites), flush=True)
        for suite, steps in suites:
            # A rerun of some steps is recorded apart: gpu_check-cuda stays the record of one whole run.
            name = suite + ("_partial" if args.only else "")
            start = time.perf_counter()

            def record(rows, name=name, n_steps=len(steps), start=start):
                # After every step, so a run cut off part-way still records what it did.
                save(name, rows, n_steps, args.g_iters, args.budget, time.perf_counter() - start)
                if args.archive:
                    archive_results(args.archive)

            rows = run_suite(steps, lambda limit: step_limit(args.limit or limit, deadline), work, record)
            stem = save(name, rows, len(steps), args.g_iters, args.budget, time.perf_counter() - start)
            print(stem.with_suffix(".md").read_text())
            print(f"wrote {stem}.json and {stem}.md")
            passed = passed and all(row["rc"] == 0 for row in rows) and len(rows) == len(steps)
    sys.exit(0 if passed else 1)


def chosen_suites(args, work: Path, weights: Path) -> list[tuple[str, list]]:
    """[(suite, steps)] that the options choose: gpu-check's, gpu-bench's or both, --only applied."""
    suites = [("gpu_bench", bench_steps())] if args.bench else [("gpu_check", check_steps(work, weights, args.g_iters))]
    if args.with_bench:
        suites.append(("gpu_bench", bench_steps()))
    return [(suite, [s for s in steps if not args.only or any(s[0].startswith(word) for word in args.only)])
            for suite, steps in suites]


def describe_plan(suites: list[tuple[str, list]]) -> str:
    """Each suite's plan and estimate; Triton specialisations compiled by an earlier suite are warm."""
    compiled: set = set()
    return "\n".join(describe(suite, plan_suite(steps, compiled)) for suite, steps in suites)


def step_limit(limit: float, deadline: float | None) -> float:
    """The step's own limit, or what is left of the budget if less; 0 (not run) when less is left
    than the step's limit and MIN_STEP_S both."""
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    return min(limit, left) if left >= min(limit, MIN_STEP_S) else 0


def archive_results(path: Path) -> None:
    """Every CUDA result file in one tar.gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for result in sorted(RESULTS.glob("*-cuda.*")):
            tar.add(result, arcname=result.name)
    partial.replace(path)  # never a half-written archive, even if the call ends mid-write


def save(name: str, rows: list[dict], n_steps: int, g_iters: int, budget: float | None, wall_s: float) -> Path:
    """The suite's record; wall_s, not the sum of the steps' seconds, is its time (a step in
    ALONGSIDE overlaps the next)."""
    table = markdown_table(rows, [("step", "step"), ("rc", "exit code"), ("seconds", "seconds"), ("limit_s", "limit s")])
    passed = len(rows) == n_steps and all(row["rc"] == 0 for row in rows)
    return write_results(name, torch.device("cuda"), rows, table + f"\n\nWall time: {wall_s:.0f} s.",
                         {"passed": passed, "steps_run": len(rows), "steps": n_steps, "g_iters": g_iters,
                          "budget_s": budget, "wall_s": round(wall_s, 1)})


if __name__ == "__main__":
    main()
