"""Command-line and config-file errors as one line that names the option, or the file and line, with
the closest valid option, instead of the full usage (over a hundred lines for train.py)."""
from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

import yaml

from .errors import CommandLineError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
LONGEST_MESSAGE = 300  # jsonargparse's type errors can run to dozens of lines; --debug shows them whole
UNKNOWN_KEY = re.compile(r"(?:Group '(?P<group>[^']+)' )?(?:Subcommand '[^']+' )?does not accept option '(?P<key>[^']+)'")


def closest(name: str, candidates: list[str]) -> Optional[str]:
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: list[str]) -> str:
    match = closest(name, candidates)
    return f"; did you mean {match}?" if match else ""


def option_strings(parser: argparse.ArgumentParser, subcommand: Optional[str]) -> list[str]:
    """The long options that `subcommand` (or the parser itself) accepts, without the `.help` ones."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and subcommand in action.choices:
            parser = action.choices[subcommand]
    return [o for o in parser._option_string_actions if o.startswith("--") and not o.endswith(".help")]


def config_files(argv: list[str]) -> Iterator[Path]:
    """Files named on the command line that jsonargparse reads as config (`--config x.yaml`, `--model=x.yaml`)."""
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.lower().endswith(CONFIG_SUFFIXES) and Path(value).is_file():
            yield Path(value)


def yaml_syntax_error(files: list[Path]) -> Optional[str]:
    """`<file>, line L, column C: <problem>` for the first file that is not valid YAML."""
    for path in files:
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return f"{path}{where}: {error.problem or error.context} (YAML syntax)"
        except yaml.YAMLError as error:
            return f"{path}: {error} (YAML syntax)"
    return None


def flat_keys(tree, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from flat_keys(value, f"{prefix}{key}.")


def file_with_key(files: list[Path], key: str) -> Optional[Path]:
    for path in files:
        try:
            if key in flat_keys(yaml.safe_load(path.read_text())):
                return path
        except yaml.YAMLError:
            continue
    return None


def one_line(message: str) -> str:
    message = re.sub(r'^Parser key "([^"]+)":', r"--\1:", message.strip())
    message = " ".join(message.split())
    return message if len(message) <= LONGEST_MESSAGE else message[: LONGEST_MESSAGE - 3] + "..."


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose errors raise CommandLineError (reported by errors.reported_errors)."""

    def error(self, message: str):
        raise command_line_error(message, option_strings(self, None), [], f"all options: {self.prog} --help")


def command_line_error(
    message: str, options: list[str], argv: list[str], hint: str, subcommands: Sequence[str] = ()
) -> CommandLineError:
    """The CommandLineError for jsonargparse's error `message` on the command line `argv`.

    options, subcommands: what the parser accepts, for suggestions; hint: where to read them all.
    """
    files = list(config_files(argv))
    if message.startswith("unrecognized arguments:"):
        tokens = message.split(":", 1)[1].split()
        option = next((t.split("=", 1)[0] for t in tokens if t.startswith("-")), None)
        if option is None:
            word = tokens[0]
            return CommandLineError(f"unexpected argument {word!r}{did_you_mean(word, list(subcommands))}", hint)
        return CommandLineError(f"unknown option {option}{did_you_mean(option, options)}", hint)
    unknown_key = UNKNOWN_KEY.search(message)
    if unknown_key:
        key = ".".join(filter(None, (unknown_key["group"], unknown_key["key"])))
        where = file_with_key(files, key)
        keys = [o[2:] for o in options]
        place = f" in {where}" if where else ""
        return CommandLineError(f"unknown config key {key}{place}{did_you_mean(key, keys)}", hint)
    if message.startswith("Problems parsing config"):
        located = yaml_syntax_error(files)
        if located:
            return CommandLineError(located)
    return CommandLineError(one_line(message), hint)
