"""What a resumed run takes from its checkpoint and what from the command line.

`--ckpt_path <file>` and `--ckpt_path last` resume the same way: the architecture
(`model.generator`, `model.discriminator`, but for their attention settings, which are not weights)
is the checkpoint's, and every other model option (lengths, intervals, learning rates, the
attention schedule, validation and metrics settings) is the one stated on the command line or in a
`--config` file, else the checkpoint's. An architecture option stated with another value than the
checkpoint's is refused, naming it: the weights could not be loaded into that model.

(LightningCLI's own resume reads the checkpoint's hyper-parameters over the whole parsed config
when the path is a file, so a file path silently undid `--model.loop.max_g_iters` while `last`
kept it; `BigGANCLI._parse_ckpt_path` uses this module instead.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import yaml

from biggan_smyrf.inference.checkpoint import CheckpointError, read_checkpoint
from biggan_smyrf.parse_errors import config_files, flat_keys

ARCHITECTURE = ("generator", "discriminator")
FREE_IN_ARCHITECTURE = ("attention", "attention_overrides")  # settings, not weights (as for model.init_from)
WHAT_TO_PASS = "--ckpt_path takes a train.py checkpoint (last.ckpt, best-fid.ckpt), or last for the run's own"


def resume_file(ckpt_path: str, run_dir: Path) -> Path:
    """The checkpoint `--ckpt_path` names: `last` is the run's last.ckpt, which must exist."""
    if ckpt_path != "last":
        return Path(ckpt_path)
    last = run_dir / "last.ckpt"
    if not last.is_file():
        runs = sorted(p.parent.name for p in run_dir.parent.glob("*/last.ckpt"))
        known = f"runs with a checkpoint in {run_dir.parent}/: {', '.join(runs)}" if runs else \
            f"no run in {run_dir.parent}/ has one yet"
        raise CheckpointError(f"--ckpt_path last: {last} does not exist ({known}); check --run, or leave out "
                              f"--ckpt_path to start run {run_dir.name}")
    return last


def resume_point(path: Path) -> tuple[dict, int]:
    """(the model options a train.py checkpoint was written with, its G iteration); read safely
    (weights_only=True), so a foreign, torn or code-running file is refused in one line."""
    checkpoint = read_checkpoint(path, WHAT_TO_PASS)
    hparams, state = checkpoint.get("hyper_parameters"), checkpoint.get("biggan_smyrf")
    if not isinstance(state, dict) or not isinstance(hparams, dict) or not hparams.get("generator"):
        what = "an exported generator" if "format" in checkpoint else "not a train.py checkpoint"
        raise CheckpointError(f"{path} is {what}; {WHAT_TO_PASS}")
    return {key: value for key, value in hparams.items() if not key.startswith("_")}, state.get("g_iters", 0)


def stated_keys(argv: list[str], subcommand: str) -> set[str]:
    """Dotted option names (`model.optim.lr_g`) given on the command line or in its config files."""
    stated = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    for path in config_files(argv):
        try:
            tree = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        keys = set(flat_keys(tree))
        stated |= keys | {key[len(subcommand) + 1:] for key in keys if key.startswith(subcommand + ".")}
    return stated


def is_stated(key: str, stated: set[str]) -> bool:
    """`key` or a group around it or inside it was stated (`--model.optim '{...}'` states lr_g)."""
    return any(s == key or key.startswith(s + ".") or s.startswith(key + ".") for s in stated)


def leaves(tree: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}")
    else:
        yield prefix, tree


def nested(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        *groups, last = key.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return tree


def is_architecture(key: str) -> bool:
    _, group, *rest = key.split(".")
    return group in ARCHITECTURE and (not rest or rest[0] not in FREE_IN_ARCHITECTURE)


def resumed_model_options(hparams: dict, parsed: Any, stated: set[str], path: Path) -> dict:
    """{'model': ...}: the checkpoint's values of every option not stated. `parsed`: the parsed
    config of the subcommand (for the stated values). Raises on a stated architecture change."""
    taken = {}
    for key, value in leaves(hparams, "model"):
        if key == "model.init_from":
            continue  # a resumed run has its weights
        if not is_stated(key, stated):
            taken[key] = value
        elif is_architecture(key) and plain_value(parsed.get(key)) != value:
            raise CheckpointError(
                f"--{key} {plain_value(parsed.get(key))} differs from the run being resumed ({value} in {path}): "
                f"a resumed run keeps its architecture; leave the option out (the checkpoint's applies), or "
                f"start a new run with another --run"
            )
    return nested(taken)


def plain_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
