"""Which attention a network uses in each phase of a run, as changes on the settings it was built with.

    schedule = AttentionSchedule(train=None, eval=AttentionChange(kind="dense"))
    schedule.config("eval", built)      # the AttentionConfig a block built with `built` uses

Every entry is an `AttentionChange`: only the fields it sets change. So `eval: {kind: dense}`
keeps the block's SMYRF settings for later (a swap back is one field), and
`train: {q_cluster_size: 1024}` on a SMYRF-built G changes only the cluster size -- it never
silently turns the block dense. When an entry switches a dense-built block to SMYRF without sizes,
the block gets the run's SMYRF settings (`smyrf_settings`), not unrelated library defaults.

`train` and `eval` may also change over the run: a list of entries, each with the G iteration
`from` which it applies (`[{from: 0, kind: dense}, {from: 10000}]`: dense for 10k G iterations,
then as built). Each list entry means what the single entry means; one entry is the one-stage list.
"""
from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, TypedDict, Union

from typing_extensions import Required

from .config import AttentionChange, AttentionConfig

PHASES = ("train", "eval", "compare")
SCHEDULED = ("train", "eval")  # the phases whose entry may change over the run
START = "from"

# One stage of a scheduled phase: `from` (the first G iteration it applies to) and the
# AttentionChange fields it sets. A TypedDict because `from` is a Python keyword; generated from
# the settings table like AttentionChange, so the two can never disagree.
AttentionStage = TypedDict(  # type: ignore[misc]
    "AttentionStage",
    {START: Required[int], **{f.name: f.type for f in dataclasses.fields(AttentionChange)}},
    total=False,
)
AttentionStage.__doc__ = ("A stage of a scheduled attention phase: `from` (the G iteration it starts at) and the "
                          "attention settings it changes (null or absent: kept).")
Entry = Union[AttentionChange, list[AttentionStage], None]


