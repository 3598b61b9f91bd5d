"""Stopping on a signal without losing work: Ctrl-C, SIGTERM and SLURM's pre-timeout signal.

Lightning's signal connector turns SIGTERM into `SIGTERMException` after the next *batch*; here a
batch is one D micro-step, and a checkpoint written in the middle of a G iteration cannot resume
exactly. So while training runs, `StopOnSignal` takes SIGINT, SIGTERM and, when Lightning's
`SLURMEnvironment` auto-requeues, its `requeue_signal` (SIGUSR1 by default): the first one lets
the G iteration in progress finish, then last.ckpt is written (atomically, by the trainer's
CheckpointIO), the resume command is printed, the job is requeued under SLURM, and Lightning's own
`SIGTERMException` ends the run with exit status 128 + the signal number (130 for Ctrl-C, 143 for
SIGTERM). A second Ctrl-C aborts at once: the checkpoint being written, if any, is dropped and
last.ckpt stays the previous one. Validation in progress is finished first (its time counts
against a scheduler's grace period).

In DDP every rank learns of a signal any rank received at the next G iteration's end (one
all-reduce of a flag per G iteration), so all ranks stop at the same iteration.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException


def slurm_requeue_signal(trainer: "pl.Trainer") -> Optional[int]:
    """The signal SLURM sends before the time limit when Lightning requeues the job, else None."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


def requeued_slurm_job() -> bool:
    """A SLURM job started again by `scontrol requeue` (SLURM counts the restarts)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and SLURMEnvironment.detect()


def slurm_job_id() -> str:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


def requeue_slurm_job() -> None:
    """`scontrol requeue <job>`: the job starts again with the same command, which then resumes (cli.BigGANCLI._parse_ckpt_path)."""
    job = slurm_job_id()
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except FileNotFoundError:
        status = None
    if status == 0:
        rank_zero_info(f"requeued SLURM job {job}")
    else:
        rank_zero_warn(f"could not requeue SLURM job {job} (scontrol requeue: {status}); resume it by hand")


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line `argv` that continues its run: any --ckpt_path replaced by `last`."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg == "--ckpt_path" or arg.startswith("--ckpt_path="):
            skip = arg == "--ckpt_path"
            continue
        kept.append(arg)
    return [*kept, "--ckpt_path", "last"]


class StopOnSignal(pl.Callback):
    """See the module docstring. last: the run's last.ckpt; resume_command: printed on a stop."""

    def __init__(self, last: Path, resume_command: str):
        self.last, self.resume_command = Path(last), resume_command
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module):
        # Lightning has registered its handlers by now (just before the training loop); ours
        # replace them for the loop and give them back at its end.
        signals = [signal.SIGINT, signal.SIGTERM]
        requeue = slurm_requeue_signal(trainer)
        if requeue is not None:
            signals.append(requeue)
        self._requeue = requeue
        for signum in signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            self.restore_handlers()
            raise KeyboardInterrupt  # the second Ctrl-C: abort, write nothing
        if self.received is None:
            self.received = signum
            again = " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""
            rank_zero_info(f"\n{signal.Signals(signum).name} received: finishing the G iteration in progress, "
                           f"then writing {self.last}{again}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module._micro_step != 0:
            return  # inside a G iteration
        received = self.received is not None
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received:
            self.stop(trainer, pl_module)

    def stop(self, trainer, pl_module):
        trainer.save_checkpoint(self.last, weights_only=False)
        signum = self.received or signal.SIGTERM  # another rank's signal
        requeue = self._requeue is not None and signum == self._requeue
        then = "the job is requeued and resumes by itself; by hand, " if requeue else ""
        rank_zero_info(f"stopped by {signal.Signals(signum).name} after G iteration {pl_module.g_iters}: "
                       f"checkpoint {self.last}; {then}resume with: {self.resume_command}")
        if requeue and trainer.is_global_zero:
            requeue_slurm_job()
        self.restore_handlers()
        raise SIGTERMException(128 + signum)

    def restore_handlers(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module):
        self.restore_handlers()

    def on_exception(self, trainer, pl_module, exception):
        self.restore_handlers()
