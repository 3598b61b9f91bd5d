"""How the entry points (`train.py`, `sample.py`) report bad input: `error: <what is wrong and how to
fix it>`, at most one hint line, a non-zero exit status and no traceback.

Only errors about the user's input are shortened: ValueError/OSError raised by biggan_smyrf's own
code (its messages are written for the user, naming the option and the fix), command-line errors,
and whatever library types the entry point adds (Lightning's MisconfigurationException). Any other
exception is a bug and keeps its traceback. `--debug` or BIGGAN_SMYRF_DEBUG=1 shows the traceback of
every error.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "BIGGAN_SMYRF_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parent
USAGE_ERROR_STATUS = 2  # argparse's status for a bad command line


class CommandLineError(ValueError):
    """A bad command line or config file (unknown option, YAML syntax, wrong type), with a hint."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.hint = hint


def debug_env_set() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def debug_requested(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether tracebacks were asked for, by `--debug` or the environment; argv without `--debug`)."""
    rest = [arg for arg in argv if arg != DEBUG_FLAG]
    return debug_env_set() or len(rest) < len(argv), rest


def raised_by_us(error: BaseException) -> bool:
    """True when the innermost frame of `error`'s traceback is biggan_smyrf code."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and PACKAGE_DIR in Path(frames[-1].filename).resolve().parents


def is_input_error(error: BaseException, input_error_types: tuple[type, ...] = ()) -> bool:
    if isinstance(error, CommandLineError) or isinstance(error, input_error_types):
        return True
    return isinstance(error, (ValueError, OSError)) and raised_by_us(error)


@contextmanager
def reported_errors(debug: bool, input_error_types: tuple[type, ...] = ()) -> Iterator[None]:
    """Turns input errors raised in the block into `error: ...` and an exit (see the module doc)."""
    try:
        yield
    except Exception as error:
        if debug or not is_input_error(error, input_error_types):
            raise
        hint = getattr(error, "hint", None)
        text = f"error: {error}" + (f"\n{hint}" if hint else "")
        if isinstance(error, CommandLineError):
            print(text, file=sys.stderr)
            sys.exit(USAGE_ERROR_STATUS)
        sys.exit(text)  # printed to stderr on the way out, exit status 1, like sys.exit("error: ...") elsewhere