@dataclass
class AttentionSchedule:
    """Which attention G uses when training and when evaluating (validation, sample grids).

    Each entry changes the fields it sets of the attention G was built with
    (`generator.attention`); null keeps the built kind. Example: train with SMYRF to afford
    128x128 attention and evaluate with exact dense attention:
        train: null            # as built: {kind: smyrf, n_hashes: 4, q_cluster_size: 2048}
        eval:  {kind: dense}
    train and eval may change over the run: a list of entries, each with the G iteration it starts
    at (`from`), e.g. dense for a warm-up, then as built:
        train: [{from: 0, kind: dense}, {from: 10000}]
    Before the first entry's `from` the phase uses the built attention. Every eval entry must keep
    the kinds of the first (metrics are logged per kind, e.g. val/fid_smyrf).
    Entries apply to every attention block of G; D keeps `discriminator.attention`.
    compare: a second attention for G_ema in every validation, side by side with `eval`: metrics
        are logged for both (val/fid_dense and val/fid_smyrf, ...), the paper's
        interchangeability claim measured on every run.
    diagnostics: at each validation, log per attention block how far SMYRF is from dense
        (diag/smyrf_error_<res>px, diag/smyrf_mass_share_<res>px) and an image of its clusters.
    """

    train: Entry = None
    eval: Entry = None
    compare: Optional[AttentionChange] = None
    diagnostics: bool = True

    # In Python an entry may also be a full AttentionConfig, which replaces the built settings.

    def __post_init__(self):
        # From a checkpoint or YAML a single entry arrives as a plain dict (typed.coerce leaves a
        # Union alone); every list is checked here, before any network is built.
        for phase in SCHEDULED:
            setattr(self, phase, _entry(phase, getattr(self, phase)))
        if isinstance(self.compare, dict):
            self.compare = AttentionChange(**self.compare)
        self._trained = [self.train]  # train entries in the order smyrf_settings looks for SMYRF

    def stages(self, phase: str) -> list[tuple[int, Any]]:
        """[(first G iteration, entry)] of `phase`, in order; a single entry starts at 0."""
        entry = self.change(phase)
        if not isinstance(entry, list):
            return [(0, entry)]
        stages = [(stage[START], _change(stage)) for stage in entry]
        return stages if stages[0][0] == 0 else [(0, None), *stages]

    def switch_points(self) -> list[int]:
        """The G iterations at which some scheduled phase changes its entry (0 first)."""
        return sorted({start for phase in SCHEDULED for start, _ in self.stages(phase)})

    def stage_index(self, phase: str, g_iter: int) -> int:
        """Which of `stages(phase)` applies at G iteration `g_iter`."""
        return bisect.bisect_right([start for start, _ in self.stages(phase)], g_iter) - 1

    def at(self, g_iter: int) -> "AttentionSchedule":
        """The schedule in force at G iteration `g_iter`: every phase a single entry."""
        active = {phase: self.stages(phase)[self.stage_index(phase, g_iter)][1] for phase in SCHEDULED}
        snapshot = dataclasses.replace(self, **active)
        trained, now = [entry for _, entry in self.stages("train")], self.stage_index("train", g_iter)
        snapshot._trained = trained[now:] + trained[:now][::-1]
        return snapshot

    def change(self, phase: str):
        if phase not in PHASES:
            raise ValueError(f"attention phase must be one of {PHASES}, got {phase!r}")
        return getattr(self, phase)

    def smyrf_settings(self, built: AttentionConfig) -> AttentionConfig:
        """The SMYRF settings this run uses for a block built with `built`: as trained (built,
        then the train entry) if that is SMYRF, else the first of compare and eval that makes the
        block SMYRF, else the library defaults. With a train schedule, "as trained" is the first
        SMYRF train entry from the active one on (then the earlier ones, latest first): a dense
        warm-up still evaluates SMYRF with the sizes it will train with."""
        if self.is_scheduled():
            return self.at(0).smyrf_settings(built)
        for entry in self._trained:
            if (config := _apply(entry, built)).kind == "smyrf":
                return config
        for change in (self.compare, self.eval):
            if (config := _apply(change, built)).kind == "smyrf":
                return config
        return built.with_(kind="smyrf")

    def is_scheduled(self) -> bool:
        return any(isinstance(getattr(self, phase), list) for phase in SCHEDULED)

    def config(self, phase: str, built: AttentionConfig) -> AttentionConfig:
        """What a block built with `built` uses in `phase`: the built kind with the run's SMYRF
        settings, then the phase's entry. A scheduled phase at G iteration 0; `at(g_iter)` for later."""
        if self.is_scheduled():
            return self.at(0).config(phase, built)
        return _apply(self.change(phase), self.smyrf_settings(built).with_(kind=built.kind))

    def describe_stage(self, phase: str, g_iter: int) -> str:
        """'train entry 2 (from: 10000): kind=smyrf': how a stage is named in logs and errors."""
        index = self.stage_index(phase, g_iter)
        start, entry = self.stages(phase)[index]
        what = "as built" if entry is None else entry.describe() if isinstance(entry, AttentionChange) else str(entry)
        if not isinstance(self.change(phase), list):
            return f"model.attention.{phase} ({what})"
        return f"model.attention.{phase} entry {index} (from: {start}): {what}"


def _entry(phase: str, value):
    if isinstance(value, dict):
        return AttentionChange(**value)
    if not isinstance(value, (list, tuple)):
        return value
    if not value:
        raise ValueError(f"model.attention.{phase}: an empty list; use null for the built attention")
    stages = [_stage(phase, i, stage) for i, stage in enumerate(value)]
    starts = [stage[START] for stage in stages]
    if starts != sorted(set(starts)):
        raise ValueError(f"model.attention.{phase}: the entries' `from` G iterations must increase, got {starts}")
    return stages


def _stage(phase: str, index: int, stage) -> dict:
    where = f"model.attention.{phase} entry {index}"
    if not isinstance(stage, dict) or not isinstance(stage.get(START), int) or stage[START] < 0:
        raise ValueError(f"{where}: every entry needs `from: <G iteration >= 0>` (got {stage!r})")
    try:
        _change(stage)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} (from: {stage[START]}): {error}") from None
    return dict(stage)


def _change(stage: dict) -> Optional[AttentionChange]:
    fields = {name: value for name, value in stage.items() if name != START and value is not None}
    return AttentionChange(**fields) if fields else None


def _apply(entry, config: AttentionConfig) -> AttentionConfig:
    if entry is None:
        return config
    return entry if isinstance(entry, AttentionConfig) else entry.apply(config)
