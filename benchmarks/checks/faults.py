"""Faults lose nothing: a training run killed with SIGKILL again and again, and stopped by SIGTERM
and Ctrl-C (SIGINT), ends as if never interrupted.

    python -m benchmarks.checks.faults # 10 kills, 3 SIGTERMs, 3 SIGINTs; demo at ch 8, 40 G iterations
    python -m benchmarks.checks.faults --kills 20 --g-iters 60 --ckpt-every 2

Trains the demo config once without interruption (the reference), then the same run again,
killing it `--kills` times in a row and resuming it with `--ckpt_path last` after each kill. Every
kill comes after the attempt has written at least one new checkpoint (so each resume makes
progress); odd kills land at a random moment up to one checkpoint interval later, even ones the
moment a checkpoint write has begun (the `.partial` file of `AtomicCheckpointIO` appears). After
every kill `last.ckpt` must load. Then `--sigterms` SIGTERM and `--sigints` SIGINT rounds, in turn:
each resumes with no checkpoint interval of its own (only the signal writes one) and a sample grid
per G iteration (which shows how many are done), and gets its signal at a random moment up to one
checkpoint interval after its first new G iteration; it must exit with 128 + the signal number,
with last.ckpt at a whole G iteration no earlier than the last one done when the signal was sent.
At the end the run's training state (every tensor, counters, data position:
`biggan_smyrf.training.resume_check`) must equal the reference's bit for bit.
Results: `results/faults-cpu.json` and `.md`.
"""
from __future__ import annotations

import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common  # noqa: E402
from benchmarks.checks import prewarmed  # noqa: E402
from benchmarks.common import ROOT, benchmark_parser, markdown_table, write_results  # noqa: E402

from biggan_smyrf.training.checkpoint_io import partial_path  # noqa: E402
from biggan_smyrf.training.resume_check import training_state, training_state_differences  # noqa: E402

POLL_S = 0.0  # a write in progress is looked for without pause: a small checkpoint is written in a few ms


def train_arguments(args, run: str, resume: bool, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "demo.yaml"), f"--run={run}",
        f"--model.generator.ch={args.ch}", f"--model.discriminator.ch={args.ch}", f"--data.batch_size={args.batch_size}",
        "--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--seed_everything={args.seed}", f"--model.loop.max_g_iters={args.g_iters}",
        f"--model.loop.ckpt_every={args.ckpt_every}", "--model.loop.sample_every=1000000",
        "--model.loop.val_every=1000000", *(["--ckpt_path=last"] if resume else []), *extra,
    ]


def start(args, workdir: Path, run: str, resume: bool, log: Path, extra: tuple[str, ...] = ()):
    """train.py started in `workdir`, its output appended to `log`: a new interpreter with
    --fresh-interpreter, else a fork of one that has imported it (prewarmed.py), which spares each
    of the check's restarts the 5-7 CPU-seconds of imports and changes nothing a kill can hit."""
    train_args = train_arguments(args, run, resume, extra)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if not args.fresh_interpreter:
        return prewarmed.start(ROOT / "train.py", train_args, workdir, log, env)
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *train_args], cwd=workdir, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def wait_for_new_checkpoint(proc: subprocess.Popen, ckpt: Path, since: int) -> bool:
    """True once `ckpt` was replaced after `since`; False if the process ended first."""
    while mtime(ckpt) == since:
        if proc.poll() is not None:
            return mtime(ckpt) != since
        time.sleep(0.02)
    return True


def wait_for_write(proc: subprocess.Popen, ckpt: Path, timeout: float) -> bool:
    """True when a checkpoint write is in progress (its `.partial` file exists), False at `timeout`."""
    partial, deadline = partial_path(ckpt), time.monotonic() + timeout
    while not partial.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    return True


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def reference_run(args, workdir: Path, log: Path) -> tuple[Path, float]:
    """The uninterrupted run, and the median time between its checkpoints (seconds)."""
    ckpt = workdir / "checkpoints" / "reference" / "last.ckpt"
    proc, times, last = start(args, workdir, "reference", False, log), [], 0
    while proc.poll() is None:
        if mtime(ckpt) != last:
            last = mtime(ckpt)
            times.append(time.monotonic())
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {proc.returncode}); see {log}")
    gaps = [b - a for a, b in zip(times, times[1:])]
    return ckpt, statistics.median(gaps) if gaps else 1.0


