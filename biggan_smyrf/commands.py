"""Commands printed for the user to copy (hints, tips), spelled so they run as printed.

After the README's set-up only the project's virtual environment has torch, so a bare `python` or
`tensorboard` on the PATH may not be the right one: the commands use the running interpreter and the
scripts beside it, relative to the working directory when they lie inside it.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Union

REPO_ROOT = Path(__file__).resolve().parents[1]


def shown_path(path: Union[str, Path]) -> str:
    """`path` relative to the working directory when it lies inside it, else absolute; shell-quoted."""
    path = Path(os.path.abspath(path))  # abspath, not resolve: a venv's python is a symlink to keep
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def python_command() -> str:
    """The running interpreter, e.g. `.venv/bin/python`."""
    return shown_path(sys.executable)


def script_command(script: str, *args: object) -> str:
    """`<python> <repo>/<script> args...`, e.g. `.venv/bin/python sample.py --ckpt ...`."""
    return " ".join([python_command(), shown_path(REPO_ROOT / script), *(shlex.quote(str(a)) for a in args)])


def tensorboard_command(logdir: Union[str, Path]) -> str:
    """The `tensorboard` installed beside the running interpreter, else `<python> -m tensorboard.main`."""
    beside = Path(sys.executable).parent / "tensorboard"
    program = shown_path(beside) if beside.is_file() else f"{python_command()} -m tensorboard.main"
    return f"{program} --logdir {shlex.quote(str(logdir))}"
