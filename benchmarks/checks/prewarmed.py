"""Scripts started without paying for their imports: a fork of one server process that has imported
the script's modules once.

    started = start(ROOT / "train.py", ["--config", "configs/demo.yaml"], cwd=run_dir, log=run_dir / "log")
    started.send_signal(signal.SIGTERM); started.wait()

Importing train.py (torch, Lightning, torchvision through torchmetrics) costs 5-7 CPU-seconds on a
small CPU, more than a short training run does; a check that restarts train.py many times (a kill
and resume at a time) or a suite that starts it dozens of times pays that again at every start.
Here every start is a fork of a server that imported `biggan_smyrf.cli` (multiprocessing's
forkserver, made once per calling process): the child is a process of its own (its own pid,
signals, exit code, working folder and environment) and runs the script from its `__main__` on,
as `python script.py args` does; only the interpreter's start and the imports are shared. The
server has started no thread, so the fork is safe (torch's thread pools start at first use).

What differs from a fresh interpreter: environment variables read at import time by the preloaded
modules (torch's OMP_NUM_THREADS, for one) are the caller's at the server's start, not the child's.
And as at any multiprocessing start, the child imports the caller's main module again first, so
that module must keep its work under `if __name__ == "__main__":` (faults.py does).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ["biggan_smyrf.cli"]
_context = None


def context():
    """The forkserver context, its server preloading PRELOAD (the server starts at the first start)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


@dataclass(frozen=True)
class Module:
    """A program given as a module, `python -m name`, where `start` takes a script's path."""

    name: str


def _run_program(program: str | Module, args: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """In the forked child: what the interpreter does for `python script args` (or `python -m
    module args`) before running it."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
    # sys.path as the interpreter makes it: the script's folder (the working folder for -m) first,
    # then PYTHONPATH's entries.
    first = os.getcwd() if isinstance(program, Module) else str(Path(program).parent)
    extra = [first, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    sys.path[:] = extra + [p for p in sys.path if p not in extra]
    sys.argv = [program, *args]
    try:
        if isinstance(program, Module):
            runpy.run_module(program.name, run_name="__main__", alter_sys=True)  # sets sys.argv[0] to its file
        else:
            runpy.run_path(program, run_name="__main__")
    finally:
        atexit._run_exitfuncs()  # the interpreter runs these at exit; multiprocessing's child would not
        sys.stdout.flush(), sys.stderr.flush()


class Started:
    """A started script, with the parts of subprocess.Popen's interface the checks use. Its output
    goes to files (a forked child cannot inherit the caller's pipes through the server)."""

    def __init__(self, process, stdout: Path, stderr: Path):
        self.process, self.stdout_path, self.stderr_path = process, stdout, stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self):
        return self.process.exitcode  # -N when killed by signal N, as Popen's

    def poll(self):
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        return self.returncode

    def output(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def errors(self) -> str:
        if self.stderr_path == self.stdout_path or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text()

    def wait_for_output(self, text: str, timeout: float) -> bool:
        """True once `text` is in the output; False if the script ended first or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.poll() is not None or time.monotonic() > deadline:
                return text in self.output()
            time.sleep(0.02)
        return True


def start(script: Path | Module, args: list[str], cwd: Path, log: Path, env: dict | None = None,
          stderr: Path | None = None) -> Started:
    """`python script args` in `cwd` with environment `env` (default: this process's), its output
    in `log` (stderr too, unless `stderr` names another file), appended."""
    program = script if isinstance(script, Module) else str(script)
    process = context().Process(target=_run_program, args=(
        program, list(args), str(cwd), dict(os.environ if env is None else env), str(log), str(stderr or log)))
    process.start()
    return Started(process, Path(log), Path(stderr or log))


def run(script: Path | Module, args: list[str], cwd: Path, env: dict | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output=True, text=True) for a started script: waits for it, kills it at
    `timeout` (raising subprocess.TimeoutExpired), returns its stdout and stderr."""
    with tempfile.TemporaryDirectory(prefix="prewarmed-") as logs:
        started = start(script, args, cwd, Path(logs) / "out", env, stderr=Path(logs) / "err")
        try:
            started.wait(timeout)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.wait()
            raise
        texts = started.output(), started.errors()
    program = ["-m", script.name] if isinstance(script, Module) else [str(script)]
    return subprocess.CompletedProcess([sys.executable, *program, *args], started.returncode, *texts)