def killed_runs(args, workdir: Path, interval: float, log: Path, rng: random.Random) -> tuple[Path, list[dict], int]:
    """Kills and resumes until `--kills` kills are done, then lets the run finish."""
    ckpt = workdir / "checkpoints" / "faulty" / "last.ckpt"
    rows = []
    while len(rows) < args.kills:
        mode = "during a write" if len(rows) % 2 else "random"
        proc = start(args, workdir, "faulty", ckpt.exists(), log)
        started = time.monotonic()
        if not wait_for_new_checkpoint(proc, ckpt, mtime(ckpt)):
            raise SystemExit(f"attempt {len(rows) + 1}: train.py exited ({proc.returncode}) before a checkpoint; see {log}")
        if proc.poll() is not None:  # finished before this kill: --g-iters is too small for --kills
            return ckpt, rows, proc.returncode
        checkpointed = time.monotonic()
        if mode == "random":
            time.sleep(rng.uniform(0, interval))
        elif wait_for_write(proc, ckpt, timeout=3 * interval):
            # The machine's speed changes (other work on it): keep the interval up to date, so that
            # random kills stay within about one checkpoint interval of the last checkpoint.
            interval = time.monotonic() - checkpointed
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        if proc.wait() != -signal.SIGKILL:  # it finished first: --g-iters is too small for --kills
            return ckpt, rows, proc.returncode
        row = {"kill": len(rows) + 1, "mode": mode, "seconds_alive": round(time.monotonic() - started, 2),
               "write_interrupted": partial_path(ckpt).exists()}
        try:
            state = load(ckpt)["biggan_smyrf"]
            row.update(readable=True, resumes_from_g_iter=state["g_iters"])
        except Exception as err:  # the claim under test: this never happens
            row.update(readable=False, error=f"{type(err).__name__}: {err}")
        rows.append(row)
        print(row, flush=True)
    rows += signalled_runs(args, workdir, ckpt, interval, log, rng)
    proc = start(args, workdir, "faulty", True, log)
    return ckpt, rows, proc.wait()


# Signal rounds: only the signal writes a checkpoint, and a sample grid per G iteration shows which are done.
SIGNAL_ROUND = ("--model.loop.ckpt_every=1000000", "--model.loop.sample_every=1")


def done_g_iters(run: Path) -> int:
    grids = sorted((run / "samples").glob("G_ema_*.png"))
    return int(grids[-1].stem.rsplit("_", 1)[1]) if grids else 0


def signalled_runs(args, workdir: Path, ckpt: Path, interval: float, log: Path, rng: random.Random) -> list[dict]:
    """SIGTERM and SIGINT rounds, alternating; each resumes the run and is stopped by its signal."""
    pairs = itertools.zip_longest([signal.SIGTERM] * args.sigterms, [signal.SIGINT] * args.sigints)
    rows = []
    for signum in [s for pair in pairs for s in pair if s is not None]:
        resumed_from = load(ckpt)["biggan_smyrf"]["g_iters"]
        proc, started = start(args, workdir, "faulty", True, log, SIGNAL_ROUND), time.monotonic()
        while done_g_iters(ckpt.parent) <= resumed_from:  # training runs: one new G iteration done
            if proc.poll() is not None:
                raise SystemExit(f"a {signum.name} round: train.py exited ({proc.returncode}) early; see {log}")
            time.sleep(0.02)
        time.sleep(rng.uniform(0, interval))
        done = done_g_iters(ckpt.parent)
        sent = time.monotonic()
        proc.send_signal(signum)
        code = proc.wait()
        state = load(ckpt)["biggan_smyrf"]
        row = {"kill": args.kills + len(rows) + 1, "mode": signum.name, "seconds_alive": round(sent - started, 2),
               "seconds_to_exit": round(time.monotonic() - sent, 2), "exit_code": code,
               "done_at_signal": done, "resumes_from_g_iter": state["g_iters"],
               "whole_g_iteration": state["micro_step"] == 0, "readable": True, "write_interrupted": False,
               "ok": code == 128 + signum and state["micro_step"] == 0 and state["g_iters"] >= done}
        rows.append(row)
        print(row, flush=True)
    return rows


