"""`make gpu-check` / `make gpu-bench`: the CUDA checks and measurements, each
step a subprocess with its own time limit and exit code, so one failure never hides the others.

    make gpu-wheels                 # here (internet): torch-fidelity + jsonargparse wheels into .whl/
    make gpu-check                  # there: installs .whl/ into .gpu-site/ if needed, then runs this
    make gpu-bench                  # there, after gpu-check: the profile and speed measurements

gpu-check (about 6 minutes on an H100):
  1. the CUDA tests (`pytest -m cuda`)
  2. the attention table on CUDA (benchmarks/attention.py -> attention-cuda): dense SDPA vs SMYRF
     (paper recipe, library default at 4x2048 and 4x4096) through the permuted Triton route,
     16,384 and 65,536 tokens, batch 8 and 32, bf16 and fp32
  3. the training-step table at 128 px, batch 32 (-> train_step-cuda): fp32, bf16-mixed and
     16-mixed rows (SMYRF also through the previous chunked CUDA route), and bf16 with channels_last
  4. train.py on configs/celebahq128_smyrf.yaml (built-in faces, ~60 G iterations, bf16-mixed), with
     validation metrics from a random-weights Inception file, diagnostics and the dense comparison on
  5. sample.py --device cuda on its checkpoint
gpu-bench (about 6 minutes):
  1. profile of a G iteration per op group (benchmarks/profile_step.py -> profile_step-cuda)
  2. one validation of the paper config: 10,000 samples x (SMYRF, dense) (-> validation_10k-cuda)
  3. block sizes of the permuted-round Triton kernels (benchmarks/tune_rounds.py -> tune_rounds-cuda)
  4. dense@64 steps with cuDNN autotuning off, fp32 and bf16 (-> train_step_no_autotune-cuda)
  5. torch.compile rows of the step table (-> train_step_compile-cuda)
Each writes benchmarks/results/<name>-cuda.{json,md} (card, per-step rc and seconds): gpu_check-cuda
and gpu_bench-cuda list the steps.

On a lent machine (one call of at most 10 minutes, at most 8 files back), run both in one call:
    python3 -m benchmarks.checks.gpu_check --with-bench --budget 560 --archive $OUT/results.tar.gz
--budget caps the whole run: each step gets what is left if that is less than its own limit, and
a step with under a minute left is recorded as not run ("rc": "no time"), so the run ends inside
the call. --archive rewrites one tar.gz of every *-cuda result after each step, so a call that is
cut off still brings back what was measured.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, benchmark_parser, markdown_table, write_results  # noqa: E402

from biggan_smyrf.metrics.random_weights import write_random_inception_weights  # noqa: E402

RUN = "gpu_check"
# A step given less than this by --budget is not started: it could not finish.
MIN_STEP_S = 60


def module(name: str) -> list[str]:
    """`python -m benchmarks.<name>`: a measurement of this package."""
    return [sys.executable, "-m", f"benchmarks.{name}"]


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
    step_table = [*module("models"), "--table", "step", "--device", "cuda", "--batches", "32",
                  "--reps", "5", "--variants", "dense@64", "dense@128 flash", "smyrf@128 paper 4x2048",
                  "smyrf@128 ours 4x2048", "smyrf@128 ours 4x2048 chunked"]
    return [
        ("cuda tests", [py, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests")], 195),
        ("attention table", [*module("attention"), "--device", "cuda",
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


def bench_steps() -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of gpu-bench."""
    return [
        # "sn per layer": PyTorch's spectral norm, to see what running it together saves on the GPU.
        ("profile dense@64", [*module("profile_step"), "--device", "cuda", "--variants", "dense@64",
                              "--dtypes", "fp32", "bf16", "--speeds", "plain", "nhwc", "sn per layer"], 75),
        ("profile smyrf@128", [*module("profile_step"), "--device", "cuda", "--variants",
                               "smyrf@128 ours 4x2048", "--dtypes", "bf16", "--name", "profile_step_smyrf128"], 40),
        ("validation 10k x 2 kinds", [*module("validation"), "--device", "cuda", "--n", "10000",
                                      "--attention-resolution", "128", "--kinds", "smyrf", "dense", "--batch-size", "64",
                                      "--no-standalone", "--name", "validation_10k"], 90),
        ("tune permuted-round blocks", [*module("tune_rounds")], 120),
        # The same step as gpu-check's table with cuDNN's default heuristics: what autotuning buys.
        ("step table no cudnn autotune", [*module("models"), "--table", "step", "--device", "cuda",
                                          "--batches", "32", "--reps", "5", "--variants", "dense@64",
                                          "--dtypes", "fp32", "bf16", "--cudnn-benchmark", "false",
                                          "--name", "train_step_no_autotune"], 45),
        # Last: compiling takes minutes, and a timeout here loses nothing measured before.
        ("step table compile", [*module("models"), "--table", "step", "--device", "cuda", "--batches", "32",
                                "--reps", "5", "--variants", "dense@64", "--dtypes", "bf16",
                                "--speeds", "compile", "nhwc+compile", "--name", "train_step_compile"], 200),
    ]


