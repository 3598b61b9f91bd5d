"""`make gpu-check`: every CUDA check of issue #13 in one run on one GPU, with each step's exit code.

    make gpu-wheels                 # here (internet): torch-fidelity + jsonargparse wheels into .whl/
    make gpu-check                  # there: installs .whl/ to /tmp/site if needed, then runs this

Steps, each a subprocess with its own time limit, so one failure never hides the others:
  1. the CUDA tests (`pytest -m cuda`)
  2. the attention tables on CUDA, bf16 and fp32 (benchmarks/attention.py: dense SDPA vs SMYRF with the
     triton cluster kernel, 16,384 and 65,536 tokens, batch 8 and 32)
  3. the training-step table at 128 px, batch 32: fp32, bf16-mixed and 16-mixed rows (benchmarks/models.py)
  4. train.py on configs/celebahq128_smyrf.yaml (built-in faces, ~60 G iterations, bf16-mixed), with
     validation metrics from a random-weights Inception file, diagnostics and the dense comparison on
  5. sample.py --device cuda on its checkpoint
Writes benchmarks/results/gpu_check-cuda.{json,md} (card, per-step rc and seconds); steps 2 and 3
write their own attention*-cuda and train_step-cuda results. Budget: about 6 minutes on an H100; the steps' limits add up to 9 minutes, under one device call's 10.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import markdown_table, write_results  # noqa: E402

from biggan_smyrf.metrics.random_weights import write_random_inception_weights  # noqa: E402

RUN = "gpu_check"


def steps(work: Path, weights: Path, g_iters: int) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds)."""
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
    return [
        ("cuda tests", [py, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests")], 150),
        *[(f"attention table {dtype}", [py, str(ROOT / "benchmarks" / "attention.py"), "--device", "cuda",
                                        "--dtype", dtype, "--sizes", "16384", "65536", "--batches", "8", "32",
                                        "--methods", "dense SDPA", "smyrf 4x2048", "ours 4x2048"], 70)
          for dtype in ("bfloat16", "float32")],
        ("step table", [py, str(ROOT / "benchmarks" / "models.py"), "--table", "step", "--device", "cuda",
                        "--batches", "32", "--reps", "5", "--variants", "dense@64", "dense@128 flash",
                        "smyrf@128 paper 4x2048", "smyrf@128 ours 4x2048"], 90),
        ("train.py celebahq128_smyrf", train, 120),
        ("sample.py --device cuda", [py, str(ROOT / "sample.py"), "--ckpt", str(ckpt), "--out", str(work / "samples"),
                                     "--n", "64", "--device", "cuda", "--attention", "smyrf"], 40),
    ]


def run_step(name: str, command: list[str], limit: int, cwd: Path) -> dict:
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        rc = subprocess.run(command, cwd=cwd, timeout=limit, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    row = {"step": name, "rc": rc, "seconds": round(time.perf_counter() - start, 1), "limit_s": limit}
    print(f"== {name}: rc {rc} in {row['seconds']} s", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--g-iters", type=int, default=60, help="train.py length in G iterations")
    parser.add_argument("--only", nargs="+", help="run only the steps whose names start with these words")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is False on this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = write_random_inception_weights(work / "inception.pth")  # real code path, meaningless numbers
        rows = [run_step(name, command, limit, work) for name, command, limit in steps(work, weights, args.g_iters)
                if not args.only or any(name.startswith(word) for word in args.only)]
    table = markdown_table(rows, [("step", "step"), ("rc", "exit code"), ("seconds", "seconds"), ("limit_s", "limit s")])
    print(table)
    passed = all(row["rc"] == 0 for row in rows)
    stem = write_results(RUN, torch.device("cuda"), rows, table, {"passed": passed, "g_iters": args.g_iters})
    print(f"wrote {stem}.json and {stem}.md")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