def build_parser():
    parser = benchmark_parser(__doc__, device=False, threads=False)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--sigterms", type=int, default=3, help="SIGTERM rounds after the kills")
    parser.add_argument("--sigints", type=int, default=3, help="SIGINT (Ctrl-C) rounds after the kills")
    parser.add_argument("--g-iters", type=int, default=40, help="run length in G iterations")
    parser.add_argument("--ckpt-every", type=int, default=1, help="G iterations between checkpoints")
    parser.add_argument("--ch", type=int, default=8, help="G and D width")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="training seed, and the seed of the kill times")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs are written (default: a temp dir)")
    parser.add_argument("--name", default="faults", help="results/<name>-cpu.{json,md}")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS)
    parser.add_argument("--fresh-interpreter", action="store_true",
                        help="start every train.py in a new interpreter (default: forks of one that imported it)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    common.RESULTS = args.results_dir

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    log = workdir / "train.log"
    log.unlink(missing_ok=True)
    reference, interval = reference_run(args, workdir, log)
    faulty, rows, final_exit = killed_runs(args, workdir, interval, log, random.Random(args.seed))
    differences = training_state_differences(load(reference), load(faulty)) if final_exit == 0 else ["(no final checkpoint)"]
    signalled = [r for r in rows if "ok" in r]
    summary = {
        "kills": len(rows) - len(signalled),
        "kills_during_a_write": sum(r["write_interrupted"] for r in rows),
        "unreadable_checkpoints": sum(not r["readable"] for r in rows),
        "signal_stops": len(signalled),
        "signal_stops_not_ok": sum(not r["ok"] for r in signalled),
        "g_iters_lost_to_signals": sum(max(0, r["done_at_signal"] - r["resumes_from_g_iter"]) for r in signalled),
        "max_seconds_from_signal_to_exit": max((r["seconds_to_exit"] for r in signalled), default=None),
        "final_run_exit_code": final_exit,
        "final_g_iters": load(faulty)["biggan_smyrf"]["g_iters"] if final_exit == 0 else None,
        "values_compared": len(training_state(load(reference))),
        "values_different_from_uninterrupted": len(differences),
        "different": differences[:20],
        "seconds_between_checkpoints_in_reference": round(interval, 2),
        "wall_s": round(time.monotonic() - began, 1),
    }
    print(summary)
    table = markdown_table(rows, [("kill", "kill"), ("mode", "when"), ("seconds_alive", "s after start"),
                                  ("write_interrupted", "interrupted a write"), ("readable", "last.ckpt loads"),
                                  ("done_at_signal", "G iters done at the signal"), ("exit_code", "exit code"),
                                  ("seconds_to_exit", "s from signal to exit"), ("resumes_from_g_iter", "resumes from G iter")])
    text = (f"{summary['kills']} SIGKILLs of one demo run (ch {args.ch}, batch {args.batch_size}, {args.g_iters} G iterations, "
            f"a checkpoint every {args.ckpt_every}), {summary['kills_during_a_write']} of them during a checkpoint write; "
            f"unreadable checkpoints: {summary['unreadable_checkpoints']}. Then {summary['signal_stops']} stops by "
            f"SIGTERM/SIGINT, each resumed with only the signal writing a checkpoint: G iterations lost "
            f"{summary['g_iters_lost_to_signals']}, stops with a wrong exit code or a partial G iteration "
            f"{summary['signal_stops_not_ok']}, at most {summary['max_seconds_from_signal_to_exit']} s from signal to exit. "
            f"Final run exit code {final_exit}; "
            f"values of the final training state (tensors, counters, data position) that differ from the "
            f"uninterrupted run's: {summary['values_different_from_uninterrupted']} of {summary['values_compared']}.\n\n{table}")
    write_results(args.name, torch.device("cpu"), rows, text, {**vars(args), "workdir": str(workdir), "results_dir": str(args.results_dir), **summary})
    ok = (final_exit == 0 and not differences and not summary["unreadable_checkpoints"] and summary["kills"] == args.kills
          and summary["signal_stops"] == args.sigterms + args.sigints and not summary["signal_stops_not_ok"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