def run_step(name: str, command: list[str], limit: float, cwd: Path) -> dict:
    if limit <= 0:
        print(f"== {name}: not run, the --budget is spent", flush=True)
        return {"step": name, "rc": "no time", "seconds": 0.0, "limit_s": 0}
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    # Its own process group: a step that runs out of time is killed with everything it started
    # (pytest's train.py runs, DataLoader workers), which would otherwise hold the GPU.
    proc = subprocess.Popen(command, cwd=cwd, env=step_env(), start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    row = {"step": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1), "limit_s": round(limit)}
    print(f"== {name}: rc {rc} in {row['seconds']} s", flush=True)
    return row


def step_env() -> dict:
    """The steps run in a temporary folder: the repository and PYTHONPATH's folders as absolute paths."""
    paths = [str(ROOT), *(str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def build_parser():
    parser = benchmark_parser(__doc__, device=False, threads=False)
    parser.add_argument("--bench", action="store_true", help="run gpu-bench's steps instead of gpu-check's")
    parser.add_argument("--with-bench", action="store_true", help="gpu-check's steps, then gpu-bench's")
    parser.add_argument("--g-iters", type=int, default=60, help="train.py length in G iterations")
    parser.add_argument("--only", nargs="+", help="run only the steps whose names start with these words")
    parser.add_argument("--limit", type=int, help="time limit in seconds for each chosen step, instead of its own "
                                                  "(to rerun one step that ran out of time)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run; steps that no longer fit are not run")
    parser.add_argument("--archive", type=Path, help="tar.gz of every *-cuda result, rewritten after each step")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    if args.bench and args.with_bench:
        parser.error("--bench runs gpu-bench alone; --with-bench runs gpu-check then gpu-bench: choose one")
    if not torch.cuda.is_available():
        sys.exit("error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is False on this machine)")
    deadline = time.monotonic() + args.budget if args.budget else None
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_random_inception_weights(work / "inception.pth")  # real code path, meaningless numbers
        suites = [("gpu_bench", bench_steps())] if args.bench else [("gpu_check", check_steps(work, weights, args.g_iters))]
        if args.with_bench:
            suites.append(("gpu_bench", bench_steps()))
        for suite, steps in suites:
            # A rerun of some steps is recorded apart: gpu_check-cuda stays the record of one whole run.
            name = suite + ("_partial" if args.only else "")
            chosen = [s for s in steps if not args.only or any(s[0].startswith(word) for word in args.only)]
            rows = []
            for step, command, limit in chosen:
                rows.append(run_step(step, command, step_limit(args.limit or limit, deadline), work))
                # After every step, so a run cut off part-way still records what it did.
                stem = save(name, rows, len(chosen), args.g_iters, args.budget)
                if args.archive:
                    archive_results(args.archive)
            print(stem.with_suffix(".md").read_text())
            print(f"wrote {stem}.json and {stem}.md")
            passed = passed and all(row["rc"] == 0 for row in rows) and len(rows) == len(chosen)
    sys.exit(0 if passed else 1)


def step_limit(limit: float, deadline: float | None) -> float:
    """The step's own limit, or what is left of the budget if less; 0 (not run) when less is left
    than the step's limit and MIN_STEP_S both."""
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    return min(limit, left) if left >= min(limit, MIN_STEP_S) else 0


def archive_results(path: Path) -> None:
    """Every CUDA result file in one tar.gz (the device tool brings back at most 8 files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for result in sorted(RESULTS.glob("*-cuda.*")):
            tar.add(result, arcname=result.name)
    partial.replace(path)  # never a half-written archive, even if the call ends mid-write


def save(name: str, rows: list[dict], n_steps: int, g_iters: int, budget: float | None) -> Path:
    table = markdown_table(rows, [("step", "step"), ("rc", "exit code"), ("seconds", "seconds"), ("limit_s", "limit s")])
    passed = len(rows) == n_steps and all(row["rc"] == 0 for row in rows)
    return write_results(name, torch.device("cuda"), rows, table,
                         {"passed": passed, "steps_run": len(rows), "steps": n_steps, "g_iters": g_iters,
                          "budget_s": budget})


if __name__ == "__main__":
    main()
